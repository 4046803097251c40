"""Encode examples into token ids; for SFT, label only what the assistant says (-100 elsewhere).

SFT without a chat template (or `raw=True`) uses a plain layout, tokenised piece by piece:

    [bos]{system}\\n\\n### Instruction:\\n{user}\\n\\n### Response:\\n{assistant}<eos>...

Only `{assistant}<eos>` is labelled, for every assistant turn; tool turns are written like user
turns under "### Tool:". `raw=True` (prompt_completion) is simply `[bos]{prompt}{completion}<eos>`.

With a chat template, each assistant span is the text the template adds for that turn after
the generation prompt, minus trailing whitespace: for ChatML that is `{content}<|im_end|>`
(the newline the template writes after `<|im_end|>` is not labelled, so the model learns to stop
at the end-of-turn token and nothing after it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftlight.data.formats import ClassificationExample, SFTExample
from ftlight.data.template import check_tool_support, render
from ftlight.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label value the loss ignores (PyTorch cross-entropy's default ignore_index)."""

_log = logging.getLogger(__name__)
_warned_last_turn_only: set[int] = set()


@dataclass
class EncodedSFT:
    """Token ids and labels of one SFT example (labels are -100 outside assistant replies)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass
class EncodedClassification:
    """Token ids and the label id of one classification example."""

    input_ids: list[int]
    label: int
    truncated: bool
    token_type_ids: list[int] | None = None


def encode_sft(
    example: SFTExample, tokenizer: PreTrainedTokenizerBase, max_length: int | None
) -> EncodedSFT | None:
    """Encode a conversation; None when truncation to max_length leaves no labelled token."""
    _check_max_length(max_length)
    if example.raw or not getattr(tokenizer, "chat_template", None):
        check_tool_support(tokenizer, example.tool_calls)
        input_ids, labels = _encode_plain(example, tokenizer)
    else:
        input_ids, labels = _encode_with_template(example, tokenizer)
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return EncodedSFT(input_ids=input_ids, labels=labels, truncated=truncated)


def encode_classification(
    example: ClassificationExample,
    tokenizer: PreTrainedTokenizerBase,
    label_id: int,
    max_length: int | None,
) -> EncodedClassification:
    """Encode a text (or pair) with the tokenizer's special tokens, truncating to max_length."""
    _check_max_length(max_length)
    encoding = tokenizer(example.text, example.text_pair, verbose=False)
    truncated = max_length is not None and len(encoding["input_ids"]) > max_length
    if truncated:
        encoding = tokenizer(
            example.text, example.text_pair, truncation=True, max_length=max_length
        )
    token_type_ids = encoding.get("token_type_ids")
    return EncodedClassification(
        input_ids=list(encoding["input_ids"]),
        label=label_id,
        truncated=truncated,
        token_type_ids=list(token_type_ids) if token_type_ids is not None else None,
    )


def _check_max_length(max_length: int | None) -> None:
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise DataError(f"max_length={max_length!r} must be a positive integer or None.")


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _encode_plain(
    example: SFTExample, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise DataError(
            "the tokenizer has no eos_token, so the model could not learn where a reply ends. "
            "Set one (model.tokenizer.eos_token=...) or use a tokenizer with a chat template."
        )
    input_ids: list[int] = []
    labels: list[int] = []
    bos_id = tokenizer.bos_token_id
    if bos_id is not None and _tokenizer_adds_bos(tokenizer, bos_id):
        input_ids.append(bos_id)
        labels.append(IGNORE_INDEX)

    prompt = ""
    for number, message in enumerate(example.messages):
        role, content = message["role"], message["content"]
        if role == "assistant":
            if not example.raw:
                prompt += "### Response:\n"
            prompt_ids = _tokens(tokenizer, prompt)
            reply_ids = [*_tokens(tokenizer, content), eos_id]
            input_ids += prompt_ids + reply_ids
            trained = number not in example.untrained
            labels += [IGNORE_INDEX] * len(prompt_ids)
            labels += reply_ids if trained else [IGNORE_INDEX] * len(reply_ids)
            prompt = ""
        elif example.raw:
            prompt += content
        elif role == "system":
            prompt += f"{content}\n\n"
        elif role == "tool":
            prompt += f"### Tool:\n{content}\n\n"
        else:
            prompt += f"### Instruction:\n{content}\n\n"
    trailing = _tokens(tokenizer, prompt)
    return input_ids + trailing, labels + [IGNORE_INDEX] * len(trailing)


def _tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase, bos_id: int) -> bool:
    return list(tokenizer("a")["input_ids"][:1]) == [bos_id]


def _render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    generation: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    return render(tokenizer, messages, generation=generation, tools=tools)


def _template_messages(example: SFTExample) -> list[dict[str, Any]]:
    """The messages as the template reads them: each assistant turn with its tool calls."""
    return [
        {**m, "tool_calls": example.tool_calls[i]} if i in example.tool_calls else m
        for i, m in enumerate(example.messages)
    ]


def _encode_with_template(
    example: SFTExample, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"{type(tokenizer).__name__} is a slow tokenizer; labelling assistant turns needs "
            "character offsets, which only fast tokenizers give. Load the tokenizer with "
            "use_fast=True (a tokenizer.json)."
        )
    check_tool_support(tokenizer, example.tool_calls)
    messages, tools = _template_messages(example), example.tools
    try:
        full = _render(tokenizer, messages, tools=tools)
    except DataError:
        raise
    except Exception as err:  # templates raise their own exceptions (TemplateError, ...)
        raise DataError(
            f"the chat template rejected the conversation (roles {[m['role'] for m in messages]}): "
            f"{err}. Fix the conversation or set a different chat template."
        ) from err

    assistant_turns = [
        i for i, m in enumerate(messages) if m["role"] == "assistant" and i not in example.untrained
    ]
    spans = _assistant_spans(tokenizer, messages, full, assistant_turns, tools)
    if spans is None and assistant_turns:
        spans = _assistant_spans(tokenizer, messages, full, assistant_turns[-1:], tools)
        if spans is not None and id(tokenizer) not in _warned_last_turn_only:
            _warned_last_turn_only.add(id(tokenizer))
            _log.warning(
                "the chat template renders earlier turns differently once later turns follow "
                "(e.g. it drops reasoning), so only the last assistant turn is labelled."
            )
    if spans is None:
        raise DataError(
            "the chat template is not prefix-consistent: rendering the conversation up to an "
            "assistant reply (with add_generation_prompt=True) is not a prefix of rendering "
            "it with the reply, so the reply cannot be located. Use a template where adding a "
            "turn only appends text, or use data.format=prompt_completion."
        )

    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    input_ids = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]
    labels = [
        token if _inside(offsets[j], spans) else IGNORE_INDEX for j, token in enumerate(input_ids)
    ]

    eos_id = tokenizer.eos_token_id
    if eos_id is not None and messages[-1]["role"] == "assistant":
        last = [
            t for t, (s, e) in zip(input_ids, offsets, strict=True) if _inside((s, e), spans[-1:])
        ]
        if eos_id not in last:
            # what the template writes after the reply (Gemma's newline after <end_of_turn>) is
            # labelled too: the reply and its end token stay one run, the reference whole
            end = max((j + 1 for j, lab in enumerate(labels) if lab != IGNORE_INDEX), default=0)
            if end:
                labels[end:] = input_ids[end:]
            input_ids.append(eos_id)
            labels.append(eos_id)
    return input_ids, labels


def _assistant_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    full: str,
    turns: list[int],
    tools: list[dict[str, Any]] | None = None,
) -> list[tuple[int, int]] | None:
    """Character spans of the given assistant turns in `full`, or None if not prefix-consistent."""
    spans = []
    for i in turns:
        try:
            prompt = _render(tokenizer, messages[:i], generation=True, tools=tools) if i else None
            upto = _render(tokenizer, messages[: i + 1], tools=tools)
        except DataError:
            raise
        except Exception:
            return None
        if prompt is None or not upto.startswith(prompt) or not full.startswith(upto):
            return None
        start = len(prompt)
        end = start + len(upto[start:].rstrip())
        spans.append((start, end))
    return spans


def _inside(offset: Any, spans: list[tuple[int, int]]) -> bool:
    start, end = offset
    return end > start and any(s <= start and end <= e for s, e in spans)


def encode_prompt(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, raw: bool = False
) -> list[int]:
    """Token ids of a prompt laid out exactly as in training, ready for the model's answer.

    ``messages`` end with a user turn; the ids stop where the assistant's reply would start.
    """
    if getattr(tokenizer, "chat_template", None) and not raw:
        return _tokens(tokenizer, _render(tokenizer, messages, generation=True))
    # Lay out a placeholder reply the way training does, and cut where the reply starts.
    encoded = encode_sft(
        SFTExample([*messages, {"role": "assistant", "content": "x"}], raw=raw), tokenizer, None
    )
    assert encoded is not None  # nothing is truncated without max_length
    start, _ = last_reply(encoded.labels)
    return encoded.input_ids[:start]


def last_reply(labels: list[int]) -> tuple[int, int]:
    """``(start, end)`` of the last labelled run in ``labels``: the final reply of an SFT row."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start, end


def prompt_and_reference(
    input_ids: list[int], labels: list[int], tokenizer: PreTrainedTokenizerBase
) -> dict[str, Any]:
    """Split an encoded SFT row at its last reply: prompt ids to generate from, reference text."""
    start, end = last_reply(labels)
    reference = tokenizer.decode(input_ids[start:end], skip_special_tokens=True).strip()
    return {"prompt_ids": input_ids[:start], "reference": reference}
