"""The synthetic support-ticket task: deterministic, varied, and every field recoverable."""

import json
import re
from collections import Counter

import pytest

from ftlight.data import demo
from ftlight.data.demo import (
    CATEGORIES,
    FIELDS,
    INSTRUCTION,
    PRIORITIES,
    PRODUCTS,
    demo_splits,
    generate_tickets,
    to_classification_rows,
    to_sft_rows,
)
from ftlight.errors import ConfigError

ORDER = re.compile(r"order(?: number)?(?: is)?:?\s+#?([a-z]?\d{5})\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def tickets() -> list[dict]:
    return generate_tickets(2000, seed=7)


def _issue_patterns() -> list[tuple[re.Pattern, str, str]]:
    """(regex, category, default priority) for every issue sentence, typos allowed."""
    patterns = []
    for category, issues in demo._ISSUES.items():
        for template, priority in issues:
            rx = re.escape(template).replace(r"\{product\}", ".+?").replace(r"\{days\}", r"\d+")
            for word, typo in demo._TYPOS.items():
                rx = re.sub(rf"\b{re.escape(word)}\b", f"(?:{word}|{typo})", rx)
            patterns.append((re.compile(rx, re.IGNORECASE), category, priority))
    return patterns


def _decode(text: str, patterns: list[tuple[re.Pattern, str, str]]) -> dict:
    """Recover the record from the text alone, the way a model has to."""
    matches = [(c, p) for rx, c, p in patterns if rx.search(text)]
    assert len(matches) == 1, (text, matches)
    category, priority = matches[0]
    lower = text.lower()
    high = [c for c in demo._HIGH_CUES if c.lower() in lower]
    low = [c for c in demo._LOW_CUES if c.lower() in lower]
    assert len(high) + len(low) <= 1, text
    priority = "high" if high else "low" if low else priority
    found = {name for name, aliases in PRODUCTS.items() for a in aliases if a.lower() in lower}
    assert len(found) == 1, (text, found)
    ids = ORDER.findall(text)
    assert len(ids) <= 1, text
    order_id = ids[0].upper() if ids else None
    return {
        "category": category,
        "priority": priority,
        "product": found.pop(),
        "order_id": order_id,
    }


def test_same_seed_same_tickets_other_seed_other_tickets() -> None:
    assert generate_tickets(30, seed=1) == generate_tickets(30, seed=1)
    assert generate_tickets(30, seed=1) != generate_tickets(30, seed=2)
    assert generate_tickets(10, seed=1) == generate_tickets(30, seed=1)[:10]


def test_records_have_fixed_fields_and_allowed_values(tickets: list[dict]) -> None:
    for t in tickets:
        record = t["record"]
        assert tuple(record) == FIELDS
        assert record["category"] in CATEGORIES
        assert record["priority"] in PRIORITIES
        assert record["product"] in PRODUCTS
        assert record["order_id"] is None or re.fullmatch(r"[A-Z]?\d{5}", record["order_id"])


def test_every_field_is_recoverable_from_the_text(tickets: list[dict]) -> None:
    patterns = _issue_patterns()
    for t in tickets:
        assert _decode(t["text"], patterns) == t["record"], t["text"]


def test_tickets_are_varied_and_short(tickets: list[dict]) -> None:
    texts = [t["text"] for t in tickets]
    assert len(set(texts)) == len(texts)
    words = [len(x.split()) for x in texts]
    assert min(words) >= 25 and max(words) <= 70
    for field, values in [("category", CATEGORIES), ("priority", PRIORITIES)]:
        counts = Counter(t["record"][field] for t in tickets)
        assert set(counts) == set(values) and min(counts.values()) > 100
    assert {t["record"]["product"] for t in tickets} == set(PRODUCTS)
    no_order = sum(t["record"]["order_id"] is None for t in tickets)
    assert 0.3 < no_order / len(tickets) < 0.7
    assert sum(x == x.lower() for x in texts) > 100  # typed in lower case
    assert sum(bool(re.search(r"\b(teh|pls|stil|cant|doesnt)\b", x)) for x in texts) > 50
    assert sum("#" in x for x in texts) > 100 and sum("URGENT!!" in x for x in texts) > 20


def test_splits_are_disjoint_stable_and_sized() -> None:
    splits = demo_splits(train_size=300, val_size=40, test_size=50, seed=3)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "validation": 40, "test": 50}
    texts = [{t["text"] for t in rows} for rows in splits.values()]
    assert sum(map(len, texts)) == len(set().union(*texts)) == 390
    bigger = demo_splits(train_size=500, val_size=40, test_size=50, seed=3)
    assert bigger["test"] == splits["test"] and bigger["validation"] == splits["validation"]
    assert demo_splits(10, 5, 5, seed=4)["test"] != demo_splits(10, 5, 5, seed=3)["test"][:5]


def test_sft_rows_are_alpaca_with_compact_ordered_json(tickets: list[dict]) -> None:
    rows = to_sft_rows(tickets[:3])
    assert [set(r) for r in rows] == [{"instruction", "input", "output"}] * 3
    assert rows[0]["input"] == tickets[0]["text"]
    assert all(r["instruction"] == INSTRUCTION for r in rows)
    assert 25 <= len(INSTRUCTION.split()) <= 40
    for row, t in zip(rows, tickets, strict=False):
        assert json.loads(row["output"]) == t["record"]
        assert row["output"].startswith('{"category": "')
        assert list(json.loads(row["output"])) == list(FIELDS)
    record = {"category": "returns", "priority": "low", "product": "LumaLamp", "order_id": None}
    row = to_sft_rows([{"text": "x", "record": record}])[0]
    assert row["output"] == (
        '{"category": "returns", "priority": "low", "product": "LumaLamp", "order_id": null}'
    )


def test_classification_rows_carry_the_category(tickets: list[dict]) -> None:
    rows = to_classification_rows(tickets[:20])
    assert rows == [{"text": t["text"], "label": t["record"]["category"]} for t in tickets[:20]]


def test_negative_sizes_are_refused() -> None:
    with pytest.raises(ConfigError, match="must be 0 or more"):
        generate_tickets(-1, seed=0)
    with pytest.raises(ConfigError, match="validation size -2 is negative"):
        demo_splits(train_size=5, val_size=-2)
    assert generate_tickets(0, seed=0) == []
