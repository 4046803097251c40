"""What a task means: which model class it needs, and how it is scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import Metric


@dataclass
class LabelInfo:
    """Class names of a classification data set, in id order."""

    names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        """How many classes."""
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """The ``id2label`` / ``label2id`` maps a ``transformers`` config stores."""
        return {
            "id2label": dict(enumerate(self.names)),
            "label2id": {name: i for i, name in enumerate(self.names)},
        }


class Task:
    """Base class of a task; ``kind`` names the examples it takes: 'sft' or 'classification'."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    def model_kwargs(self, labels: LabelInfo | None) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments the task needs (``num_labels``...)."""
        return {}

    def auto_class(self) -> type:
        """The ``transformers`` auto class that loads a model for this task."""
        raise NotImplementedError

    def head_names(self, model: nn.Module) -> list[str]:
        """Names of the modules that form the task head."""
        raise NotImplementedError

    def training_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """The loss to minimise on one micro-batch of model inputs (the model's own loss)."""
        return model(**inputs, use_cache=False).loss

    def metrics(self) -> dict[str, Metric]:
        """Fresh metric objects for one evaluation pass, keyed by the name they log under."""
        raise NotImplementedError

    def update_metrics(
        self, metrics: dict[str, Metric], batch: dict[str, Any], outputs: Any
    ) -> None:
        """Feed one evaluated batch (and the model's outputs) to the metrics."""
        raise NotImplementedError

    def compute_metrics(self, metrics: dict[str, Metric]) -> dict[str, float]:
        """Final values of one evaluation pass."""
        out: dict[str, float] = {}
        for key, metric in metrics.items():
            if metric.update_count == 0:  # e.g. generation scores during a plain val pass
                continue
            value = metric.compute()
            if isinstance(value, dict):
                out.update({f"{key}/{k}" if k != key else k: float(v) for k, v in value.items()})
            else:
                out[key] = float(value)
            metric.reset()
        return out
