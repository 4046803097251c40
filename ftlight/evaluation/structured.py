"""Scoring generated JSON records against reference records, field by field."""

from __future__ import annotations

import json
import re

import torch
from torch import Tensor
from torchmetrics import Metric

from ftlight.errors import ConfigError, DataError

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```", re.DOTALL)
_MISSING = object()


def parse_record(text: str) -> dict | None:
    """The first JSON object in ``text`` (code fences and trailing text allowed), else None."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def score_records(
    predictions: list[str], references: list[str], fields: list[str] | None = None
) -> dict[str, float]:
    """``valid_json``, ``exact_match`` and ``field_acc/<name>`` as fractions of the predictions.

    ``fields`` defaults to every key of the references, in first-seen order.
    """
    refs = _parse_references(references)
    if fields is None:
        fields = []
        for ref in refs:
            fields.extend(k for k in ref if k not in fields)
    if not predictions:
        raise DataError("score_records got no predictions; pass at least one prediction")
    counts = _count(predictions, refs, list(fields))
    total = counts[0]
    names = ["valid_json", "exact_match", *(f"field_acc/{f}" for f in fields)]
    return {name: value / total for name, value in zip(names, counts[1:], strict=True)}


class StructuredOutputMetric(Metric):
    """Accumulates ``score_records`` over batches and across DDP ranks (sum states)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, fields: list[str], **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not fields:
            raise ConfigError(
                "StructuredOutputMetric needs the record fields to score, e.g. "
                "fields=['category', 'priority']; got none"
            )
        self.fields = list(fields)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("valid", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("exact", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("correct", default=torch.zeros(len(self.fields)), dist_reduce_fx="sum")

    def update(self, predictions: list[str], references: list[str]) -> None:
        """Add one batch of generated texts and their reference JSON records."""
        total, valid, exact, *correct = _count(
            predictions, _parse_references(references), self.fields
        )
        self.total += total
        self.valid += valid
        self.exact += exact
        self.correct += torch.tensor(correct, dtype=self.correct.dtype, device=self.device)

    def compute(self) -> dict[str, Tensor]:
        """Fractions over everything seen so far (NaN before any prediction)."""
        out = {"valid_json": self.valid / self.total, "exact_match": self.exact / self.total}
        for i, name in enumerate(self.fields):
            out[f"field_acc/{name}"] = self.correct[i] / self.total
        return out


def _parse_references(references: list[str]) -> list[dict]:
    """Reference records; a reference that is not a JSON object is a data error."""
    refs = []
    for i, text in enumerate(references):
        record = parse_record(text) if isinstance(text, str) else None
        if record is None:
            raise DataError(
                f"reference {i + 1} is not a JSON object: {str(text)[:80]!r}. Structured "
                "scoring needs every reference answer to be a JSON record such as "
                '{"category": "billing"}; fix the data or score it as plain text.'
            )
        refs.append(record)
    return refs


def _count(predictions: list[str], refs: list[dict], fields: list[str]) -> list[int]:
    """[total, valid, exact, correct per field] for one batch."""
    if len(predictions) != len(refs):
        raise DataError(
            f"got {len(predictions)} predictions for {len(refs)} references; "
            "pass one prediction per reference"
        )
    valid = exact = 0
    correct = [0] * len(fields)
    for text, ref in zip(predictions, refs, strict=True):
        pred = parse_record(text)
        if pred is None:
            continue
        valid += all(k in pred for k in ref)
        # a field absent from both counts as right; absent from one side only, as wrong
        hits = [pred.get(k, _MISSING) == ref.get(k, _MISSING) for k in fields]
        exact += all(hits)
        for i, hit in enumerate(hits):
            correct[i] += hit
    return [len(refs), valid, exact, *correct]
