"""The ``full`` strategy: every weight trains."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ftlight.strategies import Strategy
from ftlight.tasks import Task


class FullStrategy(Strategy):
    """Full fine-tuning: all parameters train; checkpoints and exports hold the whole model."""

    name: ClassVar[str] = "full"

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Unfreeze every parameter."""
        for p in model.parameters():
            p.requires_grad_(True)
        return model
