"""Class labels of a classification data set: their names, order and ids."""

from __future__ import annotations

from typing import Any

from ftlight.errors import DataError
from ftlight.tasks.base import LabelInfo, label_key


def label_info(
    examples: dict[str, list[tuple[str, Any]]], names: list[str] | None = None
) -> LabelInfo:
    """The classes: ``names`` when given, else those of the training split (sorted, numerically
    when every label is a number); every split's labels must be among them."""
    if names:
        info = LabelInfo(names=list(names))
    else:
        seen = sorted({label_key(ex.label) for _, ex in examples["train"]})
        if all(_is_int(n) for n in seen):
            seen.sort(key=int)
        info = LabelInfo(names=seen)
    known = set(info.names)
    for rows in examples.values():
        for where, ex in rows:
            if label_key(ex.label) not in known:
                raise DataError(
                    f"{where}: label {ex.label!r} is not one of the model's labels "
                    f"({', '.join(info.names)}), which come from the training data (or "
                    "data.label_names). Fix the label or add training rows with it."
                )
    return info


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
