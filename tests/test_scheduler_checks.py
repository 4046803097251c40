"""A SLURM job shaped otherwise than the trainer config is refused with a clear ConfigError
before any model loads (Lightning would wait forever for ranks that never come)."""

from __future__ import annotations

import pytest

import ftlight.build
from ftlight.errors import ConfigError
from ftlight.train import train
from ftlight.validate.scheduler import check_scheduler

# what srun sets in each task of `sbatch --nodes=2 --ntasks-per-node=1` (seen on the local
# cluster, launch/local_cluster.sh)
STEP = {
    "SLURM_JOB_ID": "41",
    "SLURM_JOB_NAME": "ftlight",
    "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_TASKS_PER_NODE": "1(x2)",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}
BATCH = {k: v for k, v in STEP.items() if not k.startswith("SLURM_STEP")}  # no srun


def _trainer(compose, tmp_path, *overrides: str):
    return compose(["trainer=ddp", "trainer.accelerator=cpu", *overrides], tmp_path)


def test_a_job_shaped_like_the_trainer_passes(compose, tmp_path) -> None:
    check_scheduler(_trainer(compose, tmp_path, "trainer.devices=1", "trainer.num_nodes=2"), STEP)
    check_scheduler(_trainer(compose, tmp_path, "trainer.num_nodes=2"), STEP)  # auto on CPU: 1
    check_scheduler(_trainer(compose, tmp_path, "trainer.devices=4"), {})  # no SLURM
    interactive = {**BATCH, "SLURM_JOB_NAME": "interactive"}  # Lightning ignores SLURM there
    check_scheduler(_trainer(compose, tmp_path, "trainer.devices=4"), interactive)
    # srun -n 1 inside a bigger allocation: the step's shape counts, not the job's
    single = {
        **STEP,
        "SLURM_NTASKS": "1",
        "SLURM_NNODES": "1",
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_STEP_TASKS_PER_NODE": "1",
    }
    check_scheduler(_trainer(compose, tmp_path, "trainer.devices=1"), single)


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        (
            ["trainer.devices=2", "trainer.num_nodes=2"],
            STEP,
            "trainer.devices=2 (2 per node) but SLURM job 41 runs 1 task(s) per node; "
            "Lightning needs one task per device and would wait forever for the missing ranks."
            " Set trainer.devices=1, or submit with --ntasks-per-node=2",
        ),
        (
            ["trainer.devices=1", "trainer.num_nodes=1"],
            STEP,
            "trainer.num_nodes=1 but SLURM job 41 runs on 2 node(s) (SLURM_NNODES); Lightning "
            "would wait forever for ranks that never come. Set trainer.num_nodes=2, or submit "
            "with --nodes=1",
        ),
        (
            ["trainer.devices=1", "trainer.num_nodes=2"],
            BATCH,
            "this process runs in the batch script of SLURM job 41, which has 2 tasks, but srun "
            "did not start it",
        ),
        (
            ["trainer.devices=2", "trainer.num_nodes=1"],
            {**STEP, "SLURM_NTASKS_PER_NODE": "4", "SLURM_STEP_TASKS_PER_NODE": "4"},
            "trainer.devices=2 (2 per node) but SLURM job 41 runs 4 task(s) per node",
        ),
    ],
)
def test_a_job_of_another_shape_is_refused(compose, tmp_path, overrides, env, message) -> None:
    with pytest.raises(ConfigError) as err:
        check_scheduler(_trainer(compose, tmp_path, *overrides), env)
    assert str(err.value).startswith(message), str(err.value)


def test_train_refuses_it_before_any_model_loads(compose, tmp_path, monkeypatch) -> None:
    for name, value in STEP.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_PROCID", "0")

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ftlight.build, "load_model", never)
    cfg = compose(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer\.devices=2 \(2 per node\) but SLURM job 41"):
        train(cfg)
