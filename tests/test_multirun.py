"""A Hydra multirun whose trials each train on two local processes (DDP over gloo): each trial is
one world of two in its own sweep subfolder, one after the other; never a sweep per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ftlight.cli.trial import config_flags
from ftlight.testing import QUICK_RUN, setup_overrides

QUICK = QUICK_RUN


def _sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
    }
    cmd = [sys.executable, "-m", "ftlight", "-m", *setup_overrides("tiny-llama"), *QUICK]
    cmd += [*overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    # in its own folder: a rank that ran the sweep again would leave runs/ or outputs/ there
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.distributed
def test_each_trial_is_a_world_of_two_in_its_own_folder(tmp_path: Path) -> None:
    proc = _sweep(tmp_path, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                  "strategy.r=4,8")  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("Launching 2 jobs") == 1, out[-4000:]
    # Lightning's start-up lines: each trial one world of two
    assert out.count("MEMBER: 1/2") == 2 and out.count("MEMBER: 2/2") == 2, out[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    trials = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name[:2] for p in trials] == ["0_", "1_"]
    for trial, r in zip(trials, (4, 8), strict=True):
        metrics = json.loads((trial / "metrics.json").read_text())
        assert metrics["train"]["world_size"] == 2
        assert metrics["train"]["steps"] == 2
        assert metrics["params"]["trainable"] == 1024 * r  # LoRA on tiny-llama: 8192 at r=8
        assert OmegaConf.load(trial / ".hydra" / "config.yaml").strategy.r == r
        assert (trial / "train_ddp_process_1.log").is_file()  # rank 1 ran in this folder
    assert (tmp_path / "sweep" / "compare.md").is_file()


def test_extra_ranks_keep_the_config_flags_only() -> None:
    argv = ["-m", "--config-dir", "/x/conf", "strategy.r=4,8", "-cn", "other", "trainer=ddp"]
    assert config_flags(argv) == ["--config-name", "other", "--config-dir", "/x/conf"]
    assert config_flags(["-m", "strategy.r=4,8"]) == []
