"""How a task calls its model: the plain reference of ``speed=plain``.

A task says what a pass means (which positions carry a loss, what is scored, how answers are
decoded); a ``ModelCalls`` says how the model is called for it. This one calls the model as
transformers documents it: ``model(...)`` with its own loss and full logits, and
``model.generate``. The run's speed parts replace it with ``ftlight.speed.calls.FastCalls``,
which computes the same numbers more cheaply and is tested against this one
(``tests/speed/test_plain.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ftlight.data.encode import IGNORE_INDEX

if TYPE_CHECKING:
    from ftlight.tasks.generation import GreedyAnswers


@dataclass
class LabelledOutputs:
    """An evaluated batch reduced to its labelled positions."""

    loss: torch.Tensor | None  # mean token loss over them (None: no labelled position)
    predictions: torch.Tensor  # greedy next token at each labelled position
    targets: torch.Tensor  # the label there
    rows: torch.Tensor  # the batch row of each labelled position
    losses: torch.Tensor  # the token loss at each labelled position
    #: what decoding can continue from (a speed part: ``ftlight.speed.scored.ScoredPrompts``)
    prompts: Any = None


def predicting(labels: torch.Tensor) -> torch.Tensor:
    """``(rows, length)``: the positions whose next token is a label."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


class ModelCalls:
    """The plain calls: transformers' forward, loss and ``generate``, nothing replaced."""

    def whole_rows(self, training: bool, evaluation: bool) -> None:
        """Run every row whole in training steps / evaluation passes (where a step cannot
        reuse a shared opening's cache); plain calls always do."""

    def loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """The training loss of one micro-batch: the model's own."""
        return model(**inputs, use_cache=False).loss

    def labelled(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        generating: bool = False,
        max_new_tokens: int = 0,
    ) -> LabelledOutputs:
        """Loss and greedy next token at each labelled position of an evaluation batch, from
        the model's full logits. ``generating``/``max_new_tokens``: answers will be decoded
        from this batch's prompts (a cheaper pass may keep what decoding reuses)."""
        labels = inputs["labels"]
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        logits = model(**rest, use_cache=False).logits
        keep = predicting(labels)
        scored = logits[keep].float()
        wanted = labels[:, 1:][keep[:, :-1]]
        losses = nn.functional.cross_entropy(scored, wanted, reduction="none")
        return LabelledOutputs(
            losses.mean() if len(wanted) else None,
            scored.argmax(-1),
            wanted,
            keep.nonzero()[:, 0],
            losses,
        )

    def generate(
        self,
        answers: GreedyAnswers,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        eos: list[int],
        pad_id: int,
        tokenizer: Any = None,
        scored: LabelledOutputs | None = None,
        row_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ``(rows, steps)`` greedy answers to left-padded prompts as ``answers`` decodes
        them, through ``model.generate``. ``scored``: the scoring pass of the rows ``row_ids``
        these prompts start, for a decoder that continues from it; unused here."""
        return answers.generate(
            model, input_ids, attention_mask, max_new_tokens, eos, pad_id, tokenizer
        )
