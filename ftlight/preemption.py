"""Stopping a run cleanly when it is told to: SIGTERM anywhere, SLURM's requeue signal.

A signal only records itself. At the next optimizer-step boundary the ranks agree (one
all-reduce) that the run stops, write ``checkpoints/interrupted.ckpt`` together (atomically,
like every checkpoint), rank 0 requeues the job when SLURM sent the requeue signal, and
``RunInterrupted`` ends the run with status 128 + the signal number and a line saying how to
resume. ``ckpt_path=auto`` (what the sbatch passes) resumes from the newest checkpoint of the
run folder.

The requeue signal is SIGUSR1 in a job of ``launch/slurm.sbatch`` (its ``--signal``), which
rank 0 requeues with ``scontrol requeue``. In a job submitit submitted (``hydra/launcher=slurm``)
it is submitit's (SIGUSR2, ``$SUBMITIT_PREEMPT_SIGNAL``), and rank 0 hands the requeue to
submitit's own handler: its ``checkpoint`` hook resubmits the trial with ``ckpt_path=auto``
(``hydra_plugins.ftlight_slurm``) and it counts the time-limit requeues
(``hydra.launcher.max_num_timeout``). There the requeue signal wins over a SIGTERM that comes
with it (submitit ignores SIGTERM: SLURM sends it too when it preempts a job).

Lightning's own handling is switched off where it would lose work: its SLURM requeue handler
saves from inside the signal handler (mid-step, collectives included) into ``hpc_ckpt_*``
files that later evaluations load, and its SIGTERM handling ends the fit with status 0.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ftlight.redact import MASK, masked_override
from ftlight.requeue import REQUEUE_SIGNAL, on_slurm, requeue, requeue_signal, under_submitit
from ftlight.resume import newest_checkpoint

log = logging.getLogger("ftlight")

INTERRUPTED_CKPT = "interrupted.ckpt"
"""The checkpoint a signalled run writes into its checkpoint folder."""


class RunInterrupted(Exception):
    """The run stopped on ``signum`` at ``step``; it resumes from ``checkpoint`` (None: no
    training was saved). ``resume`` is the command that continues it, once known."""

    def __init__(
        self, signum: int, checkpoint: Path | None, step: int, requeued: bool = False
    ) -> None:
        super().__init__(signum, checkpoint, step, requeued)
        self.signum = signum
        self.checkpoint = checkpoint
        self.step = step
        self.requeued = requeued
        self.resume = ""

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.checkpoint is None:
            what = f"stopped by {name} before training saved a checkpoint"
        else:
            what = f"stopped by {name} at step {self.step}; checkpoint: {self.checkpoint}"
        if self.requeued:
            what += "; the job was requeued and its next attempt resumes from there"
        return f"{what}. {self.resume}" if self.resume else what

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class Preemption(L.Callback):
    """On SIGTERM (and, under SLURM, the requeue signal): checkpoint at the next optimizer
    step into ``dirpath``, requeue the SLURM job if asked to, and stop with ``RunInterrupted``.

    ``listening()`` records the signals for a whole run; during ``fit`` the callback also
    takes SIGTERM back from the handler Lightning installs for it.
    """

    def __init__(self, dirpath: str, filename: str = INTERRUPTED_CKPT) -> None:
        self.dirpath = Path(dirpath)
        self.filename = filename
        #: the signal received and not yet acted on (None: none)
        self.signum: int | None = None
        self._step_seen = -1
        self._stop: RunInterrupted | None = None
        #: the handlers the signals had before ``listening`` (submitit's, in its jobs)
        self._previous: dict[int, Any] = {}
        self._order: tuple[signal.Signals, ...] = (signal.SIGTERM,)  # signals(), when listening

    @property
    def path(self) -> Path:
        """Where the checkpoint of an interrupted run goes."""
        return self.dirpath / self.filename

    @property
    def requested(self) -> bool:
        """Whether a signal asked this process to stop."""
        return self.signum is not None

    @staticmethod
    def signals() -> tuple[signal.Signals, ...]:
        """The signals handled, the one that wins first: SIGTERM, and in a SLURM job its
        requeue signal (first under submitit)."""
        if not on_slurm():
            return (signal.SIGTERM,)
        if under_submitit():
            return (requeue_signal(), signal.SIGTERM)
        return (signal.SIGTERM, REQUEUE_SIGNAL)

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """Record the signals in the block (a whole run); the previous handlers come back."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        self._order = self.signals()
        previous = {s: signal.getsignal(s) for s in self._order}
        self._previous = dict(previous)
        for s in previous:
            signal.signal(s, self._record)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # the first of signals() wins: SIGTERM (the job is ending, whoever asked for it), or
        # under submitit its requeue signal
        order = self._order
        if self.signum is None or (signum in order and order.index(signum) < self._rank()):
            self.signum = signum

    def _rank(self) -> int:
        """Where the signal received stands in ``signals()`` (their number: none)."""
        order = self._order
        return order.index(self.signum) if self.signum in order else len(order)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Handle SIGTERM ourselves while training: Lightning's handler (set for each trainer
        call; it restores the previous ones after) ends the fit with status 0 and no
        checkpoint, and in DDP broadcasts from inside the handler."""
        self._step_seen = trainer.global_step
        if not self._previous:  # a fit outside listening()
            self._order = self.signals()
        if threading.current_thread() is threading.main_thread():
            for s in self._order:
                signal.signal(s, self._record)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """At an optimizer-step boundary: if any rank was signalled, checkpoint (and requeue)."""
        step = trainer.global_step
        if step == self._step_seen or self._stop is not None:
            return  # accumulating gradients (the optimizer has not stepped), or stopping
        self._step_seen = step
        signum = self._agreed_signal(trainer)
        if not signum:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        requeued = (
            on_slurm()
            and signum == requeue_signal()
            and requeue(trainer, self._previous.get(signum))
        )
        # stop at the next hook, once Lightning has logged this step (and run a validation
        # due now): the resumed run continues the log right after it
        self._stop = RunInterrupted(signum, self.path, step, requeued)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Stop before the next step, if asked to."""
        self._stop_now()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop before the epoch's end is checkpointed, if asked to."""
        self._stop_now()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop before the evaluation after training, if asked to at the last step."""
        self._stop_now()

    def _stop_now(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            raise stop

    def drop_if_superseded(self, run_dir: Path) -> None:
        """After a completed fit: remove the interrupted checkpoint once a newer one holds the
        run (a later ``ckpt_path=auto`` would not pick it; a person might)."""
        path = self.path
        if not path.exists():
            return
        newest = newest_checkpoint(run_dir)
        if newest is not None and newest[0].resolve() != path.resolve():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _agreed_signal(self, trainer: L.Trainer) -> int:
        """The signal any rank received (the first of ``signals()`` that one did), 0 for
        none; the same on every rank."""
        if trainer.world_size == 1:
            return self.signum or 0
        order = self._order
        # ranks reduce how urgent their signal is: len(order) for the first, 0 for none
        mine = len(order) - self._rank()
        device = trainer.strategy.root_device
        agreed = trainer.strategy.reduce(torch.tensor(mine, device=device), reduce_op="max")
        return int(order[len(order) - int(agreed)]) if int(agreed) else 0


def find_preemption(trainer: L.Trainer) -> Preemption | None:
    """The trainer's ``Preemption`` callback, if it has one."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, Preemption)), None)


@contextlib.contextmanager
def stop_on_signal(trainer: L.Trainer, run_dir: Path) -> Iterator[None]:
    """Run the block (evaluations and fit) listening for the signals; a run they stop raises
    ``RunInterrupted`` with the command that resumes it, which rank 0 logs.

    A signal outside training ends an evaluation with Lightning's ``SIGTERMException`` (a
    ``SystemExit`` with status 0); it becomes a ``RunInterrupted`` naming the run's newest
    checkpoint.
    """
    preemption = find_preemption(trainer)
    listening = preemption.listening() if preemption else contextlib.nullcontext()
    try:
        with listening:
            yield
    except SIGTERMException:
        found = newest_checkpoint(run_dir)
        err = RunInterrupted(signal.SIGTERM, *(found or (None, trainer.global_step)))
        _announce(err, run_dir, trainer.is_global_zero)
        raise err from None
    except RunInterrupted as err:
        _announce(err, run_dir, trainer.is_global_zero)
        raise


def _announce(err: RunInterrupted, run_dir: Path, is_rank_zero: bool) -> None:
    """Say in ``err`` how to continue the run, and log it on rank 0."""
    if err.checkpoint is None:
        err.resume = "Run the same command again to start over."
    elif not err.requeued:
        err.resume = f"Resume with: {resume_command(run_dir, err.checkpoint)}"
    if is_rank_zero:
        log.warning("%s", err)


def resume_command(run_dir: Path, ckpt: Path) -> str:
    """The ``ftlight-train`` command that continues this run in ``run_dir`` from ``ckpt``:
    the run's own overrides (from Hydra), its folder and the checkpoint.

    A secret's value is never written out (the command goes to the log): its override shows
    ``***`` and the command is followed by which ones to give again.
    """
    masked: list[str] = []
    if HydraConfig.initialized():
        skip = ("ckpt_path=", "hydra.run.dir=", "run_dir=")
        task = [o for o in HydraConfig.get().overrides.task if not o.startswith(skip)]
        shown = [masked_override(o) for o in task]
        masked = [o.split("=", 1)[0] for o, s in zip(task, shown, strict=True) if o != s]
        overrides = [shlex.quote(o) for o in shown]
    else:
        overrides = ["<the same overrides>"]
    folder, ckpt = Path(run_dir).absolute(), Path(ckpt).absolute()
    tail = [shlex.quote(f"hydra.run.dir={folder}"), shlex.quote(f"ckpt_path={ckpt}")]
    command = " ".join(["ftlight-train", *overrides, *tail])
    if masked:
        names = ", ".join(masked)
        command += f" (give {names} again in place of {MASK}: secret values are not written down)"
    return command
