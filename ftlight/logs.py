"""Log lines for the phases of a run: how long each took and the most memory it held."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

#: every phase timed in this process, in order: name -> seconds and peak resident memory (MB)
PHASES: dict[str, dict[str, float]] = {}
_open: list[list[float]] = []  # the peak seen so far by each phase still running


@contextlib.contextmanager
def timed(what: str, logger: logging.Logger) -> Iterator[None]:
    """Log one line with the duration of a phase and, on Linux, its peak resident memory.

    The peak is the kernel's high-water mark (``VmHWM``), reset when the phase starts; a
    phase inside another one hands the mark it saw to the outer phase before resetting it.
    """
    _hand_peak_to_open_phases()
    measured = _reset_peak()
    mine = [0.0]
    _open.append(mine)
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        _open.pop()
        peak = max(mine[0], _peak_mb() or 0.0) if measured else None
        for outer in _open:
            outer[0] = max(outer[0], peak or 0.0)
    PHASES[what] = {"seconds": round(seconds, 2)}
    if peak:
        PHASES[what]["peak_rss_mb"] = round(peak)
        logger.info("%s: %.1f s, peak memory %.2f GB", what, seconds, peak / 1024)
    else:
        logger.info("%s: %.1f s", what, seconds)


def release_free_memory() -> None:
    """Hand memory the C library's malloc holds unused back to the system (glibc only)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def _hand_peak_to_open_phases() -> None:
    if _open:
        current = _peak_mb() or 0.0
        for outer in _open:
            outer[0] = max(outer[0], current)


def _peak_mb() -> float | None:
    """This process's resident-memory high-water mark (MB), or None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Start a new high-water mark at the current resident size; False where unsupported.

    Memory the previous phase freed goes back to the system first (glibc keeps freed
    blocks mapped: a phase would otherwise start with the last one's peak as its floor).
    """
    release_free_memory()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _peak_mb() is not None


#: library messages that say nothing to someone fine-tuning with ftlight
_NOISE = (
    "💡 Tip:",  # Lightning's advertisement for its cloud logger
    "GPU available:",
    "TPU available:",
    "Loading `train_dataloader` to estimate number of stepping batches",
)
_NOISY_WARNINGS = (
    # transformers 5 deprecations raised from inside Lightning and PEFT, not from user code
    r"`is_gradient_checkpointing` is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # on a machine with SLURM installed, every run outside srun is told to use srun
    r"The `srun` command is available on your system but is not used",
    r"Precision .* is not supported by the model summary",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(n) for n in _NOISE)


def quiet_libraries() -> None:
    """Keep library chatter out of a run's console: Lightning's tips and device lines, and
    deprecation warnings from inside libraries that the user cannot act on. Warnings that
    concern the user's settings or data stay."""
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
