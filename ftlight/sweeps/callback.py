"""Sweeps: the Hydra callback ``SweepComparison`` and the trial folder names.

``SweepComparison`` (``hydra.callbacks`` in ``conf/config.yaml``) writes the comparison that
``ftlight-compare`` writes (``ftlight.cli.compare``) into a sweep's folder after each trial,
so a sweep always holds its comparison so far. ``trial_name`` names a trial's folder (the
``ftlight.trial_name`` resolver, registered by ``ftlight.config.register``).
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ftlight.files import atomic_write_text
from ftlight.redact import MASK, is_secret_key, redact, secrets_in
from ftlight.runfolder import held_by_this_process
from ftlight.sweeps.compare import compare
from ftlight.sweeps.report import format_console, write_comparison
from ftlight.sweeps.runs import TRIAL_FILE

log = logging.getLogger("ftlight")

NAME_LIMIT = 200
"""Longest trial folder name, in bytes (file systems take 255; the job number comes first)."""


def trial_name(overrides: Any, exclude: Any = ()) -> str:
    """A sweep trial's folder name: its ``key=value`` overrides, sorted, joined by commas.

    What Hydra's ``override_dirname`` gives, made safe for a folder name: secret values
    masked (``ftlight.redact``), ``/`` replaced so that a path value opens no subfolders, and
    a long name cut (with a hash of the whole, so that names stay distinct).
    """
    items = []
    for line in overrides:
        key, sep, value = str(line).partition("=")
        if key.lstrip("+~") in set(exclude):
            continue
        items.append(f"{key}{sep}{MASK if sep and is_secret_key(key) else value}")
    name = ",".join(sorted(items)).replace("/", "_").replace("\\", "_")
    if len(name.encode()) > NAME_LIMIT:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name.encode()[: NAME_LIMIT - 9].decode(errors="ignore") + "~" + digest
    return name


def in_sweep() -> bool:
    """Whether this process runs a trial of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class SweepComparison(Callback):
    """Writes the sweep's comparison into its folder after every trial and at the end.

    After each trial it also records ``trial.json`` in the trial's folder: whether it
    failed and why, and its peak resident memory. Trials of a local sweep run one after the
    other in one process, whose lifetime peak is all a run can report about itself, so each
    trial starts by freeing what earlier ones left and resetting the peak (Linux); what
    stays resident (``rss_at_start_mb``) still counts towards its peak.
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._rss_at_start: float | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Reset the process's peak-memory counter for this trial."""
        if _is_multirun(config):
            self._started = time.perf_counter()
            _release_free_memory()  # what earlier trials freed should not count as this one's
            self._rss_at_start = _reset_peak_rss()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Record the trial, then refresh the comparison of every trial so far."""
        if not _is_multirun(config):
            return
        try:
            self._record(Path(config.hydra.runtime.output_dir), job_return, secrets_in(config))
            c = compare([Path(config.hydra.sweep.dir)])
            write_comparison(c, Path(config.hydra.sweep.dir))
            log.info("comparison of %d runs so far: %s", len(c.runs), config.hydra.sweep.dir)
        except Exception as err:  # a comparison must never fail the sweep it describes
            log.warning("could not write the comparison of %s: %s", config.hydra.sweep.dir, err)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the final comparison and print it."""
        sweep = Path(config.hydra.sweep.dir)
        try:
            c = compare([sweep])
            written = write_comparison(c, sweep)
        except Exception as err:
            print(f"ftlight: no comparison for {sweep}: {err}", file=sys.stderr)
            return
        print("\n" + format_console(c) + "\n\nwrote " + ", ".join(str(p) for p in written))

    def _record(self, run_dir: Path, job_return: Any, secrets: set[str]) -> None:
        """``trial.json``: completed or failed (and why), wall time, peak and starting RSS; an
        error that quotes a secret is masked."""
        failed = job_return.status == JobStatus.FAILED
        record: dict[str, Any] = {
            "status": "failed" if failed else "completed",
            "wall_seconds": round(time.perf_counter() - self._started, 1),
            "peak_rss_mb": _status_mb("VmHWM"),
            "rss_at_start_mb": self._rss_at_start,
        }
        if failed:
            try:
                job_return.return_value  # noqa: B018  (raises the trial's exception)
            except Exception as err:
                text = str(err).strip()
                record["error"] = text.splitlines()[0] if text else repr(err)
        if held_by_this_process(run_dir):  # not a folder this trial was refused: another's
            text = json.dumps(redact(record, secrets), indent=2)
            atomic_write_text(run_dir / TRIAL_FILE, text + "\n")


def _is_multirun(config: DictConfig) -> bool:
    return config.hydra.get("mode") == RunMode.MULTIRUN


def _release_free_memory() -> None:
    """Collect garbage and hand the C library's free heap back to the system (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator keeps what it keeps
        pass


def _reset_peak_rss() -> float | None:
    """Reset the kernel's peak-RSS counter of this process; the RSS now (MB), or None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_mb("VmRSS")


def _status_mb(name: str) -> float | None:
    """A ``/proc/self/status`` memory figure in MB (Linux), or None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
    return round(int(match.group(1)) / 1024, 1) if match else None
