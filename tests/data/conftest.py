"""Tiny byte-level tokenizers built locally (no downloads) for the data tests."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML as SmolLM2-Instruct writes it, default system prompt included."""


def _byte_level(specials: list[str], post: list | None = None) -> Tokenizer:
    """A BPE tokenizer without merges: one token per byte, plus the given special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.Sequence(
        [processors.ByteLevel(trim_offsets=False), *(post or [])]
    )
    tokenizer.add_special_tokens(specials)
    return tokenizer


@pytest.fixture
def byte_level():
    """Factory: a byte-level `tokenizers.Tokenizer` with the given specials and post-processors."""
    return _byte_level


@pytest.fixture
def chatml_template() -> str:
    """The ChatML template the chatml_tokenizer uses."""
    return CHATML_TEMPLATE


@pytest.fixture
def chatml_tokenizer() -> PreTrainedTokenizerFast:
    """ChatML tokenizer: eos is <|im_end|>, no bos, pad is <pad>."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level(["<|im_start|>", "<|im_end|>", "<pad>"]),
        eos_token="<|im_end|>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@pytest.fixture
def plain_tokenizer() -> PreTrainedTokenizerFast:
    """No chat template; adds <s> in front like Llama tokenizers; eos </s>."""
    post = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", 256)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level(["<s>", "</s>", "<pad>"], [post]),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    return tokenizer


@pytest.fixture
def cls_tokenizer() -> PreTrainedTokenizerFast:
    """BERT-like layout: <s> A </s> B </s> with token_type_ids 0 for A and 1 for B."""
    post = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", 256), ("</s>", 257)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level(["<s>", "</s>", "<pad>"], [post]),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
