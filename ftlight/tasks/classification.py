"""Sequence classification: a new head over a pretrained body, scored by accuracy and macro-F1."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import AutoModelForSequenceClassification

from ftlight.errors import ConfigError
from ftlight.models.introspect import head_module_names
from ftlight.tasks.base import LabelInfo, Task


class ClassificationTask(Task):
    """Text (or text pair) -> one of the labels seen in the training data."""

    name: ClassVar[str] = "classification"
    kind: ClassVar[str] = "classification"

    def __init__(self) -> None:
        self.labels: LabelInfo | None = None
        self.tokenizer: Any = None

    def auto_class(self) -> type:
        """``AutoModelForSequenceClassification``."""
        return AutoModelForSequenceClassification

    def model_kwargs(self, labels: LabelInfo | None) -> dict[str, Any]:
        """``num_labels`` and the id <-> label maps, stored in the model config."""
        if labels is None or labels.num_labels < 2:
            raise ConfigError(
                "task=classification needs at least two distinct labels in the training data; "
                f"found {labels.names if labels else []}"
            )
        self.labels = labels
        return {"num_labels": labels.num_labels, **labels.to_dict()}

    def configure(self, tokenizer: Any, references: list[str]) -> None:
        """Bind the tokenizer (kept for symmetry with the causal-LM task)."""
        self.tokenizer = tokenizer

    def head_names(self, model: nn.Module) -> list[str]:
        """The classifier (``classifier``, ``score``...): modules outside the body."""
        return head_module_names(model)

    def metrics(self) -> dict[str, Metric]:
        """Loss, accuracy and macro-F1."""
        assert self.labels is not None, "model_kwargs() sets the labels first"
        n = self.labels.num_labels
        return {
            "loss": MeanMetric(),
            "accuracy": MulticlassAccuracy(num_classes=n, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes=n, average="macro"),
        }

    def update_metrics(
        self,
        metrics: dict[str, Metric],
        batch: dict[str, Any],
        outputs: Any,
        model: nn.Module | None = None,
    ) -> None:
        """Update from the logits of one batch."""
        labels = batch["labels"]
        metrics["loss"].update(outputs.loss.detach().float(), weight=labels.numel())
        pred = outputs.logits.argmax(-1)
        metrics["accuracy"].update(pred, labels)
        metrics["f1_macro"].update(pred, labels)
