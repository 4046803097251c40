"""Counting the real (non-padding) tokens of a batch, the numerator of tokens/s and MFU."""

from __future__ import annotations

import torch

from ftlight.data.collate import PackCollator, PadCollator
from ftlight.speed.throughput import real_tokens

ROWS = [
    {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    {"input_ids": [8, 0], "labels": [8, 0]},  # 0 is also a real token (the pad id is often EOS)
]


def test_padded_batch_counts_its_mask() -> None:
    batch = PadCollator(pad_token_id=0)(ROWS)
    assert int(real_tokens(batch, 0)) == 5


def test_packed_batch_counts_what_the_collator_packed() -> None:
    batch = PackCollator(max_length=8, pad_token_id=0)(ROWS)
    assert "attention_mask" not in batch
    assert int(real_tokens(batch, 0)) == 5


def test_packed_rows_without_a_count_leave_out_the_pad_tail() -> None:
    """Two sequences (3 + 2 tokens) and a 3-token tail of pads with ignored labels."""
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 0, 0, 0, 0]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]]),
        "labels": torch.tensor([[-100, 6, 7, 8, 0, -100, -100, -100]]),
    }
    assert int(real_tokens(batch, 0)) == 5
    batch["labels"][0, -1] = 0  # a labelled last sequence is real, pads or not
    assert int(real_tokens(batch, 0)) == 8
