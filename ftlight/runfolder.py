"""A run folder belongs to one run: locked while it writes, never reused by another run.

``claim_run_folder`` wraps a whole run. Rank 0 (the launching process) takes an exclusive
``flock`` on ``<run folder>/.ftlight.lock``, refuses a folder that holds another run's results
(unless this run resumes from that folder's checkpoint) and removes what killed writes left.
Only then does Hydra's record of the run enter the folder (``ftlight.hydra_record``): its
``.hydra/`` files, secrets masked, and its job log; a refused run changes nothing there. The
other ranks of a distributed run share the folder and skip all of that (rank 0 keeps the record).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from ftlight.errors import ConfigError
from ftlight.files import remove_stale_temps
from ftlight.hydra_record import drop_records, keep_record, open_run_logs, staged_record
from ftlight.redact import redact_yaml_files, secrets_in

log = logging.getLogger("ftlight")

LOCK_FILE = ".ftlight.lock"
"""The file rank 0 holds an exclusive ``flock`` on while its run writes the folder."""

#: ``ckpt_path`` values resolved inside the run's own folder (by Lightning; ``auto``: ftlight)
_IN_PLACE_CKPT = {"last", "best", "hpc", "auto"}

#: environment variables launchers set to a process's (or its node's) rank: Lightning's
#: launcher (LOCAL_RANK, NODE_RANK), torchrun (RANK, LOCAL_RANK, GROUP_RANK), SLURM
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")

#: the folders this process claimed as rank 0 (a sweep's trials run one after another)
_held: set[Path] = set()


def is_launching_process() -> bool:
    """Whether this process is rank 0 of its job, the one that owns the run folder.

    Read from the environment because it is needed before Lightning sets up distributed
    training: the ranks it (or torchrun, or SLURM) starts carry their rank in these variables.
    """
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


@contextlib.contextmanager
def claim_run_folder(cfg: Any) -> Iterator[Path]:
    """Hold ``cfg.run_dir`` for one run (see the module docstring); yields the folder."""
    run_dir = Path(cfg.run_dir)
    if staged_record() is None and (hydra_files := hydra_output_subdir()) is not None:
        redact_yaml_files(hydra_files, secrets_in(cfg))  # saved by Hydra in the run folder
    if not is_launching_process():
        drop_records()
        open_run_logs()  # each rank's own log (Lightning names them train_ddp_process_<rank>)
        yield run_dir
        return
    try:
        # checked before the lock too: a refused run creates no lock file in another's folder
        _refuse_other_results(run_dir, cfg.get("ckpt_path"))
        run_dir.mkdir(parents=True, exist_ok=True)
        with _locked(run_dir) as announce:
            if found := _refuse_other_results(run_dir, cfg.get("ckpt_path")):
                log.info("resuming in %s, which holds %s", run_dir, ", ".join(found))
            announce()
            for folder in (run_dir, run_dir / "checkpoints"):
                remove_stale_temps(folder)
            keep_record(run_dir, secrets_in(cfg))
            open_run_logs()
            _held.add(run_dir.resolve())
            yield run_dir
    finally:
        drop_records()  # a refused run's record: never in the folder, gone from the staging


def held_by_this_process(run_dir: Path) -> bool:
    """Whether this process claimed ``run_dir`` for a run (and so wrote its files there)."""
    return Path(run_dir).resolve() in _held


def hydra_output_subdir() -> Path | None:
    """The folder where Hydra saved this job's config (``.hydra/``), if Hydra started it."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.output_subdir is None:
        return None
    return Path(hydra.runtime.output_dir) / hydra.output_subdir


def previous_results(run_dir: Path) -> list[str]:
    """What in ``run_dir`` another run left: checkpoints (Lightning's SLURM ``hpc_ckpt_*``
    too), ``metrics.json``, exports."""
    found = []
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(not p.name.startswith(".") for p in checkpoints.iterdir()):
        found.append("checkpoints/")
    found += sorted(p.name for p in run_dir.glob("hpc_ckpt_*.ckpt"))
    if (run_dir / "metrics.json").exists():
        found.append("metrics.json")
    if run_dir.is_dir():
        # every export (model/, adapter/, a plugin's own) is written with an ftlight.json
        found += sorted(f"{p.name}/" for p in run_dir.iterdir() if (p / "ftlight.json").is_file())
    return found


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[Callable[[], None]]:
    """An exclusive, non-blocking ``flock`` on the run folder's lock file for the block.

    Yields ``announce``, which writes this process into the lock file: only once the folder is
    accepted, so that a refused run leaves the file as it found it.
    """
    path = run_dir / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                f"another run is writing into {run_dir} ({holder}); two runs in one folder "
                "would overwrite each other's checkpoints and results. Give this run a folder "
                "of its own: hydra.run.dir=<new folder>. To continue that run once it has "
                f"stopped: hydra.run.dir={run_dir} ckpt_path=auto."
            ) from None
        except OSError as err:  # a file system without locks (some network mounts)
            log.warning("cannot lock %s (%s); not guarding against concurrent runs", path, err)
            locked = False
        else:
            locked = True
        if not locked:
            yield lambda: None
            return
        announced = False

        def announce() -> None:
            nonlocal announced
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            announced = True

        try:
            yield announce
        finally:
            if announced:
                handle.seek(0)
                handle.truncate()
                handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _refuse_other_results(run_dir: Path, ckpt_path: Any) -> list[str]:
    """Raise unless ``run_dir`` is new, or this run resumes from a checkpoint inside it;
    returns what the folder holds (a resumed run's own results)."""
    found = previous_results(run_dir)
    if not found or (ckpt_path is not None and resumes_in(run_dir, str(ckpt_path))):
        return found
    raise ConfigError(
        f"{run_dir} already holds the results of another run ({', '.join(found)}); this run "
        "would overwrite them. Start it in a new folder (hydra.run.dir=<new folder>, or leave "
        "hydra.run.dir to its dated default), or continue that run from its newest "
        f"checkpoint, if it has one: hydra.run.dir={run_dir} ckpt_path=auto."
    )


def resumes_in(run_dir: Path, ckpt_path: str) -> bool:
    """Whether ``ckpt_path`` is a checkpoint of ``run_dir`` (a file in it, or "last"...)."""
    if ckpt_path in _IN_PLACE_CKPT:
        return True
    if "://" in ckpt_path:
        return False
    ckpt = Path(ckpt_path).expanduser().resolve()
    return ckpt.is_relative_to(run_dir.resolve())
