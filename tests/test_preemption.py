"""Stopping and resuming a run: SIGTERM outside a scheduler, ``ckpt_path=auto``, what a resumed
run carries over (scores before training, time, throughput, loss history, the CSV log), and
evaluations that never load a checkpoint the run did not choose.

The real scheduler (requeue mid-run on a SLURM cluster) is in ``test_slurm.py``.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from ftlight.loggers import CSVLogger
from ftlight.measure.hardware import peak_flops
from ftlight.preemption import RunInterrupted
from ftlight.resume import newest_checkpoint, resolve_ckpt_path
from ftlight.testing import setup_overrides

# Two batches an epoch (16 rows, batch 8), a constant rate: the same schedule however the
# run is cut. No evaluation or export unless a test asks.
RUN = [
    "strategy=lora",
    "strategy.dropout=0.1",  # resuming must replay the dropout masks too
    "trainer.max_steps=6",
    "trainer.max_epochs=-1",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
    "eval.after=false",
    "eval.export=false",
    "eval.general=null",
]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class _SignalAt(L.Callback):
    """Sends this process ``signum`` after optimizer step ``step`` (or when the evaluation
    before training starts: ``step=None``), as a scheduler would."""

    def __init__(self, step: int | None, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self._send()

    def on_validation_start(self, trainer, module) -> None:
        if self.step is None and trainer.state.fn == "validate":
            self._send()


def _trainable(result) -> dict[str, torch.Tensor]:
    model = result.module.model
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# -- in one process --------------------------------------------------------------------------
def test_a_stopped_run_resumes_into_the_same_run(helpers, tmp_path: Path) -> None:
    """SIGTERM after step 2: a checkpoint at step 3, ``RunInterrupted``; ``ckpt_path=auto`` in
    the same folder then ends with the weights of a run never stopped, reuses the scores
    before training, and reports the whole run: both attempts' time, throughput and losses."""
    from ftlight.train import train

    # measured once per process from the global RNG: measure it now, so that both runs
    # draw the same dropout masks from their seed
    peak_flops(torch.device("cpu"))
    csv_log = ["logger=csv", "trainer.log_every_n_steps=1"]
    whole = train(helpers.compose([*RUN, *csv_log], tmp_path / "whole", "causal_lm"))

    run_dir = tmp_path / "stopped"
    cfg = helpers.compose([*RUN, *csv_log, "ckpt_path=auto"], run_dir, "causal_lm")
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg, callbacks=[_SignalAt(2)])
    ckpt = run_dir / "checkpoints" / "interrupted.ckpt"
    assert stopped.value.checkpoint == ckpt and stopped.value.step == 3
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert f"ckpt_path={ckpt}" in str(stopped.value)
    assert _load(ckpt)["global_step"] == 3
    kept = json.loads((run_dir / "before.json").read_text())
    first_seconds = _load(ckpt)["callbacks"]["RunHistory"]["seconds"]

    resumed = train(cfg)  # the same command: ckpt_path=auto finds interrupted.ckpt
    assert resumed.trainer.global_step == 6
    final, reference = _trainable(resumed), _trainable(whole)
    for name in reference:
        torch.testing.assert_close(final[name], reference[name], atol=1e-6, rtol=0)
    metrics = resumed.metrics
    assert metrics["before"] == kept["before"] == whole.metrics["before"]
    assert metrics["train"]["attempts"] == 2
    assert metrics["train"]["seconds"] > first_seconds
    assert metrics["throughput"]["real_tokens_per_s"] > 0 and metrics["throughput"]["mfu"] > 0
    monitor = next(cb for cb in resumed.trainer.callbacks if hasattr(cb, "loss_history"))
    steps = [s for s, _ in monitor.loss_history()]
    assert steps == [1, 2, 3, 4, 5, 6]  # loss.png: the whole run
    assert not ckpt.exists()  # superseded by last.ckpt

    # the CSV log: the first attempt's rows, then the second's, as the run never stopped
    def logged(folder: Path) -> list[tuple[str, str]]:
        rows = csv.DictReader((folder / "logs" / "metrics.csv").open())
        return [(r["step"], k) for r in rows for k in ("train/loss", "val/loss") if r.get(k)]

    assert logged(run_dir) == logged(tmp_path / "whole")
    assert ("0", "train/loss") in logged(run_dir)  # kept from the first attempt


def test_a_signal_during_the_evaluation_before_stops_at_the_first_step(
    helpers, tmp_path: Path
) -> None:
    """SIGTERM while the base model is scored: the run still stops with a checkpoint (at the
    first step) and a non-zero status, never with Lightning's status 0."""
    from ftlight.train import train

    cfg = helpers.compose(RUN, tmp_path, "causal_lm")
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg, callbacks=[_SignalAt(None)])
    assert stopped.value.exit_code != 0
    assert stopped.value.step == 1
    assert _load(tmp_path / "checkpoints" / "interrupted.ckpt")["global_step"] == 1


def test_evaluation_never_loads_lightnings_requeue_checkpoint(
    helpers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under SLURM, Lightning loads ``hpc_ckpt_*.ckpt`` for any trainer call without a
    ``ckpt_path``; ftlight's evaluations score the model in memory regardless."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from ftlight.build import build_run

    cfg = helpers.compose(RUN, tmp_path, "causal_lm")
    run = build_run(cfg)
    scores = run.evaluate("validation")
    # a requeue checkpoint of other weights where Lightning looks for one
    params = [p for p in run.module.model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(0.5)
    run.trainer.save_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    with torch.no_grad():
        for p, value in zip(params, saved, strict=True):
            p.copy_(value)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "ftlight")
    assert SLURMEnvironment.detect()

    assert run.evaluate("validation") == scores
    # without ftlight's guard Lightning would have loaded it: the test can fail
    run.trainer.validate(run.module, datamodule=run.data, verbose=False)
    assert run.trainer.ckpt_path == str(tmp_path / "hpc_ckpt_1.ckpt")


# -- choosing the checkpoint -----------------------------------------------------------------
def _ckpt(path: Path, step: int, age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_auto_resumes_from_the_newest_checkpoint(tmp_path: Path) -> None:
    """The latest step wins whatever wrote it (periodic, last, interrupted, Lightning's hpc);
    on a tie the newer file; unfinished temporary files and unreadable files are skipped."""
    ckpts = tmp_path / "checkpoints"
    _ckpt(ckpts / "step000004.ckpt", 4)
    _ckpt(ckpts / "last.ckpt", 4, age=60)  # written at epoch end, before the step file
    _ckpt(tmp_path / "hpc_ckpt_1.ckpt", 3)
    (ckpts / ".last.ckpt.tmp-x1y2").write_bytes(b"half a file")
    (ckpts / "broken.ckpt").write_bytes(b"not a checkpoint")
    assert newest_checkpoint(tmp_path) == (ckpts / "step000004.ckpt", 4)
    _ckpt(tmp_path / "hpc_ckpt_2.ckpt", 5, age=600)
    assert newest_checkpoint(tmp_path) == (tmp_path / "hpc_ckpt_2.ckpt", 5)
    _ckpt(ckpts / "interrupted.ckpt", 6, age=3600)
    assert newest_checkpoint(tmp_path) == (ckpts / "interrupted.ckpt", 6)


def test_auto_without_checkpoints_starts_afresh(helpers, tmp_path: Path) -> None:
    cfg = helpers.compose([*RUN, "ckpt_path=auto"], tmp_path, "causal_lm")
    assert resolve_ckpt_path(cfg).ckpt_path is None
    assert cfg.ckpt_path == "auto"  # the caller's config is left as it was
    _ckpt(tmp_path / "checkpoints" / "last.ckpt", 2)
    assert resolve_ckpt_path(cfg).ckpt_path == str(tmp_path / "checkpoints" / "last.ckpt")


# -- the CSV log -----------------------------------------------------------------------------
def _csv_rows(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "logs" / "metrics.csv").open()))


def test_csv_log_continues_from_the_resumed_step(tmp_path: Path) -> None:
    """A resumed run keeps the rows logged before its checkpoint's step (later ones were lost
    work), adds its own with any new column; a run that starts afresh starts a new file."""
    first = CSVLogger(save_dir=tmp_path, name="logs", version="")
    for step in range(5):
        first.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    first.save()

    second = CSVLogger(save_dir=tmp_path, name="logs", version="")
    second.log_hyperparams({"lr": 0.1})  # opens the log as a run does before it trains
    second.continue_from(3)
    second.log_metrics({"train/loss": 0.3, "val/loss": 0.4}, step=3)
    second.save()
    rows = _csv_rows(tmp_path)
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["train/loss"] == "1.0" and rows[0]["val/loss"] == ""
    assert rows[3]["val/loss"] == "0.4"

    third = CSVLogger(save_dir=tmp_path, name="logs", version="")
    third.continue_from(None)
    third.log_metrics({"val/loss": 0.5}, step=0)
    third.save()
    assert [(r["step"], r["val/loss"]) for r in _csv_rows(tmp_path)] == [("0", "0.5")]


# -- the command line ------------------------------------------------------------------------
def test_sigterm_checkpoints_exits_non_zero_and_says_how_to_resume(tmp_path: Path) -> None:
    """``ftlight-train`` outside a scheduler, sent SIGTERM mid-epoch: it checkpoints, exits with
    128 + 15, and logs the command that resumes it, which then finishes the run."""
    marker = tmp_path / "paused"
    run_dir = tmp_path / "run"
    base = [
        *setup_overrides("tiny-llama"),
        *RUN,
        "trainer.precision=32-true",
        "callbacks.progress=null",
        "trainer.enable_model_summary=false",
        f"hydra.run.dir={run_dir}",
    ]
    pause = [
        "+callbacks.pause._target_=ftlight.testing.PauseAtStep",
        "+callbacks.pause.step=2",
        f"+callbacks.pause.marker={marker}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftlight", *base, *pause], stdout=out, stderr=err, env=env
        )
    deadline = time.monotonic() + 300
    while not Path(f"{marker}.0").exists():
        assert proc.poll() is None, (tmp_path / "err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 2"
        time.sleep(0.1)
    os.kill(int(Path(f"{marker}.0").read_text()), signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    ckpt = run_dir / "checkpoints" / "interrupted.ckpt"
    assert _load(ckpt)["global_step"] == 3
    stderr = (tmp_path / "err").read_text()
    line = next(x for x in stderr.splitlines() if "Resume with: " in x)
    command = shlex.split(line.split("Resume with: ", 1)[1])
    assert command[0] == "ftlight-train"
    assert command[-2:] == [f"hydra.run.dir={run_dir}", f"ckpt_path={ckpt}"]
    assert "Resume with: " in (run_dir / "ftlight.log").read_text()

    resumed = subprocess.run(
        [sys.executable, "-m", "ftlight", *command[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 6 and metrics["train"]["attempts"] == 2


# -- under submitit (hydra/launcher=slurm) ---------------------------------------------------
SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "ftlight", "SLURM_JOB_ID": "7"}


class _SubmititHandler:
    """Stands for submitit's ``SignalHandler``: it checkpoints (the launcher's hook), requeues
    and exits; or cannot requeue (over its limit)."""

    def __init__(self, requeues: bool = True) -> None:
        self.requeues = requeues
        self.calls: list[int] = []

    def checkpoint_and_try_requeue(self, signum: int, frame=None) -> None:
        self.calls.append(signum)
        if not self.requeues:
            raise RuntimeError("Job not requeued because: timed-out too many times.")
        raise SystemExit(-1)


def test_under_submitit_its_signal_wins_and_its_handler_requeues(monkeypatch) -> None:
    """SLURM sends SIGTERM with submitit's SIGUSR2 when it preempts; submitit's requeue (its
    ``checkpoint`` hook resubmits the trial with ckpt_path=auto) must win, from its handler."""
    from ftlight.preemption import Preemption
    from ftlight.requeue import requeue_signal, submitit_requeue

    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    assert Preemption.signals() == (signal.SIGTERM, signal.SIGUSR1)  # launch/slurm.sbatch
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert Preemption.signals() == (signal.SIGUSR2, signal.SIGTERM)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert requeue_signal() == signal.SIGUSR1
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL")

    handler = _SubmititHandler()
    previous = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    try:
        stop = Preemption(dirpath="unused")
        with stop.listening():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stop.signum == signal.SIGUSR2  # recorded, not acted on: the step ends first
            assert handler.calls == []
        assert signal.getsignal(signal.SIGUSR2) == handler.checkpoint_and_try_requeue
        # at the step boundary, rank 0 hands the requeue to the handler listening() replaced
        assert submitit_requeue(stop._previous[signal.SIGUSR2]) is True
        assert handler.calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert submitit_requeue(_SubmititHandler(requeues=False).checkpoint_and_try_requeue) is False
    assert submitit_requeue(signal.SIG_DFL) is False  # not submitit's: nothing to requeue with
