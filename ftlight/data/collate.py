"""Collate encoded rows into batches: dynamic padding, sequence packing, evaluation prompts.

Packed batches carry no attention_mask: transformers (5.x) detects packing from position_ids
that restart at 0 and masks attention across sequences, but only when the model is called
without an attention_mask and without a KV cache, i.e. with `use_cache=False`. With the
default `use_cache=True` sequences silently attend to each other (tests/data/test_collate.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ftlight.data.encode import IGNORE_INDEX
from ftlight.errors import ConfigError, DataError


def _check_pad_id(pad_token_id: int | None) -> None:
    if not isinstance(pad_token_id, int):
        raise ConfigError(
            f"pad_token_id={pad_token_id!r}: the tokenizer has no pad token. Set one, e.g. "
            "tokenizer.pad_token = tokenizer.eos_token (the padding is never attended to or "
            "learned, so reusing eos is safe)."
        )


def _round_up(length: int, multiple: int | None) -> int:
    return length if not multiple else math.ceil(length / multiple) * multiple


class PadCollator:
    """Pad rows to the longest row in the batch (rounded up to ``pad_to_multiple_of``, not past
    ``max_length``) and build attention masks."""

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        label_pad: int = IGNORE_INDEX,
        max_length: int | None = None,
    ) -> None:
        _check_pad_id(pad_token_id)
        if padding_side not in ("right", "left"):
            raise ConfigError(f"padding_side={padding_side!r}; expected 'right' or 'left'.")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ConfigError(f"pad_to_multiple_of={pad_to_multiple_of} must be >= 1 or None.")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad = label_pad
        self.max_length = max_length  # rounding up stops here (the longest row may not)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Return input_ids, attention_mask, labels (and token_type_ids) as tensors."""
        if not rows:
            raise ValueError("PadCollator got an empty batch")
        longest = max(len(row["input_ids"]) for row in rows)
        length = _round_up(longest, self.pad_to_multiple_of)
        if self.max_length is not None:
            length = max(longest, min(length, self.max_length))
        batch = {
            "input_ids": self._pad([row["input_ids"] for row in rows], self.pad_token_id, length),
            "attention_mask": self._pad([[1] * len(row["input_ids"]) for row in rows], 0, length),
        }
        if "labels" in rows[0]:
            batch["labels"] = self._pad([row["labels"] for row in rows], self.label_pad, length)
        elif "label" in rows[0]:
            batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        if rows[0].get("token_type_ids") is not None:
            batch["token_type_ids"] = self._pad([row["token_type_ids"] for row in rows], 0, length)
        return batch

    def _pad(self, sequences: list[Sequence[int]], value: int, length: int) -> torch.Tensor:
        out = torch.full((len(sequences), length), value, dtype=torch.long)
        for i, seq in enumerate(sequences):
            if not seq:
                continue
            values = torch.as_tensor(seq, dtype=torch.long)
            if self.padding_side == "right":
                out[i, : len(seq)] = values
            else:
                out[i, length - len(seq) :] = values
        return out


def pack_rows(rows: Sequence[dict[str, Any]] | Sequence[int], max_length: int) -> list[list[int]]:
    """Group row indices into bins of total length <= max_length (first-fit decreasing)."""
    lengths = [row if isinstance(row, int) else len(row["input_ids"]) for row in rows]
    for index, length in enumerate(lengths):
        if length > max_length:
            raise DataError(
                f"row {index + 1} has {length} tokens, more than the packing length "
                f"{max_length}; encode with max_length <= {max_length} before packing."
            )
    # Longest first, ties by index, so the result depends only on the lengths.
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free = _FreeSpace(len(lengths), max_length)
    for index in order:
        slot = free.first_fit(lengths[index])
        if slot == len(bins):
            bins.append([])
        bins[slot].append(index)
        free.take(slot, lengths[index])
    return bins


class _FreeSpace:
    """Segment tree over bins' free space: leftmost bin that fits, in O(log n)."""

    def __init__(self, slots: int, capacity: int) -> None:
        self.size = 1
        while self.size < max(slots, 1):
            self.size *= 2
        self.tree = [capacity] * (2 * self.size)

    def first_fit(self, need: int) -> int:
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= need else 2 * node + 1
        return node - self.size

    def take(self, slot: int, amount: int) -> None:
        node = slot + self.size
        self.tree[node] -= amount
        while node > 1:
            node //= 2
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])


class PackCollator:
    """Concatenate each pack of SFT rows into one row with position_ids restarting per row."""

    def __init__(self, max_length: int, pad_token_id: int) -> None:
        _check_pad_id(pad_token_id)
        self.max_length = max_length
        self.pad_token_id = pad_token_id

    def __call__(
        self, packs: Sequence[Sequence[dict[str, Any]] | dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Return input_ids, labels and position_ids for a batch of packs (a row is a pack of 1)."""
        if not packs:
            raise ValueError("PackCollator got an empty batch")
        built = [self._pack([p] if isinstance(p, dict) else list(p)) for p in packs]
        length = max(len(ids) for ids, _, _ in built)
        batch = {
            key: torch.full((len(built), length), fill, dtype=torch.long)
            for key, fill in (("input_ids", self.pad_token_id), ("labels", IGNORE_INDEX))
        }
        batch["position_ids"] = torch.zeros((len(built), length), dtype=torch.long)
        for i, (ids, labels, positions) in enumerate(built):
            pad = length - len(ids)
            batch["input_ids"][i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            batch["labels"][i, : len(ids)] = torch.tensor(labels, dtype=torch.long)
            # Padding restarts at 0 too: it is its own "sequence", which nothing attends to.
            batch["position_ids"][i] = torch.tensor(positions + list(range(pad)))
        # Real (non-padding) tokens, for throughput: packed batches carry no attention mask.
        batch["num_tokens"] = torch.tensor(sum(len(ids) for ids, _, _ in built))
        return batch

    def _pack(self, rows: list[dict[str, Any]]) -> tuple[list[int], list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for row in rows:
            row_ids = list(row["input_ids"])
            row_labels = list(row["labels"])
            if len(row_labels) != len(row_ids):
                raise DataError("a row's labels and input_ids differ in length")
            if row_ids:
                # HF shifts labels: the first label would be predicted from the previous row.
                row_labels[0] = IGNORE_INDEX
            ids += row_ids
            labels += row_labels
            positions += range(len(row_ids))
        if len(ids) > self.max_length:
            raise DataError(
                f"a pack holds {len(ids)} tokens, more than max_length={self.max_length}; "
                "build packs with pack_rows(rows, max_length)."
            )
        return ids, labels, positions


class EvalCollator:
    """Pads rows for the loss and, for SFT rows, left-pads their prompts for generation."""

    def __init__(self, pad: Any) -> None:
        self.pad = pad

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Collate a list of encoded rows."""
        keep = ("input_ids", "labels", "label", "token_type_ids")
        batch = self.pad([{k: r[k] for k in keep if k in r} for r in rows])
        if rows and "prompt_ids" in rows[0]:
            width = max(len(r["prompt_ids"]) for r in rows)
            pad_id = self.pad.pad_token_id
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                n = len(r["prompt_ids"])
                ids[i, width - n :] = torch.tensor(r["prompt_ids"])
                mask[i, width - n :] = 1
            batch["gen_input_ids"] = ids
            batch["gen_attention_mask"] = mask
            batch["references"] = [r["reference"] for r in rows]
        return batch
