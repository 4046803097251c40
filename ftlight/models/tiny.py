"""Tiny random models with a byte-level tokenizer built locally: no downloads, seconds to build."""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from ftlight.files import atomic_dir

TINY_ARCHS = ("llama", "bert")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_level_tokenizer(specials: list[str]) -> Tokenizer:
    """A BPE tokenizer with no merges: one token per byte, plus the special tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok


def build_tiny_tokenizer(arch: str, chat_template: bool = True) -> PreTrainedTokenizerFast:
    """The tokenizer of a tiny model: ChatML specials for llama, BERT specials for bert."""
    if arch == "llama":
        raw = _byte_level_tokenizer(["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            bos_token="<|endoftext|>" if not chat_template else None,
            eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
            pad_token="<pad>",
        )
        if chat_template:
            tok.chat_template = CHATML_TEMPLATE
        return tok
    raw = _byte_level_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build_tiny_model(root: Path, **spec: Any) -> Path:
    """Build the tiny model described by ``spec`` once; return its (cached) folder."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(root) / f"{spec['arch']}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            atomic_dir(target, lambda tmp: _write_tiny(tmp, spec))
    return target


def _write_tiny(folder: Path, spec: dict[str, Any]) -> None:
    tok = build_tiny_tokenizer(spec["arch"], spec["chat_template"])
    with torch.random.fork_rng():  # building the cache must not reseed the caller's run
        torch.manual_seed(spec["seed"])
        _build_and_save(tok, folder, spec)


def _build_and_save(tok: PreTrainedTokenizerFast, folder: Path, spec: dict[str, Any]) -> None:
    if spec["arch"] == "llama":
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=spec["hidden_size"],
            intermediate_size=spec["intermediate_size"],
            num_hidden_layers=spec["num_layers"],
            num_attention_heads=spec["num_heads"],
            num_key_value_heads=spec["num_kv_heads"],
            max_position_embeddings=spec["max_positions"],
            tie_word_embeddings=True,
            attention_bias=spec.get("bias", False),
            mlp_bias=spec.get("bias", False),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )
        model = LlamaForCausalLM(config)
    else:
        config = BertConfig(
            vocab_size=len(tok),
            hidden_size=spec["hidden_size"],
            intermediate_size=spec["intermediate_size"],
            num_hidden_layers=spec["num_layers"],
            num_attention_heads=spec["num_heads"],
            max_position_embeddings=spec["max_positions"],
            pad_token_id=tok.pad_token_id,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = BertModel(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
