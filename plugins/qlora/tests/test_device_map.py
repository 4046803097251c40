"""Which GPU the 4-bit base model loads onto: the process's own on its node."""

from __future__ import annotations

import pytest

from ftlight_qlora import local_rank


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"LOCAL_RANK": "3"}, 3),  # Lightning's launcher, torchrun
        ({"SLURM_LOCALID": "2"}, 2),  # a task srun started (hydra/launcher=slurm, the sbatch)
        ({"LOCAL_RANK": "1", "SLURM_LOCALID": "5"}, 1),
        ({"LOCAL_RANK": "", "SLURM_LOCALID": "4"}, 4),
    ],
)
def test_the_device_map_follows_the_local_rank(monkeypatch, env: dict, rank: int) -> None:
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert local_rank() == rank
