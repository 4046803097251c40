"""Scoring generated JSON records: parsing leniency, exact numbers, DDP-safe accumulation."""

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from ftlight.errors import ConfigError, DataError
from ftlight.evaluation.structured import StructuredOutputMetric, parse_record, score_records

REF = '{"category": "billing", "priority": "high", "product": "LumaLamp", "order_id": "A12345"}'
FIELDS = ["category", "priority", "product", "order_id"]

PREDICTIONS = [
    # 1. exact
    '{"category": "billing", "priority": "high", "product": "LumaLamp", "order_id": "A12345"}',
    # 2. fenced, priority wrong
    '```json\n{"category": "billing", "priority": "low", "product": "LumaLamp", '
    '"order_id": "A12345"}\n```',
    # 3. trailing chatter after the object, order_id missing -> not valid, order_id wrong
    '{"category": "billing", "priority": "high", "product": "LumaLamp"} Hope this helps!',
    # 4. not JSON at all
    "category: billing, priority: high",
    # 5. truncated JSON
    '{"category": "billing", "priority": "high", "product": "Luma',
]
REFERENCES = [REF] * 4 + [REF.replace('"A12345"', "null")]

EXPECTED = {
    "valid_json": 2 / 5,
    "exact_match": 1 / 5,
    "field_acc/category": 3 / 5,
    "field_acc/priority": 2 / 5,
    "field_acc/product": 3 / 5,
    "field_acc/order_id": 2 / 5,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('  {"a": 1}\n', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n{"a": 1}\n```\nDone.', {"a": 1}),
        ('Answer: {"a": {"b": [1, 2]}} and {"c": 3}', {"a": {"b": [1, 2]}}),
        ('{not json} then {"a": 2}', {"a": 2}),
        ("[1, 2]", None),
        ("", None),
        ('{"a": 1', None),
    ],
)
def test_parse_record(text: str, expected: dict | None) -> None:
    assert parse_record(text) == expected


def test_score_records_exact_numbers() -> None:
    assert score_records(PREDICTIONS, REFERENCES, FIELDS) == pytest.approx(EXPECTED)


def test_fields_default_to_the_reference_keys_in_order() -> None:
    scores = score_records(PREDICTIONS, REFERENCES)
    assert list(scores) == list(EXPECTED)
    assert scores == pytest.approx(EXPECTED)


def test_only_the_chosen_fields_are_scored() -> None:
    scores = score_records(PREDICTIONS[1:3], REFERENCES[1:3], ["category", "product"])
    assert scores == {
        "valid_json": 0.5,
        "exact_match": 1.0,
        "field_acc/category": 1.0,
        "field_acc/product": 1.0,
    }


def test_values_must_match_exactly() -> None:
    scores = score_records(['{"a": "Billing", "b": null}'], ['{"a": "billing", "b": null}'])
    assert scores == {"valid_json": 1.0, "exact_match": 0.0, "field_acc/a": 0.0, "field_acc/b": 1.0}


def test_bad_inputs_are_data_errors() -> None:
    with pytest.raises(DataError, match="reference 2 is not a JSON object"):
        score_records(["{}", "{}"], ['{"a": 1}', "plain text"])
    with pytest.raises(DataError, match="got 1 predictions for 2 references"):
        score_records(["{}"], ['{"a": 1}', '{"a": 2}'])
    with pytest.raises(DataError, match="no predictions"):
        score_records([], [])


def test_metric_accumulates_batches_like_score_records() -> None:
    metric = StructuredOutputMetric(fields=FIELDS)
    metric.update(PREDICTIONS[:2], REFERENCES[:2])
    metric.update(PREDICTIONS[2:], REFERENCES[2:])
    result = metric.compute()
    assert set(result) == set(EXPECTED)
    for name, value in EXPECTED.items():
        assert isinstance(result[name], torch.Tensor)
        assert result[name].item() == pytest.approx(value)
    metric.reset()
    metric.update(PREDICTIONS[:1], REFERENCES[:1])
    assert metric.compute()["exact_match"].item() == 1.0


def test_metric_states_sum_across_ranks() -> None:
    # what DDP does at compute(): every state is reduced with "sum"
    ranks = [StructuredOutputMetric(fields=FIELDS) for _ in range(2)]
    ranks[0].update(PREDICTIONS[:3], REFERENCES[:3])
    ranks[1].update(PREDICTIONS[3:], REFERENCES[3:])
    assert set(ranks[0]._reductions.values()) == {dim_zero_sum}
    ranks[0].merge_state(ranks[1])
    result = ranks[0].compute()
    assert {k: v.item() for k, v in result.items()} == pytest.approx(EXPECTED)


def test_metric_needs_fields() -> None:
    with pytest.raises(ConfigError, match="needs the record fields"):
        StructuredOutputMetric(fields=[])
