"""``data.pad_to_multiple_of``: training batches padded to a few lengths, never past the limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftlight.data.sources import local_files
from ftlight.errors import ConfigError
from ftlight.tasks import CausalLMTask

ROWS = [  # one row of each length over 60-180 tokens (one token per byte)
    {"instruction": "Name the colour", "input": "a" * n, "output": "red"} for n in range(120)
]


def _batches(tmp_path: Path, tokenizer, position_limit: int | None = None, **kwargs) -> list[dict]:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    data = local_files(
        train_path=str(path), format="alpaca", batch_size=4, cache_tokenized=False, **kwargs
    )
    data.bind(tokenizer, CausalLMTask())
    data.prepare()
    data.position_limit = position_limit  # a run reads it from the model's config
    return list(data.train_dataloader())


def _real(batch: dict) -> list[list[int]]:
    return [
        ids[mask.bool()].tolist()
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]


@pytest.mark.parametrize("max_length", [150, 152])
def test_batches_take_multiples_up_to_the_limit(tmp_path, chatml_tokenizer, max_length) -> None:
    padded = _batches(tmp_path, chatml_tokenizer, max_length=max_length, pad_to_multiple_of=16)
    plain = _batches(tmp_path, chatml_tokenizer, max_length=max_length, pad_to_multiple_of=None)
    lengths = {b["input_ids"].shape[1] for b in padded}
    assert all(n % 16 == 0 or n == max_length for n in lengths)
    assert max(lengths) == max_length  # the longest rows are not padded past the limit
    assert len({b["input_ids"].shape[1] for b in plain}) > len(lengths)  # fewer shapes
    # the same rows in the same batches, only the padding differs
    assert [_real(b) for b in padded] == [_real(b) for b in plain]
    for a, b in zip(padded, plain, strict=True):
        extra = a["labels"][:, b["labels"].shape[1] :]
        assert (extra == -100).all()  # the extra positions are never trained on


def test_the_models_position_limit_bounds_the_padding(tmp_path, chatml_tokenizer) -> None:
    """Without ``data.max_length`` the model's positions bound the rounding: rows that fit are
    not padded past a learned position table (a run refuses rows longer than it)."""
    batches = _batches(
        tmp_path, chatml_tokenizer, max_length=None, pad_to_multiple_of=16, position_limit=150
    )
    near = [b for b in batches if 144 < int(b["attention_mask"].sum(1).max()) <= 150]
    assert near and all(b["input_ids"].shape[1] == 150 for b in near)


def test_a_bad_multiple_is_refused(tmp_path, chatml_tokenizer) -> None:
    with pytest.raises(ConfigError, match="data.pad_to_multiple_of=0 must be at least 1"):
        _batches(tmp_path, chatml_tokenizer, pad_to_multiple_of=0)
