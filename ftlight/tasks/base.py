"""What a task means: which model class it needs, and how it is scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import Metric

from ftlight.models.introspect import head_module_names
from ftlight.tasks.calls import ModelCalls


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


def label_key(label: Any) -> str:
    """The name a label goes by in ``LabelInfo`` (labels 1 and "1 " are the same class)."""
    return str(label).strip()


class Task:
    """Base class of a task: what examples it takes, which model it loads, what forms its head.

    Strategies, data and the core ask the task through these hooks and never compare task
    names, so a new task is a subclass here plus its conf file.
    """

    name: ClassVar[str] = ""
    #: the example class a data format must produce for this task (``ftlight.data.formats``)
    example_type: ClassVar[type] = object
    #: the data format used when ``data.format=auto``
    default_format: ClassVar[str] = ""
    #: peft's ``task_type`` for adapters on this task's model (None: peft's plain wrapper)
    peft_task_type: ClassVar[str | None] = None
    #: whether rows carry a class label that the data maps to ids (``LabelInfo``)
    uses_labels: ClassVar[bool] = False
    #: whether several rows may be packed into one sequence (``data.packing``)
    packable: ClassVar[bool] = False
    #: where ``update_metrics`` adds each scored row's prompt, answer and scores
    #: (``ftlight.evaluation.predictions``), while an evaluation keeps them (set per pass)
    predictions: Any = None
    #: how the task's passes call the model (``ftlight.tasks.calls``): the plain calls, or the
    #: run's fast ones (``ftlight.speed.calls``), given by the module when it is built
    calls: ModelCalls = ModelCalls()

    def configure(self, tokenizer: Any, references: list[str]) -> None:
        """Bind the tokenizer and learn what the evaluation references look like."""
        self.tokenizer = tokenizer

    def model_kwargs(self, labels: LabelInfo | None, tokenizer: Any = None) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments the task needs (``num_labels``, pad token...)."""
        return {}

    def auto_class(self) -> type:
        """The ``transformers`` auto class that loads a model for this task."""
        raise NotImplementedError

    def head_names(self, model: nn.Module) -> list[str]:
        """Dotted names of the modules that form the task head (they train under ``head``).

        By default the modules outside the pretrained body (``lm_head``, ``classifier``).
        """
        return [n for n in head_module_names(model) if _has_parameters(model, n)]

    def new_module_names(self, model: nn.Module) -> list[str]:
        """Modules the model initialises fresh for this task: they always train in full and
        are saved with any adapter (peft ``modules_to_save``). None by default."""
        return []

    def full_precision_modules(self) -> list[str]:
        """Module names that must never be quantised (matched as parts of dotted names)."""
        return []

    def encode(
        self,
        example: Any,
        tokenizer: Any,
        max_length: int | None,
        label_ids: dict[str, int] | None = None,
        evaluation: bool = False,
    ) -> tuple[dict[str, Any], bool] | None:
        """One parsed example as model inputs, and whether it was truncated; None drops it.

        ``evaluation`` rows also carry what scoring needs (a prompt and its reference).
        """
        raise NotImplementedError

    def text_rows(self, text: str, tokenizer: Any, window: int) -> list[dict[str, Any]]:
        """Evaluation rows scoring the model's next-token loss on plain text (general-text
        perplexity, ``eval.general``); none when the task's model does not predict tokens."""
        return []

    def training_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """The loss to minimise on one micro-batch of model inputs (the model's own loss)."""
        return model(**inputs, use_cache=False).loss

    def evaluation_outputs(
        self, model: nn.Module, inputs: dict[str, Any], generating: bool = False
    ) -> Any:
        """What ``update_metrics`` scores for one evaluated batch (the model's own outputs);
        ``generating``: ``update_metrics`` will also decode answers from it."""
        return model(**inputs, use_cache=False)

    def metrics(self) -> dict[str, Metric]:
        """Fresh metric objects for one evaluation pass, keyed by the name they log under."""
        raise NotImplementedError

    def update_metrics(
        self,
        metrics: dict[str, Metric],
        batch: dict[str, Any],
        outputs: Any,
        model: nn.Module | None = None,
    ) -> None:
        """Feed one evaluated batch (and the model's outputs) to the metrics; ``model`` is
        given when the pass should also score generations."""
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


def _has_parameters(model: nn.Module, name: str) -> bool:
    return any(True for _ in model.get_submodule(name).parameters())
