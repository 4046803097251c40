"""Tokenised splits are cached on disk by content: hits skip tokenisation, changes miss."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ftlight.data import cache
from ftlight.data.datamodule import FineTuneData
from ftlight.data.sources import local_files
from ftlight.tasks import CausalLMTask

ROWS = [
    {"instruction": "Name the colour", "input": f"the cat number {i} is red", "output": "red"}
    for i in range(9)
] + [  # long rows, cut by max_length=150 (one token per byte)
    {"instruction": "Name the colour", "input": "the dog is red " * 12, "output": "red"}
    for _ in range(3)
]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("FTLIGHT_CACHE", str(folder))
    return folder / "tokenized"


def _prepare(path: Path, tokenizer, **kwargs) -> FineTuneData:
    data = local_files(train_path=str(path), format="alpaca", **kwargs)
    data.bind(tokenizer, CausalLMTask())
    data.prepare()
    return data


def _no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("tokenised again instead of reading the cache")

    monkeypatch.setattr(FineTuneData, "_encode", fail)


def test_second_run_reads_the_cache(data_file, cache_dir, chatml_tokenizer, monkeypatch):
    first = _prepare(data_file, chatml_tokenizer)
    assert len(list(cache_dir.glob("*.npz"))) == 1
    _no_encoding(monkeypatch)
    second = _prepare(data_file, chatml_tokenizer)
    assert second.encoded == first.encoded
    assert second.stats == first.stats
    assert second.encoded["train"] and second.encoded["validation"]


@pytest.mark.parametrize(
    "change",
    ["row", "max_length", "tokenizer"],
)
def test_anything_that_changes_the_encoding_misses(
    data_file, cache_dir, chatml_tokenizer, change, monkeypatch
):
    _prepare(data_file, chatml_tokenizer)
    kwargs = {}
    if change == "row":
        rows = [*ROWS[:-1], {**ROWS[-1], "output": "blue"}]
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif change == "max_length":
        kwargs["max_length"] = 400
    else:
        chatml_tokenizer.chat_template = chatml_tokenizer.chat_template.replace("helpful", "terse")
    data = _prepare(data_file, chatml_tokenizer, **kwargs)
    assert len(list(cache_dir.glob("*.npz"))) == 2  # a new entry beside the first
    assert data.encoded["train"]


def test_truncation_is_reported_on_a_hit_too(data_file, cache_dir, chatml_tokenizer, caplog):
    _prepare(data_file, chatml_tokenizer, max_length=150)
    with caplog.at_level(logging.WARNING, logger="ftlight"):
        data = _prepare(data_file, chatml_tokenizer, max_length=150)
    stats = data.stats["train"]
    assert stats["truncated"] + stats["dropped"] > 0
    assert "were truncated" in caplog.text


def test_a_corrupt_entry_is_rebuilt(data_file, cache_dir, chatml_tokenizer, caplog):
    first = _prepare(data_file, chatml_tokenizer)
    (entry,) = cache_dir.glob("*.npz")
    entry.write_bytes(b"not an npz file")
    with caplog.at_level(logging.WARNING, logger="ftlight"):
        again = _prepare(data_file, chatml_tokenizer)
    assert "unreadable" in caplog.text
    assert again.encoded == first.encoded
    assert cache.load(cache_dir, entry.stem) is not None  # rewritten whole


def test_cache_off_writes_nothing(data_file, cache_dir, chatml_tokenizer):
    _prepare(data_file, chatml_tokenizer, cache_tokenized=False)
    assert not cache_dir.exists()


def test_no_temp_files_are_left(data_file, cache_dir, chatml_tokenizer):
    _prepare(data_file, chatml_tokenizer)
    names = sorted(p.name for p in cache_dir.iterdir())
    assert [n.rsplit(".", 1)[1] for n in names] == ["json", "npz"]


def test_arrays_that_do_not_match_their_hash_are_rebuilt(
    data_file, cache_dir, chatml_tokenizer, caplog
):
    """Another entry's arrays (a valid file, the wrong content) fail the sha256 check."""
    first = _prepare(data_file, chatml_tokenizer)
    (entry,) = cache_dir.glob("*.npz")
    other = {"train/input_ids": np.arange(3), "train/input_ids.offsets": np.array([0, 3])}
    np.savez(entry, **other)
    with caplog.at_level(logging.WARNING, logger="ftlight"):
        again = _prepare(data_file, chatml_tokenizer)
    assert "sha256" in caplog.text
    assert again.encoded == first.encoded


@pytest.mark.parametrize("meta", [b"{not json", b"[]", b'{"format": "ftlight-tokenized/2"}'])
def test_a_foreign_json_is_rebuilt(data_file, cache_dir, chatml_tokenizer, caplog, meta):
    first = _prepare(data_file, chatml_tokenizer)
    (entry,) = cache_dir.glob("*.json")
    entry.write_bytes(meta)
    with caplog.at_level(logging.WARNING, logger="ftlight"):
        again = _prepare(data_file, chatml_tokenizer)
    assert "unreadable" in caplog.text
    assert again.encoded == first.encoded
    assert json.loads(entry.read_text())["key"] == entry.stem  # rewritten whole
