"""One trial of a Hydra multirun: a world of processes of its own, a W&B run of its own.

Hydra runs the trials of a local sweep one after another in one process. A trial that trains on
several devices of this machine (``-m trainer=ddp trainer.devices=2 strategy.r=4,8``) is started
by Lightning's ``_SubprocessScriptLauncher``, which starts ranks 1, 2... by running the command
line again: for a sweep that is the whole sweep (``-m`` and every value of every swept key), so
each extra rank would run a sweep of its own in other folders, and the trial would wait for them
forever. ``trial`` makes the extra ranks of a trial run that trial alone, as a single run in its
folder, and afterwards puts the process back as the next trial needs it: the world's environment
variables (Lightning reads ``LOCAL_RANK`` as "the ranks exist already" and would start none),
the process group, any rank a failed trial left waiting, and the trial's W&B run, finished.

Under a scheduler (``hydra/launcher=slurm``, torchrun) the ranks are started outside, by it, and
nothing here changes how they start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from hydra.core.hydra_config import HydraConfig

from ftlight.loggers import finish_wandb
from ftlight.preemption import RunInterrupted
from ftlight.sweeps.callback import in_sweep

log = logging.getLogger("ftlight")

#: what Lightning's launcher sets in the launching process for the world it starts
WORLD_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")

#: Hydra overrides a trial's extra ranks must not take from the sweep: the sweep's own settings
#: (its folder, launcher, sweeper) and those their command sets itself
_SWEEP_ONLY = (
    *("hydra.mode", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher"),
    *("hydra/launcher", "hydra.run", "hydra.job.name", "hydra.output_subdir", "hydra.job.num"),
    "hydra.job.id",
)

RANK_WAIT_S = 120.0
"""How long a trial's end waits for its other ranks to finish before stopping them."""


@contextlib.contextmanager
def trial() -> Iterator[None]:
    """Run one job of ``ftlight-train`` (a single run, or a trial of a sweep): in a sweep, its
    extra local ranks run this trial only; at its end, its W&B run is finished and the world it
    started is taken down (see the module docstring)."""
    saved = {name: os.environ.get(name) for name in WORLD_VARIABLES}
    ranks: list[subprocess.Popen] = []
    observers: list[Any] = []
    outcome = "failed"
    isolate = _ranks_run_this_trial(ranks, observers) if in_sweep() else contextlib.nullcontext()
    try:
        with isolate:
            yield
        outcome = "finished"
    except RunInterrupted:
        outcome = "preempted"  # checkpointed: a later attempt continues the same W&B run
        raise
    finally:
        finish_wandb(outcome)
        if in_sweep():
            _end_world(ranks, observers, wait=RANK_WAIT_S if outcome == "finished" else 0.0)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def rank_command(local_rank: int) -> tuple[list[str], str]:
    """The command that starts rank ``local_rank`` of this trial, and the folder to start it
    in: this trial alone (its overrides), as a single run in the trial's folder."""
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hydra = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += config_flags(sys.argv[1:])
    command += [o for o in hydra.overrides.hydra if _key(o) and not _key(o).startswith(_SWEEP_ONLY)]
    command += list(hydra.overrides.task)
    # a quoted Hydra value: quotes, and interpolations, escaped
    folder = str(hydra.runtime.output_dir).replace('"', '\\"').replace("${", "\\${")
    command += [
        f'hydra.run.dir="{folder}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",  # the trial's .hydra/ is rank 0's
    ]
    return command, get_original_cwd()


def config_flags(argv: Sequence[str]) -> list[str]:
    """The ``--config-path``/``--config-name``/``--config-dir`` flags of a Hydra command line."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    flags = []
    for flag, value in (
        ("--config-path", args.config_path),
        ("--config-name", args.config_name),
        ("--config-dir", args.config_dir),
    ):
        if value is not None:
            flags += [flag, str(value)]
    return flags


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


@contextlib.contextmanager
def _ranks_run_this_trial(ranks: list[subprocess.Popen], observers: list[Any]) -> Iterator[None]:
    """While the block runs, Lightning starts this trial's extra ranks with ``rank_command``;
    ``ranks`` and ``observers`` collect the processes and the threads that watch them."""
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    from lightning.pytorch.strategies.launchers import subprocess_script as launcher

    class Observer(_ChildProcessObserver):
        """Lightning's watch on the ranks (one that fails takes the others down, this process
        included, rather than leave them waiting); ``stopped`` ends it without a word."""

        stopped = False

        def _run(self) -> bool:
            return True if self.stopped else super()._run()

    def observe(procs: list[subprocess.Popen]) -> None:
        observer = Observer(main_pid=os.getpid(), child_processes=procs)
        observer.start()
        observers.append(observer)

    original_call = launcher._SubprocessScriptLauncher._call_children_scripts

    def call_children(self: Any) -> None:
        original_call(self)
        ranks.extend(self.procs)

    saved = (launcher._hydra_subprocess_cmd, launcher._launch_process_observer)
    launcher._hydra_subprocess_cmd = rank_command
    launcher._launch_process_observer = observe
    launcher._SubprocessScriptLauncher._call_children_scripts = call_children
    try:
        yield
    finally:
        launcher._hydra_subprocess_cmd, launcher._launch_process_observer = saved
        launcher._SubprocessScriptLauncher._call_children_scripts = original_call


def _end_world(ranks: list[subprocess.Popen], observers: list[Any], wait: float) -> None:
    """Let the trial's other ranks finish (``wait`` seconds at most), stop those that do not,
    and close this process's side of the process group."""
    for proc in ranks:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    left = [proc for proc in ranks if proc.poll() is None]
    for observer in observers:  # stopped first: it would take this process down with them
        observer.stopped = True
    if left:
        for observer in observers:
            observer.join(timeout=observer._sleep_period + 5)
        log.warning("stopping %d rank(s) this trial left running", len(left))
        for proc in left:
            proc.terminate()
        for proc in left:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
