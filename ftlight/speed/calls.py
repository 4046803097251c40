"""The fast model calls: the speed parts of a task's passes, against the plain ones.

``FastCalls`` computes what ``ftlight.tasks.calls.ModelCalls`` computes (the same losses,
predictions and answers, within floating-point summation order) with less work, each part
behind its switch of the run's plan (``ftlight.speed.plan``):

- ``sliced_loss``: only the positions that predict a label go through the LM head
  (``logits_to_keep`` as a boolean mask, which ``transformers`` models accept): on SFT rows
  most of a sequence is prompt, whose logits carry no loss;
- ``head_loss``: when the model returns its head's output unchanged, the loss projects the
  hidden states itself, a block of positions at a time (``ftlight.speed.head_loss``);
- ``share_prefix``/``shared_opening``: the opening every row of a batch shares runs once
  (``ftlight.speed.prefix``, ``ftlight.speed.cascade``);
- ``decode``: answers from ftlight's cached greedy decoder (``ftlight.speed.decode``), which
  continues from the keys and values the scoring pass kept instead of encoding the prompts
  again.

Where a model cannot take a part (no mask for ``logits_to_keep``, a head whose output it
changes, no cache interface) the call falls back to the plain one, found out once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ftlight.speed import cascade
from ftlight.speed.decode import can_decode, fast_greedy
from ftlight.speed.head_loss import head_as_identity, linear_cross_entropy, plain_head
from ftlight.speed.plan import SpeedPlan
from ftlight.speed.prefix import (
    PrefixPass,
    RowCache,
    cache_argument,
    encode_opening,
    forward_with_shared_prefix,
    new_cache,
    shared_prefix_length,
    takes_argument,
)
from ftlight.speed.rows import row_groups, rows_of
from ftlight.speed.scored import ScoredPrompts, prompt_lengths, prompt_scores
from ftlight.tasks.calls import LabelledOutputs, ModelCalls, predicting
from ftlight.tasks.generation import GreedyAnswers

#: the model inputs with which a pass may share an opening and keep a cache
PLAIN_INPUTS = frozenset({"input_ids", "attention_mask"})
#: most logits an evaluation forward holds at once (16 M floats: 64 MB in float32); twice that
#: raised the evaluation's peak memory (benchmarks/README.md)
EVAL_LOGITS = 2**24
#: the parts a ``FastCalls`` holds; with all of them off a run calls the model plainly
CALL_PARTS = ("sliced_loss", "head_loss", "share_prefix", "shared_opening", "decode")


def model_calls(plan: SpeedPlan) -> ModelCalls:
    """The calls a run's tasks make under ``plan``: plain when it switches every call part
    off (``speed=plain``)."""
    if any(getattr(plan, part) for part in CALL_PARTS):
        return FastCalls(plan)
    return ModelCalls()


class FastCalls(ModelCalls):
    """The calls with the plan's speed parts (module docstring); the plain ones where a
    model cannot take a part."""

    def __init__(self, plan: SpeedPlan | None = None) -> None:
        self.plan = plan or SpeedPlan()
        #: None until the first pass finds out whether the model can project only the
        #: labelled positions onto the vocabulary (``logits_to_keep`` as a mask)
        self.sliced_loss: bool | None = None
        #: whether the model returns its head's output unchanged, so that the loss projects
        #: the hidden states itself; None until a training step tells
        self.head_in_loss: bool | None = None
        #: whether training steps / evaluation passes may run a shared opening once
        #: (``whole_rows``)
        self.share_in_training = self.plan.share_prefix
        self.share_in_evaluation = self.plan.share_prefix

    def whole_rows(self, training: bool, evaluation: bool) -> None:
        """Run every row whole in training steps / evaluation passes (``share_prefix`` off
        there)."""
        self.share_in_training = self.plan.share_prefix and not training
        self.share_in_evaluation = self.plan.share_prefix and not evaluation

    def loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the labelled positions, projecting only those; the
        model's own loss where it cannot take a mask. A model that changes its head's output
        (scaling, capping) is run again the plain way, on that step and later ones."""
        head = plain_head(model) if self.head_in_loss is not False and self.plan.head_loss else None
        if head is not None and torch.is_grad_enabled():
            with head_as_identity(head) as given:
                sliced = self._labelled_pass(model, inputs, self.share_in_training)
            if sliced is None:
                return super().loss(model, inputs)
            hidden, wanted = sliced[0].output.logits, sliced[1]
            if given and hidden is given[-1]:
                self.head_in_loss = True
                return linear_cross_entropy(hidden, head.weight, head.bias, wanted)
            # the model changed what its head returned: this step again, as it is, and so on
            self.head_in_loss = False
            del sliced, hidden
            given.clear()
        sliced = self._labelled_pass(model, inputs, self.share_in_training)
        if sliced is None:
            return super().loss(model, inputs)
        scored, wanted = sliced
        return nn.functional.cross_entropy(scored.output.logits.float(), wanted)

    def _labelled_pass(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        share: bool,
        shared: int | None = None,
        opening: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        keep_cache: bool = False,
    ) -> tuple[PrefixPass, torch.Tensor] | None:
        """The pass whose logits are those of the positions that predict a label, and those
        labels; None when the model cannot project a subset of positions. ``share``: the
        pass may run a shared opening once; ``shared``/``opening``: that opening, when
        already found (and encoded); ``keep_cache``: also return the rows' keys and values."""
        labels = inputs.get("labels")
        if (
            labels is None
            or self.sliced_loss is False
            or not self.plan.sliced_loss
            or not takes_argument(model, "logits_to_keep")
        ):
            return None
        keep = predicting(labels)
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        if shared is None:
            shared = _shared_length(rest, keep) if share else 0
        if shared:
            scored = forward_with_shared_prefix(
                model,
                rest["input_ids"],
                rest.get("attention_mask"),
                shared,
                opening=opening,
                keep_cache=keep_cache,
                one_copy=self.plan.shared_opening,
                logits_to_keep=keep[:, shared:],
            )
        else:
            cache = new_cache(model) if keep_cache else None
            name = cache_argument(model) or "past_key_values"
            uses = {name: cache, "use_cache": True} if keep_cache else {"use_cache": False}
            scored = PrefixPass(model(**rest, **uses, logits_to_keep=keep), cache)
        logits = scored.output.logits
        wanted = labels[:, 1:][keep[:, :-1]]
        if logits.ndim != 2 or logits.shape[0] != wanted.shape[0]:
            self.sliced_loss = False  # the model sliced some other way: use the plain pass
            return None
        self.sliced_loss = True
        return scored, wanted

    def labelled(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        generating: bool = False,
        max_new_tokens: int = 0,
    ) -> LabelledOutputs:
        """Loss and greedy next-token predictions at the labelled positions only.

        The full ``(rows, length, vocabulary)`` logits of an evaluation batch are the largest
        tensor of a run (16 rows of 256 tokens over a 49k vocabulary: 800 MB in float32),
        and most of them belong to prompt tokens, which are not scored. Only the labelled
        positions are projected, and a batch with many of them (general text, where every
        token is labelled) in groups of rows holding at most ``EVAL_LOGITS`` logits: rows of
        similar length together, each group cut to its longest row.

        When answers are decoded from this batch (``generating``), the pass keeps the rows'
        keys and values, with room for ``max_new_tokens``: every prompt is the start of its
        row, so decoding continues from them instead of encoding the prompts again.
        """
        if self.sliced_loss is False or not self.plan.sliced_loss:
            return super().labelled(model, inputs, generating, max_new_tokens)
        labels = inputs["labels"]
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1)
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        keep = predicting(labels)
        filled = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
        lengths = filled.sum(1)
        shared = _shared_length(inputs, keep) if self.share_in_evaluation else 0
        if shared >= int(lengths.min()):
            shared = 0
        opening = None
        if (
            shared
            and self.plan.shared_opening
            and cascade.supports(model)
            and not torch.is_grad_enabled()
        ):
            opening = encode_opening(model, ids, shared)  # once for every group
        keep_cache = (
            generating
            and set(inputs) <= PLAIN_INPUTS | {"labels"}
            and self.plan.decode
            and can_decode(model)
        )
        order = torch.argsort(lengths, stable=True)
        per_row = keep.sum(1)[order].tolist()
        starts = prompt_lengths(labels)  # each row's prompt length
        offset = shared if opening is not None else 0
        if keep_cache and int(starts.min()) <= offset:
            keep_cache = False  # a prompt inside the opening: nothing of its own to continue
        prompts = None
        if keep_cache:  # each row's prompt positions, with room for the answer
            prompts = RowCache(model, len(order), int(starts.max()) - offset, max_new_tokens)
        total, predictions, targets = labels.new_zeros((), dtype=torch.float32), [], []
        losses, position_rows = [], []
        first_scores: torch.Tensor | None = None
        for group in row_groups(per_row, max(1, EVAL_LOGITS // vocab)):
            rows = order[group]
            width = int(filled[rows].any(0).nonzero().max()) + 1
            part = {k: rows_of(v, rows, width, ids.shape) for k, v in inputs.items()}
            sliced = self._labelled_pass(model, part, True, shared, opening, keep_cache)
            if sliced is None:
                return super().labelled(model, inputs, generating, max_new_tokens)
            scored, wanted = sliced
            logits = scored.output.logits
            part_keep = predicting(part["labels"])
            if len(wanted):  # per position: each row's own loss for its predictions file
                loss = nn.functional.cross_entropy(logits.float(), wanted, reduction="none")
                total = total + loss.sum()
                losses.append(loss)
            predictions.append(logits.argmax(-1))
            targets.append(wanted)
            position_rows.append(rows.repeat_interleave(part_keep.sum(1)))
            if prompts is not None and scored.cache is None:
                prompts = None  # a group without keys and values: decoding encodes the prompts
            elif prompts is not None:
                prompts.add(group.start, scored.cache)
                first_scores = prompt_scores(first_scores, logits, part_keep, rows, starts)
            del sliced, scored, logits  # this group's keys and values are copied or unused
        n = sum(per_row)
        scored_prompts = None
        if prompts is not None and prompts.cache is not None:
            scored_prompts = ScoredPrompts(
                prompts.cache, offset, opening, starts, keep, order, first_scores
            )
        return LabelledOutputs(
            total / n if n else None,
            torch.cat(predictions),
            torch.cat(targets),
            torch.cat(position_rows),
            torch.cat(losses) if losses else total.new_zeros(0),
            scored_prompts,
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
        """Greedy answers from ftlight's decoder (``speed.decode``), continuing from the
        scoring pass's keys and values when it kept them (``scored.prompts``)."""
        if not self.plan.decode:
            return super().generate(
                answers, model, input_ids, attention_mask, max_new_tokens, eos, pad_id, tokenizer
            )
        prompted = None
        kept = scored.prompts if scored is not None else None
        if isinstance(kept, ScoredPrompts) and row_ids is not None:
            prompted = kept.prompted(scored.predictions, row_ids, input_ids, attention_mask)
        return fast_greedy(
            answers, model, input_ids, attention_mask, max_new_tokens, eos, pad_id, prompted,
            tokenizer,
        )  # fmt: skip


def _shared_length(inputs: dict[str, Any], keep: torch.Tensor) -> int:
    """The opening every row shares, where a pass may run it once (else 0)."""
    if not set(inputs) - {"labels"} <= PLAIN_INPUTS:
        return 0
    return shared_prefix_length(inputs["input_ids"], inputs.get("attention_mask"), keep)
