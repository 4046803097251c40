"""What a data format produces (examples) and the base every format shares (field access,
errors that name the file, row and column)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ftlight.errors import DataError


@dataclass(frozen=True, repr=False)
class SFTExample:
    """A conversation to fine-tune on; `raw=True` means plain prompt + completion, no template.

    ``tool_calls`` maps a message's index to the calls that assistant turn makes (OpenAI
    shape), ``tools`` are the function schemas the conversation offers, and ``untrained`` lists
    the assistant turns marked ``"weight": 0``: they stay in the prompt but are not learned.
    """

    messages: list[dict[str, str]]
    raw: bool = False
    tool_calls: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    untrained: tuple[int, ...] = ()

    def __repr__(self) -> str:
        # unset extras are left out, so rows without them keep the digest and cache key they had
        extra = "".join(
            f", {name}={getattr(self, name)!r}"
            for name in ("tool_calls", "tools", "untrained")
            if getattr(self, name)
        )
        return f"SFTExample(messages={self.messages!r}, raw={self.raw!r}{extra})"


@dataclass(frozen=True)
class ClassificationExample:
    """A text (or text pair) with its label, still as written in the data."""

    text: str
    label: str | int
    text_pair: str | None = None


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def as_text(value: Any) -> str | None:
    """Return value as a string spelled as JSON spells it, or None when it is missing."""
    if is_missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"  # the data's spelling, not Python's True
    if isinstance(value, float):
        return getattr(value, "text", None) or str(value)  # 1.50 as written (JSON readers)
    if isinstance(value, int):
        return str(value)
    return None


def _guess_format(record: dict[str, Any]) -> str | None:
    keys = set(record)
    if keys & {"messages", "conversations"}:
        return "chat"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"text", "label"} <= keys:
        return "text_label"
    return None


class Format:
    """Base class: `parse` turns one record into an example or raises DataError."""

    name: ClassVar[str] = ""
    #: the example class ``parse`` returns; a task takes the formats that produce its type
    example_type: ClassVar[type] = object

    def parse(self, record: dict[str, Any], where: str) -> SFTExample | ClassificationExample:
        """Turn one record into an example; `where` (e.g. "train.csv row 7") prefixes errors."""
        raise NotImplementedError

    def _missing(self, record: dict[str, Any], where: str, role: str, field: str) -> DataError:
        present = field in record
        what = f"field '{field}' is empty" if present else f"has no field '{field}'"
        guess = _guess_format(record)
        hint = ""
        if not present and guess and guess != self.name:
            hint = f" The row looks like the '{guess}' format: set data.format={guess}."
        return DataError(
            f"{where}: {what} (needed as the {role} by data.format={self.name}). The row has "
            f"fields {sorted(map(str, record))}.{hint} Fill in the value, pick the format that "
            f"matches your data (data.format=...), or map the column with "
            f"data.fields.{role}_field=<column>."
        )

    def _text(
        self, record: dict[str, Any], where: str, role: str, field: str, required: bool = True
    ) -> str | None:
        value = record.get(field)
        # a nested object (a structured answer) is trained on as the JSON text it was written as
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else as_text(value)
        if text is None and not is_missing(value):
            raise DataError(
                f"{where}: field '{field}' ({role}) is a {type(value).__name__}, expected text. "
                f"Store plain text in '{field}' or map another column with "
                f"data.fields.{role}_field=<column>."
            )
        if required and (text is None or not text.strip()):
            raise self._missing(record, where, role, field)
        return text
