"""Formats: turn one raw record (a dict from a data file) into an SFT or classification example."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ftlight.errors import ConfigError, DataError


@dataclass(frozen=True)
class SFTExample:
    """A conversation to fine-tune on; `raw=True` means plain prompt + completion, no template."""

    messages: list[dict[str, str]]
    raw: bool = False


@dataclass(frozen=True)
class ClassificationExample:
    """A text (or text pair) with its label, still as written in the data."""

    text: str
    label: str | int
    text_pair: str | None = None


ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
}
"""Role names found in chat datasets (lower-cased) and the role ftlight uses for each."""


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_text(value: Any) -> str | None:
    """Return value as a string, or None when it is missing (None or NaN)."""
    if _is_missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
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
        text = _as_text(value)
        if text is None and not _is_missing(value):
            raise DataError(
                f"{where}: field '{field}' ({role}) is a {type(value).__name__}, expected text. "
                f"Store plain text in '{field}' or map another column with "
                f"data.fields.{role}_field=<column>."
            )
        if required and (text is None or not text.strip()):
            raise self._missing(record, where, role, field)
        return text


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


class Chat(Format):
    """Conversations: OpenAI {role, content} or ShareGPT {from, value} message lists."""

    name = "chat"
    example_type = SFTExample

    def __init__(self, messages_field: str = "messages") -> None:
        self.messages_field = messages_field

    def parse(self, record: dict[str, Any], where: str) -> SFTExample:
        """Normalise roles and contents; the conversation must end with an assistant reply."""
        field = self.messages_field
        if field not in record and field == "messages" and "conversations" in record:
            field = "conversations"
        raw = record.get(field)
        if _is_missing(raw) or (isinstance(raw, str) and not raw.strip()):
            raise self._missing(record, where, "messages", field)
        messages = [
            self._message(item, where, number)
            for number, item in enumerate(self._as_list(raw, where, field), start=1)
        ]
        if not messages:
            raise DataError(f"{where}: '{field}' is an empty list; a conversation needs turns.")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise DataError(
                f"{where}: the conversation has no assistant message with content, so there is "
                "nothing to learn. Add the assistant reply or drop the row."
            )
        if messages[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: the conversation ends with a '{messages[-1]['role']}' message "
                f"(message {len(messages)}); it must end with the assistant reply to learn. "
                "Remove the trailing turn(s) or add the assistant's answer."
            )
        if not messages[-1]["content"].strip():
            # the last reply is what evaluation scores: an empty reference matches anything
            raise DataError(
                f"{where}: the final assistant message (message {len(messages)}) is empty; it "
                "is the answer the model learns and is scored against. Write the reply or drop "
                "the row."
            )
        return SFTExample(messages=messages)

    def _as_list(self, raw: Any, where: str, field: str) -> list[Any]:
        if isinstance(raw, str):
            # CSV cells hold the message list as JSON text.
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{where}: field '{field}' is text but not valid JSON ({err.msg}); expected "
                    'a list like [{"role": "user", "content": "..."}, ...].'
                ) from err
        if hasattr(raw, "tolist") and not isinstance(raw, list):
            raw = raw.tolist()  # numpy arrays from pandas
        if not isinstance(raw, list):
            raise DataError(
                f"{where}: field '{field}' is a {type(raw).__name__}, expected a list of "
                'messages like [{"role": "user", "content": "..."}, ...].'
            )
        return raw

    def _message(self, item: Any, where: str, number: int) -> dict[str, str]:
        if not isinstance(item, dict):
            raise DataError(
                f"{where}: message {number} is a {type(item).__name__}, expected an object "
                'like {"role": "user", "content": "..."}.'
            )
        if "role" in item or "content" in item:
            role, content = item.get("role"), item.get("content")
        elif "from" in item or "value" in item:
            role, content = item.get("from"), item.get("value")
        else:
            raise DataError(
                f"{where}: message {number} has keys {sorted(item)}; expected role/content "
                "(OpenAI) or from/value (ShareGPT)."
            )
        role_key = role.strip().lower() if isinstance(role, str) else None
        if role_key not in ROLE_ALIASES:
            raise DataError(
                f"{where}: message {number} has role {role!r}; accepted roles (any case): "
                f"{', '.join(ROLE_ALIASES)}. Rename the role in the data."
            )
        return {"role": ROLE_ALIASES[role_key], "content": self._content(content, where, number)}

    def _content(self, content: Any, where: str, number: int) -> str:
        if hasattr(content, "tolist") and not isinstance(content, list):
            content = content.tolist()
        if isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, dict) and part.get("type", "text") == "text":
                    texts.append(_as_text(part.get("text")) or "")
                else:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise DataError(
                        f"{where}: message {number} has a content part of type {kind!r}; only "
                        "text parts are supported. Remove non-text parts."
                    )
            return "\n".join(texts)
        text = _as_text(content)
        if text is None and not _is_missing(content):
            raise DataError(
                f"{where}: message {number} content is a {type(content).__name__}, expected "
                "text or a list of text parts."
            )
        # Missing content (e.g. an assistant turn that only made tool calls) is empty text.
        return text or ""


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
        if _is_missing(value) or isinstance(value, str):
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
