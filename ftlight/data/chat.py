"""The chat format: OpenAI ``messages`` and ShareGPT ``conversations`` with their role names."""

from __future__ import annotations

import json
from typing import Any

from ftlight.data.examples import Format, SFTExample, as_text, is_missing
from ftlight.errors import DataError

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
    "function_call": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
"""Role names found in chat datasets (lower-cased) and the role ftlight uses for each."""


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
        if is_missing(raw) or (isinstance(raw, str) and not raw.strip()):
            raise self._missing(record, where, "messages", field)
        items = self._as_list(raw, where, field)
        messages = [self._message(item, where, number) for number, item in enumerate(items, 1)]
        calls = {
            number - 1: found
            for number, item in enumerate(items, 1)
            if (found := self._tool_calls(item, where, number))
        }
        untrained = tuple(
            number - 1
            for number, item in enumerate(items, 1)
            if messages[number - 1]["role"] == "assistant" and not _weight(item, where, number)
        )
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
        if len(messages) - 1 in untrained:
            raise DataError(
                f"{where}: the final assistant message (message {len(messages)}) has weight 0, "
                "but it is the answer the model learns and is scored against. Give it weight 1 "
                "(or no weight), or drop the row."
            )
        tools = _tools(record.get("tools"), where)
        return SFTExample(messages=messages, tool_calls=calls, tools=tools, untrained=untrained)

    def _tool_calls(self, item: Any, where: str, number: int) -> list[dict[str, Any]]:
        """The calls an assistant turn makes: OpenAI ``tool_calls`` or ``function_call``, or a
        ShareGPT ``function_call`` turn; arguments become objects, as chat templates expect."""
        if not isinstance(item, dict):
            return []
        if str(item.get("from", "")).strip().lower() == "function_call":
            return [_call(_json(item.get("value"), where, number, "function call"), where, number)]
        raw = item.get("tool_calls")
        if raw is None and isinstance(item.get("function_call"), dict):
            raw = [{"type": "function", "function": item["function_call"]}]
        if hasattr(raw, "tolist") and not isinstance(raw, list):
            raw = raw.tolist()
        if raw is None or raw == []:
            return []
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            raise DataError(
                f"{where}: message {number} has tool_calls of type {type(raw).__name__}; "
                'expected a list like [{"type": "function", "function": {"name": "...", '
                '"arguments": {...}}}].'
            )
        return [_call(c, where, number) for c in raw]

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
        if role_key == "function_call":
            content = None  # the call itself is in the example's tool_calls
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
                    texts.append(as_text(part.get("text")) or "")
                else:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise DataError(
                        f"{where}: message {number} has a content part of type {kind!r}; only "
                        "text parts are supported. Remove non-text parts."
                    )
            return "\n".join(texts)
        text = as_text(content)
        if text is None and not is_missing(content):
            raise DataError(
                f"{where}: message {number} content is a {type(content).__name__}, expected "
                "text or a list of text parts."
            )
        # Missing content (e.g. an assistant turn that only made tool calls) is empty text.
        return text or ""


def _weight(item: Any, where: str, number: int) -> bool:
    """Whether a turn is trained: ``"weight": 1`` or none; ``0`` is not; nothing else is."""
    weight = item.get("weight") if isinstance(item, dict) else None
    if weight is None:
        return True
    if isinstance(weight, int | float) and not isinstance(weight, bool) and weight in (0, 1):
        return weight == 1
    raise DataError(
        f"{where}: message {number} has weight {weight!r}; a turn is either trained (weight 1, "
        "or no weight) or not (weight 0). Set it to 0 or 1."
    )


def _json(value: Any, where: str, number: int, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{where}: message {number}'s {what} is text but not valid JSON ({err.msg}); "
            'expected an object like {"name": "...", "arguments": {...}}.'
        ) from err


def _call(call: Any, where: str, number: int) -> dict[str, Any]:
    """One tool call in the OpenAI shape, its arguments an object."""
    if not isinstance(call, dict):
        raise DataError(
            f"{where}: message {number} has a tool call of type {type(call).__name__}; expected "
            'an object like {"name": "...", "arguments": {...}}.'
        )
    if "function" not in call and "name" in call:
        call = {"type": "function", "function": call}
    function = call.get("function")
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        arguments = _json(function["arguments"], where, number, "tool call arguments")
        call = {**call, "function": {**function, "arguments": arguments}}
    return call


def _tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """The function schemas a conversation offers (``tools``: a list, or JSON text of one)."""
    if is_missing(value) or value == "" or value == []:
        return None
    if hasattr(value, "tolist") and not isinstance(value, list):
        value = value.tolist()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}: field 'tools' is text but not valid JSON ({err.msg}); expected a "
                "list of function schemas."
            ) from err
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise DataError(
            f"{where}: field 'tools' is {type(value).__name__}, expected a list of function "
            'schemas like [{"type": "function", "function": {"name": "...", ...}}].'
        )
    return value
