"""Sequence classification: a new head over a pretrained body, scored by accuracy and macro-F1."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import AutoModelForSequenceClassification

from ftlight.data.encode import encode_classification
from ftlight.data.formats import ClassificationExample
from ftlight.errors import ConfigError
from ftlight.evaluation.predictions import label_rows
from ftlight.models.introspect import body_of
from ftlight.tasks.base import LabelInfo, Task, label_key

# The names classification heads go by across architectures (BERT's pooler feeds its
# classifier); quantising a freshly initialised head breaks peft's trainable copy of it.
FULL_PRECISION = ("classifier", "score", "pooler", "pre_classifier", "qa_outputs")


class ClassificationTask(Task):
    """Text (or text pair) -> one of the labels seen in the training data."""

    name: ClassVar[str] = "classification"
    example_type: ClassVar[type] = ClassificationExample
    default_format: ClassVar[str] = "text_label"
    peft_task_type: ClassVar[str | None] = "SEQ_CLS"
    uses_labels: ClassVar[bool] = True

    def __init__(self) -> None:
        self.labels: LabelInfo | None = None
        self.tokenizer: Any = None

    def auto_class(self) -> type:
        """``AutoModelForSequenceClassification``."""
        return AutoModelForSequenceClassification

    def model_kwargs(self, labels: LabelInfo | None, tokenizer: Any = None) -> dict[str, Any]:
        """``num_labels``, the id <-> label maps and the pad token, stored in the model config
        (a decoder-only classifier reads the pad token to find each row's last token)."""
        if labels is None or labels.num_labels < 2:
            raise ConfigError(
                "task=classification needs at least two distinct labels in the training data; "
                f"found {labels.names if labels else []}"
            )
        self.labels = labels
        kwargs: dict[str, Any] = {"num_labels": labels.num_labels, **labels.to_dict()}
        if tokenizer is not None:
            kwargs["pad_token_id"] = tokenizer.pad_token_id
        return kwargs

    def head_names(self, model: nn.Module) -> list[str]:
        """The new classifier and, where the body ends in a pooler (BERT), the pooler too.

        BERT-style classifiers read the pooler's dense layer, which the body owns; a sentence
        encoder's pooler was never trained for the task (sentence-transformers pool the mean),
        so a head that leaves it frozen cannot learn. RoBERTa-style heads hold their dense
        layer inside ``classifier`` already.
        """
        heads = super().head_names(model)
        body = body_of(model)
        pooler = getattr(body, "pooler", None) if body is not None else None
        if isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters()):
            heads.append(f"{model.base_model_prefix}.pooler")
        return heads

    def new_module_names(self, model: nn.Module) -> list[str]:
        """The classifier the model initialises fresh (``classifier``, ``score``...)."""
        return super().head_names(model)

    def full_precision_modules(self) -> list[str]:
        """The fresh head and the pooler feeding it stay out of 4-bit quantisation."""
        return list(FULL_PRECISION)

    def encode(
        self,
        example: ClassificationExample,
        tokenizer: Any,
        max_length: int | None,
        label_ids: dict[str, int] | None = None,
        evaluation: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Token ids (and token types) with the label's id."""
        assert label_ids is not None, "the data maps labels to ids before encoding"
        enc = encode_classification(
            example, tokenizer, label_ids[label_key(example.label)], max_length
        )
        row: dict[str, Any] = {"input_ids": enc.input_ids, "label": enc.label}
        if enc.token_type_ids is not None:
            row["token_type_ids"] = enc.token_type_ids
        return row, enc.truncated

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
        if self.predictions is not None and self.labels is not None:
            names = self.labels.names
            self.predictions.add(label_rows(self.tokenizer, batch, names, outputs.logits, labels))
