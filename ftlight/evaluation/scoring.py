"""Score a model on one split with its task's metrics: the pass before and after training."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from ftlight.checkpoint import only_chosen_checkpoint

log = logging.getLogger("ftlight")


def score_split(trainer: L.Trainer, module: Any, data: Any, split: str) -> dict[str, float]:
    """The task's metrics (generation-based ones included) of ``module``'s model on ``split``
    (``validation`` or ``test``), through the trainer so that every rank takes part.

    The model scored is the one in memory: no checkpoint is loaded, not even the requeue
    checkpoint Lightning would pick under SLURM."""
    task = module.task
    tokens0 = getattr(task, "generated_tokens", 0)
    seconds0 = getattr(task, "generation_seconds", 0.0)
    with module.scoring(generate=True) as scores, only_chosen_checkpoint(trainer):
        if split == "test":
            trainer.test(module, datamodule=data, verbose=False)
        else:
            trainer.validate(module, datamodule=data, verbose=False)
    tokens = getattr(task, "generated_tokens", 0) - tokens0
    seconds = getattr(task, "generation_seconds", 0.0) - seconds0
    if tokens:
        log.info("generated %d tokens in %.1f s (%.1f tokens/s)", tokens, seconds, tokens / seconds)
    return scores
