"""``sbatch launch/slurm.sbatch`` and ``ftlight-train -m hydra/launcher=slurm`` on a real SLURM
cluster: two nodes on this machine (``launch/local_cluster.sh``), one task each, DDP over gloo
on the CPU.

Needs root (the cluster installs Debian's slurm-wlm and munge with apt-get when they are
missing); elsewhere the tests skip. ``pytest -m slurm`` runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ftlight.testing import setup_overrides

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "launch" / "local_cluster.sh"
SBATCH = ROOT / "launch" / "slurm.sbatch"

# tiny-llama + LoRA over 16 rows, 2 per step on each of the two ranks: four steps an epoch,
# so that a stop at step 3 is mid-epoch; with dropout, each rank's random state must come back
RUN = [
    *setup_overrides("tiny-llama"),
    "data.batch_size=2",
    "strategy.dropout=0.1",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.max_steps=6",
    "trainer.max_epochs=-1",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
    "callbacks.progress=null",
    "trainer.enable_model_summary=false",
]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A two-node SLURM cluster for the session; the environment its client commands need."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (apt-get, munged, slurmd)")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    installed = shutil.which("slurmctld") is not None
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "FTLIGHT_SLURM_DIR": str(state)}
    started = subprocess.run(
        [str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0 and not installed:
        pytest.skip(f"could not install SLURM: {started.stderr.strip()[-500:]}")
    assert started.returncode == 0, started.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield env
    finally:
        subprocess.run([str(CLUSTER), "stop"], env=env, capture_output=True, timeout=120)


class Job:
    """One ``sbatch launch/slurm.sbatch`` submission, run in ``folder``."""

    def __init__(self, slurm: dict[str, str], folder: Path, *overrides: str) -> None:
        self.slurm = slurm
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        env = {
            **slurm,
            # the job runs ftlight-train from this interpreter's environment, single-threaded
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{slurm['PATH']}",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "WANDB_MODE": "disabled",
        }
        cmd = [
            "sbatch",
            "--parsable",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            f"--chdir={folder}",
            f"--output={folder}/%x-%j.out",
            str(SBATCH),
            *RUN,
            *overrides,
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
        self.id = done.stdout.strip().split(";")[0]
        self.run_dir = folder / "runs" / "slurm" / f"ftlight-{self.id}"

    def scontrol(self, *args: str) -> str:
        """``scontrol <args>`` for the cluster; its output."""
        done = subprocess.run(
            ["scontrol", *args], env=self.slurm, capture_output=True, text=True, timeout=60
        )
        return done.stdout + done.stderr

    def state(self) -> dict[str, str]:
        """``scontrol show job`` as key=value pairs."""
        return dict(re.findall(r"(\w+)=(\S*)", self.scontrol("show", "job", self.id)))

    def wait(self, timeout: float = 600) -> dict[str, str]:
        """Wait for the job to finish (requeued attempts included); its final state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
                return state
            time.sleep(1)
        self.scontrol("requeuehold", self.id)  # stop it, keep the evidence
        raise AssertionError(f"job {self.id} did not finish in {timeout} s:\n{self.output()}")

    def wait_for(self, path: Path, timeout: float = 300) -> None:
        """Wait until the job writes ``path``."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert time.monotonic() < deadline, f"no {path} after {timeout} s:\n{self.output()}"
            time.sleep(0.2)

    def output(self) -> str:
        """The job's standard output and error (every attempt)."""
        files = sorted(self.folder.glob(f"*-{self.id}.out"))
        return "".join(f.read_text(errors="replace") for f in files)

    def metrics(self) -> dict:
        """The run's ``metrics.json``."""
        return json.loads((self.run_dir / "metrics.json").read_text())

    def weights(self) -> dict[str, torch.Tensor]:
        """The trainable state of the run's final checkpoint."""
        ckpt = torch.load(self.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        return ckpt["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(slurm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Job:
    """The reference job: six steps in one attempt."""
    job = Job(slurm, tmp_path_factory.mktemp("uninterrupted"))
    state = job.wait()
    assert state["JobState"] == "COMPLETED", job.output()
    return job


def test_sbatch_trains_one_world_of_two_into_one_folder(uninterrupted: Job) -> None:
    job, out = uninterrupted, uninterrupted.output()
    assert "MEMBER: 1/2" in out and "MEMBER: 2/2" in out, out  # Lightning's DDP start-up lines
    metrics = job.metrics()
    assert metrics["train"]["steps"] == 6
    assert metrics["train"]["attempts"] == 1
    assert metrics["params"]["trainable"] == 8192  # LoRA r=8 on tiny-llama (see test_distributed)
    assert metrics["after"]["loss"] < metrics["before"]["loss"]
    assert metrics["throughput"]["real_tokens_per_s"] > 0
    # one run folder, written by rank 0 only: one report, one export, the plots
    assert [p.name for p in job.folder.glob("runs/slurm/*") if p.is_dir()] == [job.run_dir.name]
    assert out.count("run folder:") == 1 and out.count("-----\nexact_match") == 1
    assert (job.run_dir / "adapter" / "adapter_config.json").is_file()
    assert (job.run_dir / "model" / "config.json").is_file()
    assert (job.run_dir / "loss.png").is_file() and (job.run_dir / "metrics.png").is_file()


@pytest.mark.parametrize("how", ["time-limit signal", "scontrol requeue"])
def test_requeued_job_resumes_and_loses_nothing(
    slurm: dict[str, str], tmp_path: Path, uninterrupted: Job, how: str
) -> None:
    """Held at step 2, the job is signalled: SLURM's SIGUSR1 (as ``--signal`` sends it ahead
    of the time limit; ftlight requeues the job itself) or ``scontrol requeue`` (SIGTERM). It
    checkpoints at step 3, mid-epoch, and its second attempt ends with the uninterrupted job's
    weights bit for bit and its scores, without evaluating the base model again, its log and
    history continued."""
    marker = tmp_path / "paused"
    pause = [
        "+callbacks.pause._target_=ftlight.testing.PauseAtStep",
        "+callbacks.pause.step=2",
        f"+callbacks.pause.marker={marker}",
    ]
    job = Job(slurm, tmp_path / "job", *pause)
    for rank in (0, 1):
        job.wait_for(Path(f"{marker}.{rank}"))
    if how == "scontrol requeue":
        job.scontrol("requeue", job.id)
    else:
        subprocess.run(["scancel", "--signal=USR1", job.id], env=slurm, check=True, timeout=60)
    state = job.wait()
    out = job.output()
    assert state["JobState"] == "COMPLETED", out
    assert state["Restarts"] == "1", out
    first, _, second = out.partition(f"job {job.id} attempt 2")
    assert second, out
    assert f"at step 3; checkpoint: {job.run_dir.absolute() / 'checkpoints'}" in first
    assert "evaluate before training" in first
    assert "evaluate before training" not in second, "the second attempt evaluated again"
    assert "scores before training: kept by this run's first attempt" in second

    metrics, reference = job.metrics(), uninterrupted.metrics()
    assert metrics["train"]["steps"] == 6
    assert metrics["train"]["attempts"] == 2
    assert metrics["throughput"]["real_tokens_per_s"] > 0 and metrics["throughput"]["mfu"] > 0
    assert metrics["before"] == reference["before"]
    assert metrics["after"] == reference["after"]
    final, expected = job.weights(), uninterrupted.weights()
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.equal(final[name], expected[name]), name

    ckpt = torch.load(job.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    history = ckpt["callbacks"]["ThroughputMonitor"]  # the loss history of both attempts
    assert [step for step, _ in history["losses"]] == [1, 2, 3, 4, 5, 6]
    assert ckpt["callbacks"]["RunHistory"]["attempts"] == 2
    assert not (job.run_dir / "checkpoints" / "interrupted.ckpt").exists()  # superseded
    rows = (job.run_dir / "logs" / "metrics.csv").read_text().splitlines()
    steps = [row.split(",")[rows[0].split(",").index("step")] for row in rows[1:]]
    assert steps[0] == "0" and steps[-1] == "6", rows  # the first attempt's rows, then on


# -- hydra/launcher=slurm: a sweep, one job per trial ----------------------------------------
def _squeue_running(slurm: dict[str, str]) -> list[str]:
    done = subprocess.run(
        ["squeue", "-h", "-t", "R", "-o", "%i"], env=slurm, capture_output=True, text=True
    )
    return done.stdout.split()


def _wait_for_ranks(marker: str, sweep: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not all(Path(f"{marker}.{rank}").exists() for rank in (0, 1)):
        assert sweep.poll() is None, f"the sweep ended ({sweep.returncode}) before {marker}"
        assert time.monotonic() < deadline, f"no {marker}.0/.1 after {timeout} s"
        time.sleep(0.2)


def test_a_sweep_runs_a_job_per_trial_and_requeued_trials_resume(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    """``ftlight-train -m hydra/launcher=slurm trainer=ddp trainer.num_nodes=2 strategy.r=4,8``
    submits one job of two nodes, one task each, per trial. Held at step 2, the first trial gets
    submitit's time-limit signal (SIGUSR2: submitit's checkpoint hook resubmits it with
    ckpt_path=auto), the second ``scontrol requeue`` (SIGTERM; SLURM runs it again): each
    checkpoints at step 3 and finishes in a second attempt, in its own folder and W&B run."""
    sweep_dir, marker = tmp_path / "sweep", tmp_path / "paused"
    env = {
        **slurm,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{slurm['PATH']}",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    env.pop("FTLIGHT_WANDB_ID", None)
    cmd = [
        *(sys.executable, "-m", "ftlight", "-m", "hydra/launcher=slurm", "trainer=ddp"),
        *("trainer.num_nodes=2", "strategy.r=4,8", *RUN, "logger=wandb"),
        *("hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"),
        "+callbacks.pause._target_=ftlight.testing.PauseAtStep",
        "+callbacks.pause.step=2",
        f"+callbacks.pause.marker={marker}-r${{strategy.r}}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    with open(tmp_path / "out", "w") as out:
        sweep = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_ranks(f"{marker}-r4", sweep)
        (first,) = _squeue_running(slurm)  # a trial takes both nodes: one job runs at a time
        subprocess.run(["scancel", "--signal=USR2", first], env=slurm, check=True, timeout=60)
        _wait_for_ranks(f"{marker}-r8", sweep)
        (second,) = _squeue_running(slurm)
        subprocess.run(["scontrol", "requeue", second], env=slurm, check=True, timeout=60)
        assert sweep.wait(timeout=600) == 0, (tmp_path / "out").read_text()[-4000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    jobs = sweep_dir / ".submitit"
    assert sorted(p.name for p in jobs.iterdir() if p.is_dir()) == sorted([first, second])
    for job in (first, second):  # sized from the trainer config: 2 nodes x 1 task, no GPUs
        script = (jobs / job / f"{job}_submission.sh").read_text()
        assert "--nodes=2" in script and "--ntasks-per-node=1" in script, script
        assert "--gpus-per-node" not in script, script
    assert "Requeued job" in (jobs / first / f"{first}_0_log.out").read_text()  # by submitit

    trials = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    wandb_ids = set()
    for trial, r, signame in zip(trials, (4, 8), ("SIGUSR2", "SIGTERM"), strict=True):
        metrics = json.loads((trial / "metrics.json").read_text())
        assert metrics["params"]["trainable"] == 1024 * r
        assert metrics["train"]["world_size"] == 2
        assert metrics["train"]["steps"] == 6 and metrics["train"]["attempts"] == 2
        log = (trial / "ftlight.log").read_text()
        assert f"stopped by {signame} at step 3" in log
        assert "resuming from" in log and "interrupted.ckpt (step 3)" in log
        assert "scores before training: kept by this run's first attempt" in log
        assert "ckpt_path=auto" in (trial / ".hydra" / "overrides.yaml").read_text()
        ckpt = torch.load(trial / "checkpoints" / "last.ckpt", weights_only=True)
        losses = ckpt["callbacks"]["ThroughputMonitor"]["losses"]
        assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6]  # both attempts' history
        # both attempts logged into one W&B run (offline: a folder per attempt, one id)
        runs = sorted(trial.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(runs) == 2 and runs[0].name == runs[1].name, runs
        wandb_ids.add(runs[0].name)
    assert len(wandb_ids) == 2  # a W&B run per trial
