"""A tokenizer's Jinja chat template as Ollama's Go template.

Jinja cannot be translated statement by statement into Go's template language, but what a
chat template does to a conversation can be observed: render it with sentinel messages and
cut the text into the pieces that come before and after each role's content. Those pieces
rebuild any conversation, and become the Ollama ``TEMPLATE``. A template whose output does
not cut that way (it merges roles, or changes a turn by its position) is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ftlight.errors import ModelError

Render = Callable[[list[dict[str, str]], bool], str]
"""``render(messages, add_generation_prompt)``: the chat template applied, as text."""

_SYSTEM, _USER, _USER2 = "xSYSTEMx91", "xUSERx91", "xUSERx92"
_ANSWER, _ANSWER2 = "xASSISTANTx91", "xASSISTANTx92"


@dataclass(frozen=True)
class ChatPieces:
    """The text a chat template puts around each role's content."""

    head: str  # once, before everything (a BOS)
    user: tuple[str, str]
    assistant: tuple[str, str]  # the first part is also the generation prompt
    system: tuple[str, str] | None  # None: the template takes no system message
    default_system: str | None = None  # what the template says when given no system message

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """What the chat template renders, rebuilt from the pieces (as the Go template does,
        except that Ollama leaves a last assistant message open, to be continued)."""
        text = self.head
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            text += self.system[0] + self.default_system + self.system[1]
        for i, message in enumerate(messages):
            last = i == len(messages) - 1
            if message["role"] == "system" and self.system is not None:
                text += self.system[0] + message["content"] + self.system[1]
            elif message["role"] == "user":
                text += self.user[0] + message["content"] + self.user[1]
                if not last or add_generation_prompt:
                    text += self.assistant[0]
            elif message["role"] == "assistant":
                text += message["content"] + self.assistant[1]
        return text

    def ollama_template(self) -> str:
        """The pieces as an Ollama ``TEMPLATE`` (Go ``text/template`` over ``.Messages``)."""
        out = _go(self.head)
        if self.default_system is not None and self.system is not None:
            default = _go(self.system[0] + self.default_system + self.system[1])
            out += (
                '{{ if not (and .Messages (eq (index .Messages 0).Role "system")) }}'
                f"{default}{{{{ end }}}}"
            )
        out += "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        if self.system is not None:
            out += f'{{{{ if eq .Role "system" }}}}{_go(self.system[0])}{{{{ .Content }}}}'
            out += f"{_go(self.system[1])}{{{{ else if"
        else:
            out += "{{ if"
        out += f' eq .Role "user" }}}}{_go(self.user[0])}{{{{ .Content }}}}{_go(self.user[1])}'
        out += f"{{{{ if $last }}}}{_go(self.assistant[0])}{{{{ end }}}}"
        out += '{{ else if eq .Role "assistant" }}{{ .Content }}'
        out += f"{{{{ if not $last }}}}{_go(self.assistant[1])}{{{{ end }}}}"
        out += "{{ end }}{{ end }}"
        return out

    def system_of(self, prompt: str) -> str | None:
        """The system message a rendered prompt starts with (None: none, or the default)."""
        if self.system is None or not prompt.startswith(self.head + self.system[0]):
            return None
        rest = prompt[len(self.head + self.system[0]) :]
        end = rest.find(self.system[1] + self.user[0])
        content = rest[:end] if end >= 0 else None
        return None if content == self.default_system else content


def _go(text: str) -> str:
    """Literal text inside a Go template: only ``{{`` means something there."""
    return text.replace("{{", '{{ "{{" }}')


def cut(render: Render, bos_token: str | None = None) -> ChatPieces:
    """The ``ChatPieces`` of a chat template, checked to rebuild what it renders; a
    ``ModelError`` naming what did not fit otherwise."""
    one = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _ANSWER}]
    both = _render(render, one, False)
    prefix, rest = _split(both, _USER, "a user message")
    user_mid, after = _split(rest, _ANSWER, "an assistant answer")
    alone = _render(render, one[:1], False)
    asked = _render(render, one[:1], True)
    if not alone.startswith(prefix + _USER) or not asked.startswith(alone):
        _refuse("a user message renders otherwise alone than before an answer")
    user_post = alone[len(prefix + _USER) :]
    generation = asked[len(alone) :]
    if user_mid != user_post + generation:
        _refuse(
            f"the text between a user message and its answer ({user_mid!r}) is not the end of "
            f"a user turn ({user_post!r}) followed by the generation prompt ({generation!r})"
        )
    two = [*one, {"role": "user", "content": _USER2}, {"role": "assistant", "content": _ANSWER2}]
    longer = _render(render, two, False)
    first = prefix + _USER + user_mid + _ANSWER + after
    if not longer.startswith(first):
        _refuse("a second turn changes how the first one renders")
    user_pre, _ = _split(longer[len(first) :], _USER2, "a second user message")
    if not prefix.endswith(user_pre):
        _refuse(f"the first user turn does not end with the later turns' opening {user_pre!r}")
    head = prefix[: len(prefix) - len(user_pre)]
    pieces = ChatPieces(head, (user_pre, user_post), (generation, after), None)
    pieces = _with_system(render, pieces, bos_token)
    for messages, generate in _checks(pieces.system is not None):
        if pieces.render(messages, generate) != _render(render, messages, generate):
            _refuse(f"the pieces do not rebuild the conversation {[m['role'] for m in messages]}")
    return pieces


def _with_system(render: Render, pieces: ChatPieces, bos_token: str | None) -> ChatPieces:
    """``pieces`` with the system turn's, when the template renders one as a turn of its own."""
    messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}]
    try:
        text = render(messages, True)
    except Exception:  # a template may raise_exception() on a system message: none then
        return pieces
    if _SYSTEM not in text or _USER not in text:
        return pieces
    before, rest = text.split(_SYSTEM, 1)
    between = rest.split(_USER, 1)[0]
    if not between.endswith(pieces.user[0]):
        return pieces  # merged into the user turn: Ollama gets no system piece
    post = between[: len(between) - len(pieces.user[0])]
    if before.startswith(pieces.head):  # no default system message
        return ChatPieces(
            pieces.head, pieces.user, pieces.assistant, (before[len(pieces.head) :], post)
        )
    # the template's head holds a default system message: the head proper is a BOS at most
    head = bos_token if bos_token and before.startswith(bos_token) else ""
    pre, default = before[len(head) :], pieces.head[len(head) :]
    if not (default.startswith(pre) and default.endswith(post)):
        _refuse("the system turn and the template's default system message render otherwise")
    found = default[len(pre) : len(default) - len(post)]
    return ChatPieces(head, pieces.user, pieces.assistant, (pre, post), found)


def _checks(system: bool) -> list[tuple[list[dict[str, str]], bool]]:
    """Conversations the pieces must rebuild exactly (``system``: one with a system turn)."""
    u1, a1 = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}
    u2 = {"role": "user", "content": "Where is my order?"}
    turn = {"role": "system", "content": "You answer in JSON."}
    checks = [([u1], True), ([u1, a1], False), ([u1, a1, u2], True)]
    return [*checks, ([turn, u1, a1, u2], True)] if system else checks


def _render(render: Render, messages: list[dict[str, str]], generate: bool) -> str:
    try:
        return render(messages, generate)
    except Exception as err:  # the template's own exceptions (jinja2 errors, raise_exception)
        _refuse(f"it fails on {[m['role'] for m in messages]}: {err}")


def _split(text: str, sentinel: str, what: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        _refuse(f"{what} does not appear in the rendered text exactly once")
    before, after = text.split(sentinel)
    return before, after


def _refuse(reason: str) -> None:
    raise ModelError(
        f"the tokenizer's chat template cannot be translated into an Ollama TEMPLATE: {reason}. "
        "Export --to gguf instead (the file keeps the Jinja template, which llama.cpp applies "
        "itself), or write the Modelfile's TEMPLATE by hand"
    )
