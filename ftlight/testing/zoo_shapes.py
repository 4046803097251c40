"""What the zoo's models share: their sizes, position limits, chat templates and tokenizers."""

from __future__ import annotations

from typing import Any

from ftlight.models.tiny import CHATML_TEMPLATE
from ftlight.testing.zoo_build import TokenizerShape

LEARNED_LIMIT = 128
"""Position limit of the zoo's families with learned absolute position embeddings."""

ROTARY_LIMIT = 512
"""Position limit written in the config of the other families (nothing indexes past it)."""

#: the shape every zoo model shares: two blocks, hidden 64, four heads (two key/value heads)
_HIDDEN, _LAYERS, _HEADS, _KV, _FFN = 64, 2, 4, 2, 128
_DECODER = {
    "hidden_size": _HIDDEN,
    "num_hidden_layers": _LAYERS,
    "num_attention_heads": _HEADS,
    "num_key_value_heads": _KV,
    "intermediate_size": _FFN,
    "max_position_embeddings": ROTARY_LIMIT,
}
_ENCODER = {
    "hidden_size": _HIDDEN,
    "num_hidden_layers": _LAYERS,
    "num_attention_heads": _HEADS,
    "intermediate_size": _FFN,
    "max_position_embeddings": LEARNED_LIMIT,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
    "{{ m['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
    "{% elif m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
    "{% else %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endif %}"
    "{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
GRANITE_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|start_of_role|>' + m['role'] + '<|end_of_role|>' + m['content'] + '<|end_of_text|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}"
)


_BERT_TOK = TokenizerShape(
    ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), pad="[PAD]", encoder=True
)
_ROBERTA_TOK = TokenizerShape(
    ("<s>", "<pad>", "</s>", "<unk>", "<mask>"), pad="<pad>", encoder=True
)
_GPT2_TOK = TokenizerShape(("<|endoftext|>",), eos="<|endoftext|>", bos="<|endoftext|>")
_CHATML_TOK = TokenizerShape(
    ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    eos="<|im_end|>",
    pad="<|endoftext|>",
    chat_template=CHATML_TEMPLATE,
)
_LLAMA3_TOK = TokenizerShape(
    (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ),
    eos="<|eot_id|>",
    bos="<|begin_of_text|>",
    add_bos=True,
    chat_template=LLAMA3_TEMPLATE,
)


def _decoder(**extra: Any) -> dict[str, Any]:
    return {**_DECODER, **extra}
