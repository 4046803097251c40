"""Validation rows that are copies of training rows: they make the scores after training lie."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("ftlight.data")

SHOWN = 5
"""How many copied rows the log and ``metrics.json`` name."""


def find_overlap(train: list[tuple[str, Any]], validation: list[tuple[str, Any]]) -> dict[str, Any]:
    """How many validation examples equal a training example, and the first few pairs; a
    warning is logged when there are any."""
    first_in_train: dict[str, str] = {}
    for where, example in train:
        first_in_train.setdefault(repr(example), where)
    copies = [
        (where, first_in_train[key])
        for where, example in validation
        if (key := repr(example)) in first_in_train
    ]
    overlap = {
        "count": len(copies),
        "validation_rows": len(validation),
        "first": [f"{val} = {tr}" for val, tr in copies[:SHOWN]],
    }
    if copies:
        log.warning(
            "%d of %d validation rows are copies of training rows (%s%s): their scores after "
            "training measure memory, not learning. Remove them from one of the files.",
            len(copies),
            len(validation),
            "; ".join(overlap["first"]),
            "; ..." if len(copies) > SHOWN else "",
        )
    return overlap
