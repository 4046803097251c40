"""``hydra/launcher=slurm`` without a cluster: each trial's job size from its trainer config, the
sbatch settings, the overrides a requeued trial runs with, the job state when SLURM keeps no
accounting. The real scheduler is in ``test_slurm.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import ftlight.train  # noqa: F401  (registers hydra/launcher=slurm, as ftlight-train does)
from ftlight.config import CONF_DIR
from ftlight.errors import ConfigError
from hydra_plugins.ftlight_slurm import _launcher as launcher
from hydra_plugins.ftlight_slurm._launcher import (
    JobSize,
    resume_overrides,
    sbatch_parameters,
    trial_size,
)


@pytest.mark.parametrize(
    ("trainer", "settings", "size"),
    [
        ({"devices": 4, "num_nodes": 2, "accelerator": "gpu"}, {}, JobSize(2, 4, 4)),
        ({"devices": 2, "num_nodes": 2, "accelerator": "cpu"}, {}, JobSize(2, 2, 0)),
        ({"devices": "auto", "num_nodes": 1, "accelerator": "auto"}, {}, JobSize(1, 1, 1)),
        ({"devices": "auto", "num_nodes": 3}, {"gpus_per_node": 8}, JobSize(3, 8, 8)),
        ({"devices": "0,1", "num_nodes": 1, "accelerator": "cuda"}, {}, JobSize(1, 2, 2)),
        ({"devices": [0, 1, 2], "num_nodes": 1}, {"tasks_per_node": 3}, JobSize(1, 3, 3)),
        # GPUs per node may differ from the devices used (a whole node booked for fewer)
        (
            {"devices": 2, "num_nodes": 1, "accelerator": "gpu"},
            {"gpus_per_node": 4},
            JobSize(1, 2, 4),
        ),
    ],
)
def test_a_trial_asks_for_one_task_per_device(trainer: dict, settings: dict, size: JobSize) -> None:
    assert trial_size(trainer, settings) == size


@pytest.mark.parametrize(
    ("trainer", "settings", "message"),
    [
        (
            {"devices": 2, "num_nodes": 2},
            {"nodes": 1},
            "hydra.launcher.nodes=1 disagrees with trainer.num_nodes (2)",
        ),
        (
            {"devices": 4, "num_nodes": 1},
            {"tasks_per_node": 2},
            "hydra.launcher.tasks_per_node=2 disagrees with trainer.devices (4)",
        ),
        ({"devices": "many", "num_nodes": 1}, {}, "trainer.devices='many' cannot size a SLURM job"),
        ({"devices": 0, "num_nodes": 1}, {}, "trainer.devices=0 cannot size a SLURM job"),
        ({"devices": 1, "num_nodes": 0}, {}, "trainer.num_nodes=0 must be a whole number of nodes"),
    ],
)
def test_a_job_that_cannot_match_the_trainer_is_refused(trainer, settings, message) -> None:
    with pytest.raises(ConfigError) as err:
        trial_size(trainer, settings)
    assert str(err.value).startswith(message)


def test_sbatch_parameters_take_submitits_names_and_the_trials_size() -> None:
    settings = {
        "submitit_folder": "/x/%j",
        "max_num_timeout": 3,
        "name": "ftlight",
        "timeout_min": 60,
        "cpus_per_task": 4,
        "mem_gb": 1.5,
        "partition": "gpu",
        "nodes": None,
        "tasks_per_node": None,
        "gpus_per_node": None,
        "signal_delay_s": 120,
    }
    params = sbatch_parameters(settings, JobSize(2, 4, 4))
    assert params == {
        "job_name": "ftlight",
        "time": 60,
        "cpus_per_task": 4,
        "mem": "1536MB",
        "partition": "gpu",
        "signal_delay_s": 120,
        "nodes": 2,
        "ntasks_per_node": 4,
        "gpus_per_node": 4,
    }
    assert sbatch_parameters({"mem_gb": 16}, JobSize(1, 1, 0))["gpus_per_node"] is None
    assert sbatch_parameters({"mem_gb": 16}, JobSize(1, 1, 0))["mem"] == "16GB"


def test_a_requeued_trial_resumes_from_its_own_folder(tmp_path: Path) -> None:
    assert resume_overrides(["strategy.r=4"], tmp_path) == ["strategy.r=4", "ckpt_path=auto"]
    # a trial given a checkpoint to start from starts from it again until it saved its own
    given = ["strategy.r=4", "ckpt_path=/runs/a/checkpoints/last.ckpt"]
    assert resume_overrides(given, tmp_path) == given
    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 3}, tmp_path / "checkpoints" / "last.ckpt")
    assert resume_overrides(given, tmp_path) == ["strategy.r=4", "ckpt_path=auto"]
    assert resume_overrides(["ckpt_path=auto"], tmp_path) == ["ckpt_path=auto"]


def test_the_launcher_config_leaves_the_size_to_the_trainer() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    settings = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert settings["_target_"] == f"{launcher.__name__}.SlurmLauncher"
    assert settings["nodes"] is None and settings["tasks_per_node"] is None
    assert settings["gpus_per_node"] is None and settings["max_num_timeout"] == 3
    trainer = {k: cfg.trainer[k] for k in ("devices", "num_nodes", "accelerator")}
    assert trial_size(trainer, settings) == JobSize(2, 1, 1)


def test_job_states_come_from_scontrol_without_accounting(monkeypatch) -> None:
    """``scontrol show job -o`` lines as SLURM 22.05 prints them; a purged job is over."""
    out = {
        "12": "JobId=12 JobName=ftlight JobState=COMPLETED Reason=None\n",
        "13": "JobId=13 JobName=ftlight JobState=REQUEUE_HOLD Reason=x\n",
        "14": "JobId=15 ArrayJobId=14 ArrayTaskId=0 JobState=FAILED\n"
        "JobId=16 ArrayJobId=14 ArrayTaskId=1 JobState=PENDING\n",
    }

    def run(cmd, **kwargs):
        job = cmd[-1]
        if job in out:
            return subprocess.CompletedProcess(cmd, 0, out[job], "")
        return subprocess.CompletedProcess(cmd, 1, "", "slurm_load_jobs error: Invalid job id")

    monkeypatch.setattr(launcher.subprocess, "run", run)
    states = launcher.scontrol_states(["12", "13", "14", "99"])
    assert {k: v["State"] for k, v in states.items()} == {
        "12": "COMPLETED",
        "13": "RUNNING",  # held: not over
        "14_0": "FAILED",
        "14_1": "PENDING",
        "99": "PURGED",  # SLURM forgot it: over
    }
    job_class = launcher._job_class()
    assert job_class.watcher.is_done("12", mode="cache") is False  # nothing read yet
