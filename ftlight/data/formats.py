"""Formats: turn one raw record (a dict from a data file) into an SFT or classification example.

The examples and the base class live in ``ftlight.data.examples``, the chat format in
``ftlight.data.chat``; every format is registered here by its config name."""

from __future__ import annotations

import hashlib
import inspect
import math
from typing import Any

from ftlight.data.chat import ROLE_ALIASES, Chat
from ftlight.data.examples import ClassificationExample, Format, SFTExample, is_missing
from ftlight.errors import ConfigError, DataError

__all__ = [
    "ROLE_ALIASES",
    "Alpaca",
    "Chat",
    "ClassificationExample",
    "FORMATS",
    "Format",
    "PromptCompletion",
    "SFTExample",
    "TextLabel",
    "examples_digest",
    "field_names",
    "get_format",
]


class Alpaca(Format):
    """Alpaca rows: instruction, optional input and system, output."""

    name = "alpaca"
    example_type = SFTExample

    def __init__(
        self,
        instruction_field: str = "instruction",
        input_field: str = "input",
        output_field: str = "output",
        system_field: str = "system",
    ) -> None:
        self.instruction_field = instruction_field
        self.input_field = input_field
        self.output_field = output_field
        self.system_field = system_field

    def parse(self, record: dict[str, Any], where: str) -> SFTExample:
        """Build [system?, user(instruction + "\\n\\n" + input), assistant(output)]."""
        instruction = self._text(record, where, "instruction", self.instruction_field)
        output = self._text(record, where, "output", self.output_field)
        extra = self._text(record, where, "input", self.input_field, required=False)
        system = self._text(record, where, "system", self.system_field, required=False)
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        messages = [{"role": "system", "content": system}] if system and system.strip() else []
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return SFTExample(messages=messages)


class PromptCompletion(Format):
    """Plain prompt and completion text, used without any chat template."""

    name = "prompt_completion"
    example_type = SFTExample

    def __init__(self, prompt_field: str = "prompt", completion_field: str = "completion") -> None:
        self.prompt_field = prompt_field
        self.completion_field = completion_field

    def parse(self, record: dict[str, Any], where: str) -> SFTExample:
        """Build SFTExample(raw=True) with [user: prompt, assistant: completion]."""
        prompt = self._text(record, where, "prompt", self.prompt_field)
        completion = self._text(record, where, "completion", self.completion_field)
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
        return SFTExample(messages=messages, raw=True)


class TextLabel(Format):
    """Classification rows: a text (optionally a second text) and a label."""

    name = "text_label"
    example_type = ClassificationExample

    def __init__(
        self,
        text_field: str = "text",
        label_field: str = "label",
        text_pair_field: str | None = None,
    ) -> None:
        self.text_field = text_field
        self.label_field = label_field
        self.text_pair_field = text_pair_field

    def parse(self, record: dict[str, Any], where: str) -> ClassificationExample:
        """Keep integer labels as ints and strip string labels; mapping happens later."""
        text = self._text(record, where, "text", self.text_field)
        pair = None
        if self.text_pair_field is not None:
            pair = self._text(record, where, "text_pair", self.text_pair_field)
        return ClassificationExample(text=text, label=self._label(record, where), text_pair=pair)

    def _label(self, record: dict[str, Any], where: str) -> str | int:
        field = self.label_field
        value = record.get(field)
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and not math.isnan(value):
            if value.is_integer():
                return int(value)  # pandas/parquet turn int columns with gaps into floats
            raise DataError(
                f"{where}: label {value} in field '{field}' is not a class; text_label is for "
                "classification, so labels must be class names or integer ids."
            )
        if isinstance(value, str) and value.strip():
            return value.strip()
        if is_missing(value) or isinstance(value, str):
            raise self._missing(record, where, "label", field)
        raise DataError(
            f"{where}: label in field '{field}' is a {type(value).__name__}, expected a class "
            "name or an integer id."
        )


FORMATS: dict[str, type[Format]] = {
    fmt.name: fmt for fmt in (Alpaca, Chat, PromptCompletion, TextLabel)
}
"""Every format by the name used in config (data.format=<name>)."""


def field_names(name: str) -> list[str]:
    """The column settings format ``name`` takes (``data.fields.<setting>=<column>``)."""
    return [p for p in inspect.signature(FORMATS[name].__init__).parameters if p != "self"]


def get_format(name: str, **kwargs: Any) -> Format:
    """Build the format called `name`, passing field-name overrides as keyword arguments.

    Settings left null keep the format's default column, so the data config can declare every
    format's settings at once.
    """
    cls = FORMATS.get(name)
    if cls is None:
        raise ConfigError(
            f"data.format={name!r} is not a known format; available: {', '.join(FORMATS)}."
        )
    given = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(given) - set(field_names(name)))
    if unknown:
        accepted = ", ".join(f"data.fields.{k}" for k in field_names(name))
        raise ConfigError(
            f"data.fields.{unknown[0]}={given[unknown[0]]} does not apply to data.format={name}, "
            f"which reads {accepted}; remove it or pick the format that has that column."
        )
    return cls(**given)


def examples_digest(rows: list[tuple[str, SFTExample | ClassificationExample]]) -> str:
    """A short hash of parsed ``(where, example)`` rows: the same for the same rows in order."""
    digest = hashlib.sha256()
    for _, example in rows:
        digest.update(repr(example).encode())
    return digest.hexdigest()[:16]
