"""Hydra's record of a run (``.hydra/`` and the job log) enters the run folder only once the run
holds that folder.

Hydra saves ``config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` and opens its job log file
(``<run>/ftlight.log``) before ftlight's task function starts, so before ``claim_run_folder``
can refuse a folder that holds another run. So ``conf/config.yaml`` points
``hydra.output_subdir`` at a private staging folder outside the run folder (the
``ftlight.record_staging`` resolver), and its job logging (``hydra/job_logging=ftlight``) keeps
what is logged in memory (``RunLog``). Once the folder is this run's, ``keep_record`` moves the
staged files into ``<run>/.hydra/`` with secrets masked and ``open_run_logs`` writes the log;
a refused run's staged files are dropped (``drop_records``) and its log goes to the console only.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import weakref
from collections.abc import Collection
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from ftlight.files import atomic_dir
from ftlight.redact import redact_yaml_files

RECORD_DIR = ".hydra"
"""Where a run folder keeps Hydra's record of the run's settings (``ftlight-compare`` reads it)."""

STAGING_RESOLVER = "ftlight.record_staging"
"""``${ftlight.record_staging:<output dir>}``: where Hydra saves a job's record until then."""

#: Hydra output folder -> this process's staging folder for it
_staging: dict[str, Path] = {}


@functools.cache
def register() -> None:
    """Register the staging resolver that ``hydra.output_subdir`` uses (idempotent)."""
    OmegaConf.register_new_resolver(STAGING_RESOLVER, staging_dir, replace=True)


def staging_dir(output_dir: str) -> str:
    """This process's staging folder for the record of the job writing into ``output_dir``.

    Made once per folder (Hydra reads ``output_subdir`` more than once) by ``mkdtemp``: a
    name no other process or user can take, outside every run folder.
    """
    if output_dir not in _staging:
        _staging[output_dir] = Path(tempfile.mkdtemp(prefix="ftlight-record-"))
    return str(_staging[output_dir])


def staged_record() -> Path | None:
    """The staging folder Hydra saved this job's record in; None when it saved none there."""
    if not HydraConfig.initialized():
        return None
    staged = _staging.get(str(HydraConfig.get().runtime.output_dir))
    return staged if staged is not None and staged.is_dir() else None


def keep_record(run_dir: Path, secrets: Collection[str] = ()) -> Path | None:
    """Move this job's staged record into ``run_dir/.hydra`` (secrets masked), replacing the
    record there as one folder (a resume's settings replace its first attempt's); returns it."""
    staged = staged_record()
    if staged is None:
        return None
    redact_yaml_files(staged, secrets)
    target = Path(run_dir) / RECORD_DIR

    def write(tmp: Path) -> None:
        if target.is_dir():  # files other than Hydra's three stay (a callback's pickles)
            shutil.copytree(target, tmp, dirs_exist_ok=True)
        shutil.copytree(staged, tmp, dirs_exist_ok=True)

    atomic_dir(target, write)
    drop_records()
    return target


def drop_records() -> None:
    """Remove every staged record of this process that was not kept (a refused run's)."""
    for output_dir in list(_staging):
        shutil.rmtree(_staging.pop(output_dir), ignore_errors=True)


class RunLog(logging.FileHandler):
    """Hydra's job log file, opened only once this run holds its folder (``open_run_logs``).

    What is logged before is held in memory and written first; a refused run never opens the
    file, so it appends nothing to the log of the run whose folder it was refused.
    """

    HELD_LIMIT = 10_000
    """Records held at most before the file opens (a run that never claims a folder)."""

    def __init__(
        self, filename: str | None = None, mode: str = "a", encoding: str | None = None
    ) -> None:
        if filename is None:  # as Hydra names it; in the config it would not compose outside a job
            job = HydraConfig.get()
            filename = str(Path(job.runtime.output_dir) / f"{job.job.name}.log")
        super().__init__(filename, mode, encoding, delay=True)
        self.held: list[str] | None = []
        self.ended = False
        _run_logs.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record, or hold it (formatted now) until the file opens."""
        if self.held is None:
            super().emit(record)
        elif not self.ended and len(self.held) < self.HELD_LIMIT:
            try:
                self.held.append(self.format(record))
            except Exception:
                self.handleError(record)

    def open_file(self) -> None:
        """Open the log file and write what was held."""
        with self.lock:
            if self.held is None or self.ended:
                return
            held, self.held = self.held, None
            if self.stream is None:
                self.stream = self._open()
            for text in held:
                self.stream.write(text + self.terminator)
            self.flush()

    def close(self) -> None:
        """Close the file; what is still held is dropped (the run never held its folder)."""
        self.ended = True
        if self.held is not None:
            self.held.clear()
        super().close()


_run_logs: weakref.WeakSet[RunLog] = weakref.WeakSet()


def open_run_logs() -> None:
    """Open the job log files Hydra configured for this process (``RunLog``)."""
    for handler in list(_run_logs):
        handler.open_file()
