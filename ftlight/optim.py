"""Learning-rate schedules with warmup, built from the ``scheduler`` config group."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from ftlight.errors import ConfigError

KINDS = ("cosine", "linear", "constant")


class WarmupSchedule:
    """Linear warmup then cosine / linear decay (to ``min_lr_ratio``) or a constant rate.

    Called with the optimizer and the run's total optimizer steps; returns a ``LambdaLR``.
    """

    def __init__(
        self,
        kind: str = "cosine",
        warmup_ratio: float = 0.0,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.0,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"scheduler kind {kind!r} is not one of {', '.join(KINDS)}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ConfigError(f"scheduler.warmup_ratio={warmup_ratio} must be in [0, 1)")
        if warmup_steps is not None and warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps={warmup_steps} must be null or 0 or more")
        if not 0.0 <= min_lr_ratio <= 1.0:
            # below 0 the rate turns negative at the end of the decay: gradient ascent
            raise ConfigError(f"scheduler.min_lr_ratio={min_lr_ratio} must be in [0, 1]")
        self.kind = kind
        self.warmup_ratio = warmup_ratio
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
        """Build the scheduler for a run of ``total_steps`` optimizer steps."""
        total = max(int(total_steps), 1)
        warmup = (
            self.warmup_steps
            if self.warmup_steps is not None
            else int(round(self.warmup_ratio * total))
        )
        return LambdaLR(optimizer, lambda step: self.factor(step, warmup, total))

    def factor(self, step: int, warmup: int, total: int) -> float:
        """The learning-rate multiplier at optimizer step ``step``."""
        if warmup > 0 and step < warmup:
            return (step + 1) / (warmup + 1)
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        floor = self.min_lr_ratio
        if self.kind == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
