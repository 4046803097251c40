"""Resuming a run: which checkpoint, and what carries over from the attempts before.

``ckpt_path=auto`` resumes from the newest checkpoint of the run folder, or starts afresh when
it has none: ``checkpoints/*.ckpt`` (``last.ckpt``, periodic ``step*.ckpt``, the
``interrupted.ckpt`` a signal leaves) and Lightning's ``hpc_ckpt_*.ckpt``, newest by training
step, then by time. A resumed run reuses the scores before training that its first attempt
kept in ``before.json``; every rank's random state travels in the checkpoint and goes back to
the same rank (``rank_rng_states``, ``rng_state_of_rank``); ``RunHistory`` carries the
attempts and training time in the checkpoints (and ``ThroughputMonitor`` its loss history and
throughput), so that ``metrics.json`` and ``loss.png`` cover the whole run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
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
def before_key(cfg: DictConfig) -> str:
    """A hash of what the scores before training depend on, besides the model and data
    (which a resume has already checked against its checkpoint)."""
    settings = {
        "eval": {k: OmegaConf.select(cfg, f"eval.{k}") for k in ("split", "general", "few_shot")},
        "task": OmegaConf.to_container(cfg.task, resolve=True),
    }
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def kept_before(key: str, run_dir: Path) -> dict[str, Any] | None:
    """The scores before training kept by an earlier attempt of this run (``before`` and
    ``few_shot``), if they were measured with the same settings (``key``: ``before_key``)."""
    path = Path(run_dir) / BEFORE_FILE
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("settings") != key:
        return None
    return kept


def keep_before(
    key: str, run_dir: Path, before: dict[str, float], few_shot: dict[str, Any] | None
) -> None:
    """Keep the scores before training for a later attempt of this run (rank 0), under the
    settings they were measured with (``key``: ``before_key``)."""
    payload = {"settings": key, "before": before, "few_shot": few_shot}
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


# -- random state, per rank ------------------------------------------------------------------
def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random state (torch's, the GPU's on one, numpy's, Python's), in types a
    weights-only ``torch.load`` reads back."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":  # dropout on the GPU draws from the device's generator
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_rng_states(device: torch.device) -> list[dict[str, Any]]:
    """Every rank's random state, in rank order (a collective: every rank saves a checkpoint;
    rank 0 writes it). Ranks draw differently (their batches differ in shape), so a resume
    that handed rank 0's state to all of them would change every later dropout mask."""
    mine = rng_state(device)
    rank, world = _rank_and_world()
    if world == 1:
        return [mine]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, mine)
    return states


def rng_state_of_rank(meta: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's random state from a checkpoint's ``ftlight`` entry (None: it holds none).

    A checkpoint of another number of processes, or from before per-rank states, gives every
    rank rank 0's torch state, with a warning: training goes on, but not as it would have.
    """
    rank, world = _rank_and_world()
    states = meta.get("rng_ranks")
    if states and len(states) == world:
        return states[rank]
    if states or world > 1:
        saved = f"{len(states)} processes" if states else "one random state (an older ftlight)"
        if rank == 0:
            log.warning(
                "the checkpoint holds the random state of %s, this run has %d processes: every "
                "rank continues from rank 0's, so dropout draws differ from an uninterrupted run",
                saved,
                world,
            )
    old = {"torch": meta.get("rng"), "cuda": meta.get("cuda_rng")}
    return {k: v for k, v in old.items() if v is not None} or None


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Put back a state of ``rng_state`` (the GPU's only on a GPU)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":  # a GPU checkpoint resumed on the CPU
        torch.cuda.set_rng_state(state["cuda"], device)
    if "numpy" in state:
        saved = state["numpy"]
        key = saved["key"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", key, saved["pos"], saved["has_gauss"], saved["gauss"]))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
