"""Render a tokenizer's chat template under a time limit, with the conversation's tool calls.

transformers renders templates in a sandboxed jinja2 environment, which stops a template from
reaching outside but not from looping: two nested ``range(100000)`` loops would hang the run.
Each render here gets ``TIME_LIMIT_S`` seconds, then fails with an error naming the template.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ftlight.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TIME_LIMIT_S = 5.0
"""Seconds one render may take; a real template renders a long conversation in milliseconds."""


class _OutOfTime(BaseException):
    """Raised inside a render that ran past its limit; a BaseException, so that code which
    catches a template's own errors (``except Exception``) lets it through."""


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    generation: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The template's text for ``messages``; a render past ``TIME_LIMIT_S`` is a DataError."""
    extra = {"tools": tools} if tools else {}
    try:
        with time_limit(TIME_LIMIT_S):
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation, **extra
            )
    except _OutOfTime:
        raise DataError(
            f"the chat template of '{_name(tokenizer)}' did not finish rendering a "
            f"{len(messages)}-message conversation within the limit of {TIME_LIMIT_S:g} s (it "
            "loops too long). Fix the template (chat_template.jinja or 'chat_template' in "
            "tokenizer_config.json of the model folder), or use data.format=prompt_completion, "
            "which needs no template."
        ) from None
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}")
    return text


def check_tool_support(tokenizer: PreTrainedTokenizerBase, calls: dict[int, Any]) -> None:
    """Refuse tool calls that the template would drop (it never reads ``tool_calls``)."""
    if not calls:
        return
    number = min(calls) + 1
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise DataError(
            f"message {number} is a tool call, but the tokenizer of '{_name(tokenizer)}' "
            "has no chat template to render tool calls with; without one the turn would be "
            "trained as an empty reply. Use a model whose chat template supports tools, or "
            "drop the rows with tool calls."
        )
    if "tool_calls" not in str(template):
        raise DataError(
            f"message {number} is a tool call, but the chat template of "
            f"'{_name(tokenizer)}' has no tool-call support (it never reads a message's "
            "tool_calls), so the call would be trained as an empty reply. Use a model whose "
            "chat template renders tool calls, or drop the rows with tool calls."
        )


def _name(tokenizer: PreTrainedTokenizerBase) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``_OutOfTime`` inside the block once it has run ``seconds``."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        with _alarm(seconds):
            yield
    else:  # signals reach only the main thread: elsewhere, a (slower) trace function checks
        with _traced(seconds):
            yield


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def out_of_time(signum: int, frame: Any) -> None:
        raise _OutOfTime

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, out_of_time)
    pending, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if pending:  # someone else's alarm was set: give it back what is left of its time
            left = pending - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), interval)


@contextlib.contextmanager
def _traced(seconds: float) -> Iterator[None]:
    deadline = time.monotonic() + seconds
    previous = sys.gettrace()

    def check(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _OutOfTime
        return check

    sys.settrace(check)
    try:
        yield
    finally:
        sys.settrace(previous)
