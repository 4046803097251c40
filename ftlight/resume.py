"""Resuming a run: which checkpoint, and what carries over from the attempts before.

``ckpt_path=auto`` resumes from the newest checkpoint of the run folder, or starts afresh when
it has none: ``checkpoints/*.ckpt`` (``last.ckpt``, periodic ``step*.ckpt``, the
``interrupted.ckpt`` a signal leaves) and Lightning's ``hpc_ckpt_*.ckpt``, newest by training
step, then by time. A resumed run reuses the scores before training that its first attempt
kept in ``before.json``, and ``RunHistory`` carries training time, throughput and the loss
history in the checkpoints, so that ``metrics.json`` and ``loss.png`` cover the whole run.
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

from ftlight.files import atomic_write_text
from ftlight.speed.mfu import flops_per_token, peak_flops
from ftlight.speed.throughput import ThroughputMonitor, peak_memory_mb, real_tokens

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
    OmegaConf.update(cfg, "ckpt_path", str(found[0]) if found else None)
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
    return {
        "attempts": 0,
        "seconds": 0.0,
        "timed_tokens": 0,
        "timed_seconds": 0.0,
        "peak_memory_mb": 0.0,
        "losses": [],
        "val_losses": [],
    }


class RunHistory(L.Callback):
    """What a resumed run carries over from its earlier attempts, kept in every checkpoint:
    the attempts so far, training time, real tokens and seconds timed after each attempt's
    warm-up steps (as ``ThroughputMonitor`` times them), peak memory and the loss history.

    On resume it puts the loss history back into the ``ThroughputMonitor`` (so ``loss.png``
    covers the whole run) and moves that monitor's warm-up past the resumed step (it would
    otherwise wait for a step the run has passed, and report 0 tokens/s). ``whole_run``
    gives ``metrics.json`` its figures.
    """

    def __init__(self) -> None:
        #: totals of the attempts before this one (from the checkpoint resumed from)
        self.previous: dict[str, Any] = _totals()
        self.flops_per_token = 0.0
        self._monitor: ThroughputMonitor | None = None
        self._start_step = 0
        self._started: float | None = None
        self._warmup: int | None = None
        self._tokens = torch.zeros((), dtype=torch.long)
        self._timed_from: tuple[float, int] | None = None  # (time, tokens) at the warm-up's end
        self._timed: tuple[int, float] | None = None  # (tokens, seconds) at the end of training
        self._device = torch.device("cpu")

    @property
    def attempts(self) -> int:
        """This attempt's number: 1 for a run that never stopped."""
        return int(self.previous["attempts"]) + 1

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The totals of the attempts before (a checkpoint's)."""
        self.previous = {**_totals(), **state_dict}

    def state_dict(self) -> dict[str, Any]:
        """The totals up to now, this attempt included."""
        tokens, seconds = self._timed_so_far()
        monitor = self._monitor
        started = self._started
        return {
            "attempts": self.attempts,
            "seconds": self.previous["seconds"] + (time.perf_counter() - started if started else 0),
            "timed_tokens": self.previous["timed_tokens"] + tokens,
            "timed_seconds": self.previous["timed_seconds"] + seconds,
            "peak_memory_mb": max(self.previous["peak_memory_mb"], peak_memory_mb(self._device)),
            "losses": monitor.loss_history() if monitor else self.previous["losses"],
            "val_losses": list(monitor.val_losses) if monitor else self.previous["val_losses"],
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start this attempt's clock; hand the monitor the history of the attempts before."""
        self._monitor = next(
            (cb for cb in trainer.callbacks if isinstance(cb, ThroughputMonitor)), None
        )
        self._device = pl_module.device
        self._start_step = trainer.global_step
        self._started = time.perf_counter()
        info = pl_module.strategy.describe(pl_module.model)
        self.flops_per_token = flops_per_token(info["total"], info["trainable"])
        monitor = self._monitor
        if self._warmup is None:
            self._warmup = monitor.warmup_steps if monitor is not None else 2
        if monitor is not None:
            monitor.warmup_steps = self._start_step + self._warmup
            monitor.losses[:0] = [(s, torch.tensor(v)) for s, v in self.previous["losses"]]
            monitor.val_losses[:0] = [(s, v) for s, v in self.previous["val_losses"]]

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count real tokens (no host sync); note when the warm-up steps are over."""
        ntok = real_tokens(batch)
        self._tokens = self._tokens.to(ntok.device) + ntok
        warmup = self._warmup or 0
        if self._timed_from is None and trainer.global_step >= self._start_step + warmup:
            self._sync()
            self._timed_from = (time.perf_counter(), int(self._tokens))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Freeze this attempt's timed tokens and seconds."""
        self._timed = self._timed_so_far()

    def _timed_so_far(self) -> tuple[int, float]:
        if self._timed is not None:
            return self._timed
        if self._timed_from is None:
            return 0, 0.0
        self._sync()
        t0, tokens0 = self._timed_from
        return int(self._tokens) - tokens0, time.perf_counter() - t0

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def whole_run(self, throughput: dict[str, float], seconds: float) -> dict[str, Any]:
        """``metrics.json``'s throughput and training time for the whole run, given this
        attempt's (``ThroughputMonitor.summary``, the wall time of its fit): unchanged for a
        run that never stopped."""
        if not self.previous["attempts"]:
            return {"attempts": 1, "seconds": seconds, "throughput": throughput}
        whole: dict[str, Any] = {
            "attempts": self.attempts,
            "seconds": self.previous["seconds"] + seconds,
            "throughput": dict(throughput),
        }
        if not throughput:  # no ThroughputMonitor: nothing measured
            return whole
        tokens, timed = self._timed_so_far()
        tokens += self.previous["timed_tokens"]
        timed += self.previous["timed_seconds"]
        rate = tokens / timed if timed > 0 else 0.0
        peak = peak_flops(self._device)
        whole["throughput"].update(
            real_tokens_per_s=rate,
            mfu=rate * self.flops_per_token / peak if rate and peak else 0.0,
            peak_memory_mb=max(
                float(throughput.get("peak_memory_mb", 0.0)), self.previous["peak_memory_mb"]
            ),
        )
        return whole
