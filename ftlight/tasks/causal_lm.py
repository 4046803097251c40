"""Supervised fine-tuning of a causal LM: loss on response tokens, generation-based scoring."""

from __future__ import annotations

import json
import math
import time
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric
from transformers import AutoModelForCausalLM

from ftlight.data.encode import encode_sft, prompt_and_reference
from ftlight.data.formats import SFTExample
from ftlight.errors import ConfigError
from ftlight.evaluation.predictions import answer_rows
from ftlight.evaluation.structured import StructuredOutputMetric
from ftlight.tasks.base import Task
from ftlight.tasks.calls import LabelledOutputs
from ftlight.tasks.generation import GreedyAnswers

AUTO_MARGIN = 16  # tokens past the longest reference (end of turn, a slightly longer answer)
AUTO_FALLBACK = 128  # max_new_tokens=auto without references to size it from


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
        """Mean cross-entropy over the response tokens (prompt tokens carry no loss), as the
        run's model calls compute it (``calls``: the model's own loss, or only the labelled
        positions projected onto the vocabulary, ``ftlight.speed.calls``)."""
        return self.calls.loss(model, inputs)

    def evaluation_outputs(
        self, model: nn.Module, inputs: dict[str, Any], generating: bool = False
    ) -> LabelledOutputs:
        """Loss and greedy next-token predictions at the labelled positions; ``generating``:
        answers will be decoded from this batch, so the pass may keep what decoding reuses."""
        generating = generating and self.generate
        return self.calls.labelled(model, inputs, generating, self.max_new_tokens)

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
        n = outputs.targets.numel()
        if n > 0:
            correct = (outputs.predictions == outputs.targets).sum()
            metrics["loss"].update(outputs.loss.detach().float(), weight=n)
            metrics["token_accuracy"].update(correct.float() / n, weight=n)
        answers = None
        if model is not None and "exact_match" in metrics and "gen_input_ids" in batch:
            ids, mask = batch["gen_input_ids"], batch["gen_attention_mask"]
            predictions = self.generate_text(model, ids, mask, outputs, batch["input_ids"])
            refs = batch["references"]
            matches = torch.tensor(
                [float(p.strip() == r.strip()) for p, r in zip(predictions, refs, strict=True)],
                device=outputs.targets.device,
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
        scored: LabelledOutputs | None = None,
        row_ids: torch.Tensor | None = None,
    ) -> list[str]:
        """Greedy answers for left-padded prompts, decoded without special tokens;
        ``scored``: the scoring pass of the rows (``row_ids``) these prompts start, which a
        decoder may continue from."""
        tok = self.tokenizer
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            eos.append(gen_eos)
        elif isinstance(gen_eos, list):
            eos.extend(gen_eos)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos or [0])[0]
        start = time.perf_counter()
        new = self.calls.generate(
            self.answers,
            model,
            input_ids,
            attention_mask,
            self.max_new_tokens,
            eos,
            pad_id,
            tok,
            scored,
            row_ids,
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


def _row_scores(
    batch: dict[str, Any], outputs: LabelledOutputs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each batch row's mean token loss and token accuracy over its labelled positions."""
    labels = batch["labels"]
    rows, losses = outputs.rows, outputs.losses
    right = (outputs.predictions == outputs.targets).float()
    count = torch.zeros(len(labels), device=labels.device).index_add_(
        0, rows, torch.ones_like(right)
    )
    loss = torch.zeros_like(count).index_add_(0, rows, losses.float().to(count.device))
    correct = torch.zeros_like(count).index_add_(0, rows, right.to(count.device))
    return loss / count.clamp(min=1), correct / count.clamp(min=1)


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
