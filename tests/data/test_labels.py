"""Tests for ftlight.data.labels: one class per label, however it is spelled."""

import logging

import pytest

from ftlight.data.examples import ClassificationExample
from ftlight.data.labels import check_label_names, label_info, merge_spellings
from ftlight.errors import ConfigError


def _rows(*labels):
    return [
        (f"t.jsonl row {i}", ClassificationExample("x", label)) for i, label in enumerate(labels, 1)
    ]


def test_numeric_spellings_of_one_value_are_one_class_and_the_merge_is_logged(caplog):
    examples = {"train": _rows(1, "1", "1.0", 0, "0"), "validation": _rows(" 1.00 ")}
    with caplog.at_level(logging.WARNING, logger="ftlight.data"):
        merged = merge_spellings(examples)
    assert [ex.label for _, ex in merged["train"]] == [1, "1", "1", 0, "0"]
    assert [ex.label for _, ex in merged["validation"]] == ["1"]
    assert label_info(merged).names == ["0", "1"]
    assert caplog.messages == [
        "labels '1' (t.jsonl row 1), '1.0' (t.jsonl row 3), '1.00' (t.jsonl row 1) are one "
        "class, '1': they differ only in how a number is written or by invisible characters. "
        "Fix the labels in the data to silence this."
    ]


def test_labels_that_differ_by_a_zero_width_space_are_one_class(caplog):
    examples = {"train": _rows("positive", "positive\u200b", "negative")}
    with caplog.at_level(logging.WARNING, logger="ftlight.data"):
        merged = merge_spellings(examples)
    assert label_info(merged).names == ["negative", "positive"]
    assert "'positive\\u200b' (t.jsonl row 2)" in caplog.text


def test_one_spelling_per_class_is_kept_as_written(caplog):
    examples = {"train": _rows("1.0", "2.0", "neg")}
    with caplog.at_level(logging.WARNING, logger="ftlight.data"):
        assert merge_spellings(examples) is examples
    assert caplog.messages == []


def test_data_labels_take_the_spelling_of_label_names():
    examples = {"train": _rows("1.0", "0", "pos\ufeff")}
    merged = merge_spellings(examples, ["0", "1", "pos"])
    assert [ex.label for _, ex in merged["train"]] == ["1", "0", "pos"]
    assert label_info(merged, ["0", "1", "pos"]).names == ["0", "1", "pos"]


@pytest.mark.parametrize(
    ("names", "says"),
    [
        (["neg", "pos", "neg"], "repeats 'neg' (items 1 and 3)"),
        (["0", "1", "1.0"], "names the class of '1' again as '1.0' (items 2 and 3)"),
    ],
)
def test_label_names_that_repeat_a_class_are_refused(names, says):
    with pytest.raises(ConfigError, match="Remove the repeat") as err:
        check_label_names(names)
    assert says in str(err.value)
