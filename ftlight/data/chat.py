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
    "tool": "tool",
    "function": "tool",
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
