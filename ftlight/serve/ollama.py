"""An Ollama ``Modelfile`` for a GGUF: the run's chat template, end tokens and system prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftlight.errors import ModelError
from ftlight.serve.chat_template import ChatPieces, cut


def chat_pieces(tokenizer: Any) -> ChatPieces:
    """The tokenizer's chat template cut into pieces (``ftlight.serve.chat_template``)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ModelError(
            "the model's tokenizer has no chat template, so Ollama would not know how to "
            "prompt it: export --to gguf and prompt it with llama.cpp as the run did, or give "
            "the tokenizer a chat_template"
        )

    def render(messages: list[dict[str, str]], generate: bool) -> str:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generate
        )

    # a BOS the template writes itself is the only piece that comes once, before any turn
    bos = tokenizer.bos_token if "bos_token" in template else None
    return cut(render, bos)


def modelfile(gguf_name: str, pieces: ChatPieces, ends: tuple[str, ...], system: str | None) -> str:
    """The ``Modelfile`` text: ``FROM`` the GGUF beside it, ``TEMPLATE``, one ``PARAMETER
    stop`` per end token, greedy decoding as ftlight evaluated, and ``SYSTEM`` when given."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{_quoted(pieces.ollama_template())}"""']
    lines += [f"PARAMETER stop {json.dumps(end)}" for end in dict.fromkeys(ends)]
    lines.append("PARAMETER temperature 0")
    if system is not None:
        lines.append(f'SYSTEM """{_quoted(system)}"""')
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    """Text inside a Modelfile's triple quotes, which cannot hold three quotes in a row."""
    if '"""' in text:
        raise ModelError(
            'the chat template or system prompt holds """, which a Modelfile cannot quote; '
            "write the Modelfile by hand"
        )
    return text


def run_system(pieces: ChatPieces, prompts: list[str]) -> str | None:
    """The system prompt every one of the run's prompts starts with (None: none, or each row
    its own)."""
    found = {pieces.system_of(prompt) for prompt in prompts}
    return found.pop() if len(found) == 1 else None


def create_command(name: str, folder: Path) -> str:
    """The command that imports the export into Ollama."""
    return f"cd {folder} && ollama create {name} -f Modelfile"
