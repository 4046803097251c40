"""Score a model on one split with its task's metrics: the pass before and after training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from ftlight.checkpoint import only_chosen_checkpoint
from ftlight.evaluation.predictions import PredictionRows, gathered, write_rows

log = logging.getLogger("ftlight")


def score_split(
    trainer: L.Trainer, module: Any, data: Any, split: str, predictions: Path | None = None
) -> dict[str, float]:
    """The task's metrics (generation-based ones included) of ``module``'s model on ``split``
    (``validation`` or ``test``), through the trainer so that every rank takes part;
    ``predictions``: also write each row's prompt, answer and scores there (rank 0).

    The model scored is the one in memory: no checkpoint is loaded, not even the requeue
    checkpoint Lightning would pick under SLURM."""
    task = module.task
    tokens0 = getattr(task, "generated_tokens", 0)
    seconds0 = getattr(task, "generation_seconds", 0.0)
    task.predictions = PredictionRows() if predictions is not None else None
    try:
        with module.scoring(generate=True) as scores, only_chosen_checkpoint(trainer):
            if split == "test":
                trainer.test(module, datamodule=data, verbose=False)
            else:
                trainer.validate(module, datamodule=data, verbose=False)
        if predictions is not None:
            rows = gathered(task.predictions.rows, len(data.encoded[split]))
            if trainer.is_global_zero:
                write_rows(predictions, rows)
                log.info("wrote %d rows to %s", len(rows), predictions)
    finally:
        task.predictions = None
    tokens = getattr(task, "generated_tokens", 0) - tokens0
    seconds = getattr(task, "generation_seconds", 0.0) - seconds0
    if tokens:
        log.info("generated %d tokens in %.1f s (%.1f tokens/s)", tokens, seconds, tokens / seconds)
    return scores
