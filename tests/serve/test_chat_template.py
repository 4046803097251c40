"""Chat templates cut into pieces and written as Ollama templates, on real template shapes."""

from __future__ import annotations

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ftlight.errors import ModelError
from ftlight.models.tiny import CHATML_TEMPLATE
from ftlight.serve.chat_template import cut
from ftlight.testing.zoo import GEMMA_TEMPLATE, LLAMA3_TEMPLATE, MISTRAL_TEMPLATE

# SmolLM2-Instruct's template: ChatML with a default system message
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma's own: no system role; a system message is folded into the first user turn
GEMMA_FOLDED_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for m in loop_messages %}{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + m['content'] | trim "
    "+ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# numbers its turns: no fixed piece of text opens a user turn
NUMBERED_TEMPLATE = (
    "{% for m in messages %}{{ 'Turn ' ~ loop.index ~ ' ' ~ m['role'] ~ ': ' ~ m['content'] "
    "~ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)

BOS = {"<|begin_of_text|>": LLAMA3_TEMPLATE, "<bos>": GEMMA_TEMPLATE, "<s>": MISTRAL_TEMPLATE}

CONVERSATIONS = [
    [{"role": "user", "content": "Where is order #K12345?"}],
    [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": '{"ok": true}'},
        {"role": "user", "content": "And now?"},
    ],
]


def renderer(template: str, bos: str = "", eos: str = "</s>"):
    """A chat template rendered as ``transformers`` renders it."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    compiled = env.from_string(template)

    def render(messages, generate):
        return compiled.render(
            messages=messages, add_generation_prompt=generate, bos_token=bos, eos_token=eos
        )

    return render


@pytest.mark.parametrize(
    ("template", "bos"),
    [
        (CHATML_TEMPLATE, None),
        (SMOLLM2_TEMPLATE, None),
        (LLAMA3_TEMPLATE, "<|begin_of_text|>"),
        (GEMMA_TEMPLATE, "<bos>"),
        (MISTRAL_TEMPLATE, "<s>"),
    ],
)
def test_pieces_rebuild_every_conversation(template: str, bos: str | None) -> None:
    render = renderer(template, bos or "")
    pieces = cut(render, bos)
    for messages in CONVERSATIONS:
        for generate in (True, False):
            assert pieces.render(messages, generate) == render(messages, generate)


def test_default_system_message_is_kept_apart() -> None:
    pieces = cut(renderer(SMOLLM2_TEMPLATE))
    assert pieces.default_system == (
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert pieces.system == ("<|im_start|>system\n", "<|im_end|>\n")
    prompt = renderer(SMOLLM2_TEMPLATE)(CONVERSATIONS[1][:2], True)
    assert pieces.system_of(prompt) == "Answer in JSON."
    assert pieces.system_of(renderer(SMOLLM2_TEMPLATE)(CONVERSATIONS[0], True)) is None


def test_llama3_pieces() -> None:
    pieces = cut(renderer(LLAMA3_TEMPLATE, "<|begin_of_text|>"), "<|begin_of_text|>")
    assert pieces.head == "<|begin_of_text|>"
    assert pieces.user == ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>")
    assert pieces.assistant[0] == "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_a_system_message_folded_into_the_user_turn_gets_no_system_piece() -> None:
    pieces = cut(renderer(GEMMA_FOLDED_TEMPLATE, "<bos>"), "<bos>")
    assert pieces.system is None
    assert pieces.user == ("<start_of_turn>user\n", "<end_of_turn>\n")
    assert "system" not in pieces.ollama_template()


def test_a_template_that_numbers_its_turns_is_refused() -> None:
    with pytest.raises(ModelError, match="cannot be translated into an Ollama TEMPLATE"):
        cut(renderer(NUMBERED_TEMPLATE))


def test_a_template_that_fails_is_refused_with_its_error() -> None:
    broken = "{{ raise('no') }}"
    with pytest.raises(ModelError, match="it fails on"):
        cut(renderer(broken))


def test_chatml_as_an_ollama_template() -> None:
    template = cut(renderer(CHATML_TEMPLATE)).ollama_template()
    assert template == (
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        "{{ if $last }}<|im_start|>assistant\n{{ end }}"
        '{{ else if eq .Role "assistant" }}{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}'
        "{{ end }}{{ end }}"
    )


def test_braces_in_a_template_stay_literal_in_go() -> None:
    template = (
        "{% for m in messages %}{{ '{{' + m['role'] + '}} ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '{{assistant}} ' }}{% endif %}"
    )
    go = cut(renderer(template)).ollama_template()
    assert '{{ "{{" }}user}} {{ .Content }}' in go
