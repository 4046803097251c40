"""Class labels of a classification data set: their names, order and ids."""

from __future__ import annotations

import dataclasses
import logging
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

from ftlight.errors import ConfigError, DataError
from ftlight.tasks.base import LabelInfo, label_key

log = logging.getLogger("ftlight.data")


def label_info(
    examples: dict[str, list[tuple[str, Any]]], names: list[str] | None = None
) -> LabelInfo:
    """The classes: ``names`` when given, else those of the training split (sorted, numerically
    when every label is a number); every split's labels must be among them."""
    if names:
        for name in names:
            if not isinstance(name, str):  # class names are data: plain text, never objects
                raise DataError(
                    f"class name {name!r} is a {type(name).__name__}, expected text; give "
                    "data.label_names as a list of names, e.g. [negative, positive]"
                )
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


def canonical_label(label: Any) -> str:
    """The class a label names: invisible characters dropped, a number spelled one way."""
    text = unicodedata.normalize("NFC", str(label))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if not number.is_finite():
        return text
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def check_label_names(names: list[str]) -> None:
    """Refuse ``data.label_names`` that name one class twice (also as ``1`` and ``1.0``)."""
    first: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        key = canonical_label(name)
        if key in first:
            earlier = names[first[key] - 1]
            same = "repeats" if earlier == name else f"names the class of {earlier!r} again as"
            raise ConfigError(
                f"data.label_names={names} {same} {name!r} (items {first[key]} and {number}); "
                "every class must appear once, in id order. Remove the repeat."
            )
        first[key] = number


def merge_spellings(
    examples: dict[str, list[tuple[str, Any]]], names: list[str] | None = None
) -> dict[str, list[tuple[str, Any]]]:
    """Examples whose labels spell one class differently (``1``, ``"1.0"``; a zero-width space)
    relabelled with one spelling: the one in ``names`` when given; each merge is logged."""
    spellings: dict[str, dict[str, str]] = {}  # class -> spelling -> first row with it
    for rows in examples.values():
        for where, ex in rows:
            spellings.setdefault(canonical_label(ex.label), {}).setdefault(
                label_key(ex.label), where
            )
    named = {canonical_label(n): n for n in names or []}
    target: dict[str, str] = {}
    for key, seen in spellings.items():
        goal = named.get(key, key)
        if (key in named and set(seen) != {goal}) or len(seen) > 1:
            target.update(dict.fromkeys(seen, goal))
            how = ", ".join(f"{s!r} ({where})" for s, where in seen.items())
            log.warning(
                "labels %s are one class, %r: they differ only in how a number is written or "
                "by invisible characters. Fix the labels in the data to silence this.",
                how,
                goal,
            )
    if not target:
        return examples
    return {
        split: [(where, _relabelled(ex, target)) for where, ex in rows]
        for split, rows in examples.items()
    }


def _relabelled(example: Any, target: dict[str, str]) -> Any:
    goal = target.get(label_key(example.label))
    if goal is None or goal == label_key(example.label):
        return example
    return dataclasses.replace(example, label=goal)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
