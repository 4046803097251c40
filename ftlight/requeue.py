"""SLURM's side of a stopped run: which signal asks a job to requeue, and the requeue itself
(``scontrol requeue``, or submitit's own handler in a job submitit submitted). When and how a
run stops on that signal is ``ftlight.preemption``'s."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

log = logging.getLogger("ftlight")

REQUEUE_SIGNAL = signal.SIGUSR1
"""The signal SLURM sends ahead of the time limit (``#SBATCH --signal=SIGUSR1@90``)."""

SUBMITIT_SIGNAL_VARIABLE = "SUBMITIT_PREEMPT_SIGNAL"
"""Names submitit's requeue signal (``USR2`` unless set)."""


def on_slurm() -> bool:
    """Whether this process is a task of a SLURM job step (``srun``), as Lightning sees it."""
    return SLURMEnvironment.detect()


def under_submitit() -> bool:
    """Whether this process runs a job that submitit submitted to SLURM."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and on_slurm()


def requeue_signal() -> signal.Signals:
    """The signal that asks this SLURM job to checkpoint and requeue: submitit's in a job it
    submitted, else ``REQUEUE_SIGNAL``."""
    if under_submitit():
        name = os.environ.get(SUBMITIT_SIGNAL_VARIABLE, "USR2")
        return signal.Signals[f"SIG{name}" if not name.startswith("SIG") else name]
    return REQUEUE_SIGNAL


def requeue(trainer: L.Trainer, previous_handler: Any = None) -> bool:
    """Requeue this SLURM job (rank 0): through submitit's handler in a job it submitted,
    else ``scontrol requeue``. Whether it was requeued."""
    if not trainer.is_global_zero:
        return True
    if under_submitit():
        return submitit_requeue(previous_handler)
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    try:
        done = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("could not requeue SLURM job %s (%s); resubmit it to resume", job, err)
        return False
    if done.returncode != 0:
        log.warning(
            "scontrol requeue %s failed (%s); resubmit the job to resume",
            job,
            done.stderr.strip() or f"status {done.returncode}",
        )
        return False
    log.info("requeued SLURM job %s", job)
    return True


def submitit_requeue(handler: Any) -> bool:
    """Let submitit checkpoint and requeue its job, as its own handler of the requeue signal
    would (``handler``, the one ``listening`` replaced): its ``checkpoint`` hook resubmits the
    trial to resume, and it keeps count of time-limit requeues. Whether it requeued."""
    owner = getattr(handler, "__self__", None)
    if owner is None or not hasattr(owner, "checkpoint_and_try_requeue"):
        log.warning("no submitit signal handler to requeue this job with; resubmit it to resume")
        return False
    try:
        owner.checkpoint_and_try_requeue(int(requeue_signal()))
    except SystemExit:  # submitit's handler ends the process once the job is requeued
        return True
    except Exception as err:  # over its requeue limit, or scontrol failed
        log.warning("submitit did not requeue this job: %s", err)
        return False
    return True
