"""Supervised fine-tuning of a causal LM: loss on response tokens, generation-based scoring."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric
from transformers import AutoModelForCausalLM, DynamicCache

from ftlight.data.encode import IGNORE_INDEX, encode_sft, prompt_and_reference
from ftlight.data.formats import SFTExample
from ftlight.errors import ConfigError
from ftlight.evaluation.predictions import answer_rows
from ftlight.evaluation.structured import StructuredOutputMetric
from ftlight.speed import cascade
from ftlight.speed.decode import Prompted, can_decode
from ftlight.speed.head_loss import head_as_identity, linear_cross_entropy, plain_head
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
from ftlight.tasks.base import Task
from ftlight.tasks.generation import GreedyAnswers

AUTO_MARGIN = 16  # tokens past the longest reference (end of turn, a slightly longer answer)
AUTO_FALLBACK = 128  # max_new_tokens=auto without references to size it from
#: the model inputs with which a pass may share an opening and keep a cache
PLAIN_INPUTS = frozenset({"input_ids", "attention_mask"})
#: most logits an evaluation forward holds at once (16 M floats: 64 MB in float32); twice that
#: raised the evaluation's peak memory (benchmarks/README.md)
EVAL_LOGITS = 2**24


@dataclass
class ScoredPrompts:
    """The keys and values a scoring pass computed for the prompts its rows start with:
    greedy decoding continues from them (``prompted``)."""

    cache: DynamicCache  # rows in ``order``; positions ``offset:`` of each row's prompt
    offset: int  # the opening's length when it is kept apart (``opening``), else 0
    opening: list[tuple[torch.Tensor, torch.Tensor]] | None
    lengths: torch.Tensor  # (rows,) each row's prompt length: the start of its last reply
    keep: torch.Tensor  # (rows, length) the positions whose predictions the pass made
    order: torch.Tensor  # the batch rows in the order of the cache and of the predictions
    #: (rows, vocabulary) float32 scores at each row's last prompt position, in batch order:
    #: where logits processors start (``ftlight.tasks.generation``)
    scores: torch.Tensor | None = None

    def prompted(
        self,
        predictions: torch.Tensor,
        row_ids: torch.Tensor,
        prompts: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> Prompted | None:
        """Where decoding of ``prompts`` (left-padded) continues, or None when a prompt is
        not the start of its scored row."""
        lengths = prompt_mask.sum(1)
        if not torch.equal(lengths, self.lengths):
            return None
        for row, prompt, keep in zip(row_ids, prompts, prompt_mask.bool(), strict=True):
            if not torch.equal(row[: len(prompt[keep])], prompt[keep]):
                return None
        made = self.keep[self.order].nonzero()  # (row in ``order``, position) per prediction
        table = torch.full(self.keep.shape, -1, dtype=predictions.dtype, device=predictions.device)
        table[self.order[made[:, 0]], made[:, 1]] = predictions
        first = table[torch.arange(len(lengths), device=lengths.device), lengths - 1]
        if bool((first < 0).any()):  # a prompt's last position was not scored
            return None
        column = torch.arange(self.cache.get_seq_length(), device=lengths.device) + self.offset
        rows = self.order
        valid = column[None, :] < lengths[rows, None]
        scores = self.scores[rows] if self.scores is not None else None
        return Prompted(self.cache, valid, lengths[rows], first[rows], self.opening, rows, scores)


@dataclass
class LabelledOutputs:
    """An evaluated batch reduced to its labelled positions (``evaluation_outputs``)."""

    loss: torch.Tensor | None
    predictions: torch.Tensor  # greedy next token at each labelled position
    targets: torch.Tensor  # the label there
    prompts: ScoredPrompts | None = None  # what generation can continue from
    rows: torch.Tensor | None = None  # the batch row of each labelled position
    losses: torch.Tensor | None = None  # the token loss at each labelled position


class CausalLMTask(Task):
    """Causal language modelling on prompt -> response examples.

    Evaluation reports token loss, perplexity and next-token accuracy on the response tokens;
    with ``generate`` on, it also decodes greedily from each prompt and scores the answer
    (exact match; and, when every reference is a JSON object, valid-JSON rate, record exact
    match and per-field accuracy). Decoding applies the model's ``generation_config``;
    ``generation`` overrides its settings for the run (``ftlight.tasks.generation``).
    """

    name: ClassVar[str] = "causal_lm"
    example_type: ClassVar[type] = SFTExample
    default_format: ClassVar[str] = "alpaca"
    peft_task_type: ClassVar[str | None] = "CAUSAL_LM"
    packable: ClassVar[bool] = True

    def __init__(
        self,
        generate: bool = True,
        max_new_tokens: int | str = "auto",
        output_format: str = "auto",
        generation: dict[str, Any] | None = None,
    ) -> None:
        if max_new_tokens != "auto" and not (
            isinstance(max_new_tokens, int) and max_new_tokens > 0
        ):
            raise ConfigError(
                f"task.max_new_tokens={max_new_tokens!r}: expected a positive integer or 'auto' "
                "(the longest evaluation reference plus a margin)"
            )
        if output_format not in ("auto", "text", "json"):
            raise ConfigError(
                f"task.output_format={output_format!r} is not one of auto, text, json"
            )
        self.generate = generate
        self.answers = GreedyAnswers(generation)
        if self.answers.overrides and not generate:
            raise ConfigError(
                f"task.generation sets {', '.join(sorted(self.answers.overrides))}, but "
                "task.generate=false: nothing is decoded. Drop the settings or set "
                "task.generate=true"
            )
        self.max_new_tokens_setting = max_new_tokens
        self.max_new_tokens = AUTO_FALLBACK if max_new_tokens == "auto" else int(max_new_tokens)
        self.output_format = output_format
        self.json_fields: list[str] | None = None
        self.tokenizer: Any = None
        self.generated_tokens = 0
        self.generation_seconds = 0.0
        #: None until the first training step finds out whether the model can project
        #: only the labelled positions onto the vocabulary (``logits_to_keep`` as a mask)
        self.sliced_loss: bool | None = None
        #: whether the model returns its head's output unchanged, so that the loss projects
        #: the hidden states itself (``speed.head_loss``); None until a training step tells
        self.head_in_loss: bool | None = None

    def auto_class(self) -> type:
        """``AutoModelForCausalLM``."""
        return AutoModelForCausalLM

    def encode(
        self,
        example: SFTExample,
        tokenizer: Any,
        max_length: int | None,
        label_ids: dict[str, int] | None = None,
        evaluation: bool = False,
    ) -> tuple[dict[str, Any], bool] | None:
        """Token ids with labels on the replies only; evaluation rows add the last prompt and
        its reference answer. None when truncation leaves no reply token."""
        enc = encode_sft(example, tokenizer, max_length)
        if enc is None:
            return None
        row: dict[str, Any] = {"input_ids": enc.input_ids, "labels": enc.labels}
        if evaluation:
            row.update(prompt_and_reference(enc.input_ids, enc.labels, tokenizer))
        return row, enc.truncated

    def text_rows(self, text: str, tokenizer: Any, window: int) -> list[dict[str, Any]]:
        """Consecutive windows of ``window`` tokens of ``text``, every token labelled."""
        ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        windows = (ids[i : i + window] for i in range(0, len(ids), window))
        return [{"input_ids": w, "labels": list(w)} for w in windows if len(w) > 1]

    def training_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the response tokens, projecting only their positions.

        Prompt tokens carry no loss, so their logits are waste: on SFT rows most of a
        sequence is prompt, and the vocabulary projection (and its float32 softmax) is a
        large share of a small model's step. The hidden states of the positions that
        predict a label go through ``lm_head`` (``logits_to_keep`` as a boolean mask, which
        ``transformers`` models accept); the loss equals the model's own. Models that do
        not take a mask fall back to their own loss, once detected. When the model returns its
        head's output unchanged, the loss projects the hidden states itself, a block of
        positions at a time (``ftlight.speed.head_loss``): the same loss, without the
        positions x vocabulary tensors autograd would keep; a model that changes its head's
        output (scaling, capping) is run again the plain way, on that step and later ones.
        """
        head = (
            plain_head(model) if self.head_in_loss is not False and self.speed.head_loss else None
        )
        if head is not None and torch.is_grad_enabled():
            with head_as_identity(head) as given:  # the loss projects (``speed.head_loss``)
                sliced = self._labelled_pass(model, inputs)
            if sliced is None:
                return super().training_loss(model, inputs)
            hidden, wanted = sliced[0].output.logits, sliced[1]
            if given and hidden is given[-1]:
                self.head_in_loss = True
                return linear_cross_entropy(hidden, head.weight, head.bias, wanted)
            # the model changed what its head returned: this step again, as it is, and so on
            self.head_in_loss = False
            del sliced, hidden
            given.clear()
        sliced = self._labelled_pass(model, inputs)
        if sliced is None:
            return super().training_loss(model, inputs)
        scored, wanted = sliced
        return nn.functional.cross_entropy(scored.output.logits.float(), wanted)

    def _labelled_pass(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        shared: int | None = None,
        opening: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        keep_cache: bool = False,
    ) -> tuple[PrefixPass, torch.Tensor] | None:
        """The pass whose logits are those of the positions that predict a label, and those
        labels; None when the model cannot project a subset of positions (then it computes
        its own loss). ``shared``/``opening``: the batch's shared opening, when already
        found (and encoded); ``keep_cache``: also return the rows' keys and values."""
        labels = inputs.get("labels")
        if (
            labels is None
            or self.sliced_loss is False
            or not self.speed.sliced_loss
            or not takes_argument(model, "logits_to_keep")
        ):
            return None
        keep = _predicting(labels)
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        if shared is None:
            shared = self._shared_length(rest, keep)
        if shared:
            scored = forward_with_shared_prefix(
                model,
                rest["input_ids"],
                rest.get("attention_mask"),
                shared,
                opening=opening,
                keep_cache=keep_cache,
                one_copy=self.speed.shared_opening,
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
            self.sliced_loss = False  # the model sliced some other way: use its own loss
            return None
        self.sliced_loss = True
        return scored, wanted

    def _shared_length(self, inputs: dict[str, Any], keep: torch.Tensor) -> int:
        """The opening every row shares, where this pass may run it once (else 0)."""
        if not self.prefix_sharing or not set(inputs) - {"labels"} <= PLAIN_INPUTS:
            return 0
        return shared_prefix_length(inputs["input_ids"], inputs.get("attention_mask"), keep)

    def evaluation_outputs(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        """Loss and greedy next-token predictions at the labelled positions only.

        The full ``(rows, length, vocabulary)`` logits of an evaluation batch are the largest
        tensor of a run (16 rows of 256 tokens over a 49k vocabulary: 800 MB in float32),
        and most of them belong to prompt tokens, which are not scored. Only the labelled
        positions are projected, and a batch with many of them (general text, where every
        token is labelled) in groups of rows holding at most ``EVAL_LOGITS`` logits: rows of
        similar length together, each group cut to its longest row.

        When generation follows (``generation_follows``), the pass keeps the rows' keys and
        values: every prompt is the start of its row, so decoding continues from them instead
        of encoding the prompts again.
        """
        labels = inputs.get("labels")
        if labels is None or self.sliced_loss is False or not self.speed.sliced_loss:
            return model(**inputs, use_cache=False)
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1)
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        keep = _predicting(labels)
        filled = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
        lengths = filled.sum(1)
        shared = self._shared_length(inputs, keep)
        if shared >= int(lengths.min()):
            shared = 0
        opening = None
        if (
            shared
            and self.speed.shared_opening
            and cascade.supports(model)
            and not torch.is_grad_enabled()
        ):
            opening = encode_opening(model, ids, shared)  # once for every group
        keep_cache = (
            self.generation_follows
            and self.generate
            and set(inputs) <= PLAIN_INPUTS | {"labels"}
            and self.speed.decode
            and can_decode(model)
        )
        order = torch.argsort(lengths, stable=True)
        per_row = keep.sum(1)[order].tolist()
        prompt_lengths = _prompt_lengths(labels)
        offset = shared if opening is not None else 0
        if keep_cache and int(prompt_lengths.min()) <= offset:
            keep_cache = False  # a prompt inside the opening: nothing of its own to continue
        prompts = None
        if keep_cache:  # each row's prompt positions, with room for the answer
            prompts = RowCache(
                model, len(order), int(prompt_lengths.max()) - offset, self.max_new_tokens
            )
        total, predictions, targets = labels.new_zeros((), dtype=torch.float32), [], []
        losses, position_rows = [], []
        first_scores: torch.Tensor | None = None
        for group in _row_groups(per_row, max(1, EVAL_LOGITS // vocab)):
            rows = order[group]
            width = int(filled[rows].any(0).nonzero().max()) + 1
            part = {k: _rows_of(v, rows, width, ids.shape) for k, v in inputs.items()}
            sliced = self._labelled_pass(model, part, shared, opening, keep_cache)
            if sliced is None:
                return model(**inputs, use_cache=False)
            scored, wanted = sliced
            logits = scored.output.logits
            part_keep = _predicting(part["labels"])
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
                first_scores = _prompt_scores(first_scores, logits, part_keep, rows, prompt_lengths)
            del sliced, scored, logits  # this group's keys and values are copied or unused
        n = sum(per_row)
        mean = total / n if n else None
        scored_prompts = None
        if prompts is not None and prompts.cache is not None:
            scored_prompts = ScoredPrompts(
                prompts.cache, offset, opening, prompt_lengths, keep, order, first_scores
            )
        return LabelledOutputs(
            mean,
            torch.cat(predictions),
            torch.cat(targets),
            scored_prompts,
            torch.cat(position_rows),
            torch.cat(losses) if losses else total.new_zeros(0),
        )

    def configure(self, tokenizer: Any, references: list[str]) -> None:
        """Bind the tokenizer; size generation and pick the scoring from the references.

        With ``max_new_tokens: auto`` generation stops ``AUTO_MARGIN`` tokens past the longest
        reference: an answer longer than that cannot match, and a base model that rambles
        does not cost a full fixed budget per prompt.
        """
        self.tokenizer = tokenizer
        if self.max_new_tokens_setting == "auto" and references:
            longest = max(
                len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"]
            )
            self.max_new_tokens = longest + AUTO_MARGIN
        if self.output_format == "text" or not references:
            self.json_fields = None
            return
        records = [_as_json_object(r) for r in references]
        if all(r is not None for r in records):
            fields: list[str] = []
            for r in records:
                fields.extend(k for k in r if k not in fields)
            self.json_fields = fields
        elif self.output_format == "json":
            bad = next(i for i, r in enumerate(records) if r is None)
            raise ConfigError(
                f"task.output_format=json but validation reference {bad + 1} is not a JSON "
                f"object: {references[bad][:80]!r}. Use task.output_format=text or fix the data."
            )
        else:
            self.json_fields = None

    def metrics(self) -> dict[str, Metric]:
        """Loss and token accuracy always; generation scores when ``generate`` is on."""
        metrics: dict[str, Metric] = {"loss": MeanMetric(), "token_accuracy": MeanMetric()}
        if self.generate:
            metrics["exact_match"] = MeanMetric()
            if self.json_fields:
                metrics["json"] = StructuredOutputMetric(fields=self.json_fields)
        return metrics

    def update_metrics(
        self,
        metrics: dict[str, Metric],
        batch: dict[str, Any],
        outputs: Any,
        model: nn.Module | None = None,
    ) -> None:
        """Token-weighted loss and accuracy; greedy generation when a model is passed."""
        labels = batch["labels"][:, 1:]
        if isinstance(outputs, LabelledOutputs):
            n = outputs.targets.numel()
            correct = (outputs.predictions == outputs.targets).sum()
        else:  # the model's own outputs: logits at every position
            mask = labels != IGNORE_INDEX
            n = int(mask.sum())
            correct = ((outputs.logits[:, :-1].argmax(-1) == labels) & mask).sum()
        if n > 0:
            metrics["loss"].update(outputs.loss.detach().float(), weight=n)
            metrics["token_accuracy"].update(correct.float() / n, weight=n)
        answers = None
        if model is not None and "exact_match" in metrics and "gen_input_ids" in batch:
            ids, mask = batch["gen_input_ids"], batch["gen_attention_mask"]
            prompted = None
            if isinstance(outputs, LabelledOutputs) and outputs.prompts is not None:
                prompted = outputs.prompts.prompted(
                    outputs.predictions, batch["input_ids"], ids, mask
                )
            predictions = self.generate_text(model, ids, mask, prompted)
            refs = batch["references"]
            matches = torch.tensor(
                [float(p.strip() == r.strip()) for p, r in zip(predictions, refs, strict=True)],
                device=labels.device,
            )
            metrics["exact_match"].update(matches)
            if "json" in metrics:
                metrics["json"].update(predictions, refs)
            answers = predictions
        if self.predictions is not None and "gen_input_ids" in batch:
            loss, accuracy = _row_scores(batch, outputs)
            self.predictions.add(
                answer_rows(self.tokenizer, batch, answers, loss, accuracy, self.json_fields)
            )

    @torch.no_grad()
    def generate_text(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompted: Prompted | None = None,
    ) -> list[str]:
        """Greedy answers for left-padded prompts, decoded without special tokens;
        ``prompted``: the prompts already encoded (by the scoring pass)."""
        tok = self.tokenizer
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            eos.append(gen_eos)
        elif isinstance(gen_eos, list):
            eos.extend(gen_eos)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos or [0])[0]
        start = time.perf_counter()
        new = self.answers(
            model,
            input_ids,
            attention_mask,
            self.max_new_tokens,
            eos,
            pad_id,
            prompted,
            tok,
            fast=self.speed.decode,
        )
        # every token up to and including each row's end (a pad id equal to the end id
        # would otherwise hide the end tokens)
        self.generated_tokens += _answer_tokens(new, eos, pad_id)
        self.generation_seconds += time.perf_counter() - start
        return tok.batch_decode(new, skip_special_tokens=True)

    def compute_metrics(self, metrics: dict[str, Metric]) -> dict[str, float]:
        """Adds perplexity = exp(mean token loss)."""
        out = super().compute_metrics(metrics)
        if "loss" in out:
            out["perplexity"] = math.exp(min(out["loss"], 50.0))
        return out


def _row_scores(batch: dict[str, Any], outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Each batch row's mean token loss and token accuracy over its labelled positions."""
    labels = batch["labels"]
    if isinstance(outputs, LabelledOutputs) and outputs.rows is not None:
        rows, losses = outputs.rows, outputs.losses
        right = (outputs.predictions == outputs.targets).float()
    else:  # the model's own logits at every position
        keep = labels[:, 1:] != IGNORE_INDEX
        logits = outputs.logits[:, :-1][keep].float()
        wanted = labels[:, 1:][keep]
        rows = keep.nonzero()[:, 0]
        losses = nn.functional.cross_entropy(logits, wanted, reduction="none")
        right = (logits.argmax(-1) == wanted).float()
    count = torch.zeros(len(labels), device=labels.device).index_add_(
        0, rows, torch.ones_like(right)
    )
    loss = torch.zeros_like(count).index_add_(0, rows, losses.float().to(count.device))
    correct = torch.zeros_like(count).index_add_(0, rows, right.to(count.device))
    return loss / count.clamp(min=1), correct / count.clamp(min=1)


def _row_groups(counts: list[int], limit: int) -> list[slice]:
    """Consecutive groups of rows whose ``counts`` add up to at most ``limit`` (a row over
    the limit alone)."""
    groups, start, held = [], 0, 0
    for i, count in enumerate(counts):
        if i > start and held + count > limit:
            groups.append(slice(start, i))
            start, held = i, 0
        held += count
    groups.append(slice(start, len(counts)))
    return groups


def _prompt_scores(
    scores: torch.Tensor | None,
    logits: torch.Tensor,
    keep: torch.Tensor,
    rows: torch.Tensor,
    prompt_lengths: torch.Tensor,
) -> torch.Tensor:
    """``scores`` (batch rows, vocabulary; made on first use) with the float32 logits at the
    last prompt position of ``rows`` filled in from a pass that projected ``keep``."""
    if scores is None:
        scores = logits.new_zeros((len(prompt_lengths), logits.shape[-1]), dtype=torch.float32)
    at = (keep.flatten().cumsum(0) - 1).view_as(keep)  # each kept position's row in ``logits``
    last = (prompt_lengths[rows] - 1).clamp(min=0)
    lines = torch.arange(len(rows), device=keep.device)
    made = keep[lines, last]
    scores[rows[made]] = logits[at[lines, last][made]].float()
    return scores


def _predicting(labels: torch.Tensor) -> torch.Tensor:
    """``(rows, length)``: the positions whose next token is a label."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def _prompt_lengths(labels: torch.Tensor) -> torch.Tensor:
    """``(rows,)``: where each row's last reply (its last run of labels) starts; 0 for a row
    without labels."""
    labelled = labels != IGNORE_INDEX
    starts = labelled.clone()
    starts[:, 1:] &= ~labelled[:, :-1]
    columns = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    return torch.where(starts, columns, 0).amax(1)


def _rows_of(value: Any, rows: torch.Tensor, width: int, shape: torch.Size) -> Any:
    """``rows`` of a batch input; a per-token one cut to its first ``width`` columns."""
    if not torch.is_tensor(value):
        return value
    if value.shape[:2] == shape:
        return value[rows, :width]
    return value[rows]


def _answer_tokens(new: torch.Tensor, eos: list[int], pad_id: int) -> int:
    """Generated tokens of a ``(rows, steps)`` answer block: each row up to its first end
    token (included), or all of it when it never ended."""
    if new.numel() == 0:
        return 0
    ended = torch.isin(new, new.new_tensor(eos)) if eos else new == pad_id
    first_end = torch.where(ended.any(1), ended.int().argmax(1) + 1, new.shape[1])
    return int(first_end.sum())


def _as_json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None
