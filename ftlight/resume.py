"""Resuming a run: which checkpoint, and what carries over from the attempts before.

``ckpt_path=auto`` resumes from the newest checkpoint of the run folder, or starts afresh when
it has none: ``checkpoints/*.ckpt`` (``last.ckpt``, periodic ``step*.ckpt``, the
``interrupted.ckpt`` a signal leaves) and Lightning's ``hpc_ckpt_*.ckpt``, newest by training
step, then by time. A resumed run reuses the scores before training that its first attempt
kept in ``before.json``; ``RunHistory`` carries the attempts and training time in the
checkpoints (and ``ThroughputMonitor`` its loss history and throughput), so that
``metrics.json`` and ``loss.png`` cover the whole run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from ftlight.config import literal
from ftlight.files import atomic_write_text

log = logging.getLogger("ftlight")

AUTO = "auto"
"""``ckpt_path=auto``: the newest checkpoint of the run folder, or none."""

BEFORE_FILE = "before.json"
"""The scores before training, kept in the run folder for the attempts after the first."""


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint (file, or sharded folder) was written at.

    Tensors are memory-mapped, not read.
    """
    file = path / "meta.pt" if path.is_dir() else path
    ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0))


def run_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint in the run folder (temporary files of unfinished writes left out)."""
    folder = Path(run_dir) / "checkpoints"
    found = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    found += sorted(Path(run_dir).glob("hpc_ckpt_*.ckpt"))
    return [p for p in found if not p.name.startswith(".")]


def newest_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """The run folder's checkpoint of the latest training step (the newer file on a tie), and
    that step; None if it has none. Unreadable files are skipped with a warning."""
    best: tuple[int, float, Path] | None = None
    for path in run_checkpoints(run_dir):
        try:
            key = (checkpoint_step(path), path.stat().st_mtime, path)
        except Exception as err:  # truncated, foreign pickles, gone meanwhile
            log.warning("ignoring %s: not a readable checkpoint (%s)", path, _reason(err))
            continue
        if best is None or key[:2] > best[:2]:
            best = key
    return (best[2], best[0]) if best else None


def resolve_ckpt_path(cfg: DictConfig) -> DictConfig:
    """``cfg``, with ``ckpt_path=auto`` replaced by the checkpoint to resume from (or null)."""
    if cfg.get("ckpt_path") != AUTO:
        return cfg
    run_dir = Path(str(cfg.run_dir))
    found = newest_checkpoint(run_dir)
    cfg = copy.deepcopy(cfg)
    # a file name is data: a "${...}" in it must stay text, never an interpolation
    OmegaConf.update(cfg, "ckpt_path", literal(str(found[0])) if found else None)
    if found:
        log.info("ckpt_path=auto: resuming from %s (step %d)", found[0], found[1])
    else:
        log.info("ckpt_path=auto: no checkpoint in %s, starting from the beginning", run_dir)
    return cfg


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- scores before training ------------------------------------------------------------------
def _before_key(cfg: DictConfig) -> str:
    """A hash of what the scores before training depend on, besides the model and data
    (which a resume has already checked against its checkpoint)."""
    settings = {
        "eval": {k: OmegaConf.select(cfg, f"eval.{k}") for k in ("split", "general", "few_shot")},
        "task": OmegaConf.to_container(cfg.task, resolve=True),
    }
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def kept_before(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The scores before training kept by an earlier attempt of this run (``before`` and
    ``few_shot``), if they were measured with the same settings."""
    path = Path(run_dir) / BEFORE_FILE
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("settings") != _before_key(cfg):
        return None
    return kept


def keep_before(
    cfg: DictConfig, run_dir: Path, before: dict[str, float], few_shot: dict[str, Any]
) -> None:
    """Keep the scores before training for a later attempt of this run (rank 0)."""
    payload = {"settings": _before_key(cfg), "before": before, "few_shot": few_shot}
    atomic_write_text(Path(run_dir) / BEFORE_FILE, json.dumps(payload, indent=2) + "\n")


# -- what carries over in checkpoints --------------------------------------------------------
def _totals() -> dict[str, Any]:
    return {"attempts": 0, "seconds": 0.0}


class RunHistory(L.Callback):
    """How many attempts a run took and how long they trained, kept in every checkpoint (the
    loss history and throughput carry over in ``ThroughputMonitor``'s own state).
    ``whole_run`` gives ``metrics.json`` its figures.
    """

    def __init__(self) -> None:
        #: totals of the attempts before this one (from the checkpoint resumed from)
        self.previous: dict[str, Any] = _totals()
        self._started: float | None = None

    @property
    def attempts(self) -> int:
        """This attempt's number: 1 for a run that never stopped."""
        return int(self.previous["attempts"]) + 1

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The totals of the attempts before (a checkpoint's)."""
        self.previous = {k: state_dict.get(k, v) for k, v in _totals().items()}

    def state_dict(self) -> dict[str, Any]:
        """The totals up to now, this attempt included."""
        started = self._started
        return {
            "attempts": self.attempts,
            "seconds": self.previous["seconds"] + (time.perf_counter() - started if started else 0),
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start this attempt's clock."""
        self._started = time.perf_counter()

    def whole_run(self, throughput: dict[str, float], seconds: float) -> dict[str, Any]:
        """``metrics.json``'s attempts and training time for the whole run, given this
        attempt's fit time (``throughput``, ``ThroughputMonitor.summary``'s, covers every
        attempt already)."""
        return {
            "attempts": self.attempts,
            "seconds": self.previous["seconds"] + seconds,
            "throughput": throughput,
        }
