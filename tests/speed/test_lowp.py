"""Frozen linears kept in bf16 compute exactly what autocast computes from fp32 weights."""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from ftlight.speed.lowp import cast_frozen_linears


def _tiny_lora() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))


def test_cast_is_exact_under_autocast_and_skips_tied_and_trainable() -> None:
    model = _tiny_lora()
    ref = copy.deepcopy(model)
    n = cast_frozen_linears(model, torch.bfloat16)
    # 7 frozen base linears per block x 2 blocks; the tied LM head and LoRA A/B stay fp32
    assert n == 14
    base = model.get_base_model()
    assert base.lm_head.weight.dtype == torch.float32
    assert base.model.embed_tokens.weight.dtype == torch.float32
    q = base.model.layers[0].self_attn.q_proj
    assert q.base_layer.weight.dtype == torch.bfloat16
    assert q.lora_A["default"].weight.dtype == torch.float32
    x = torch.randint(0, 64, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = model(input_ids=x).logits, ref(input_ids=x).logits
    assert torch.equal(out, expected)
    # gradients reach the adapters the same way
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=x, labels=x).loss.backward()
        ref(input_ids=x, labels=x).loss.backward()
    a = q.lora_B["default"].weight.grad
    b = ref.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight.grad
    assert torch.equal(a, b)


def _loaded_lora(folder: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The tiny model saved to ``folder`` and loaded back in float32 (its weights views of
    the file, memory-mapped), with LoRA on every linear; and a copy of it in memory."""
    _tiny_lora().get_base_model().save_pretrained(folder)
    base = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref = copy.deepcopy(base)
    config = LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(base, config), get_peft_model(ref, copy.deepcopy(config))


def test_cast_of_a_loaded_model_keeps_every_value(tmp_path: Path) -> None:
    """The float32 tensors copied off the weights file keep their values and their ties: the
    cast model under autocast gives the loaded model's logits exactly."""
    model, ref = _loaded_lora(tmp_path)
    assert cast_frozen_linears(model, torch.bfloat16) == 14
    base = model.get_base_model()
    assert base.lm_head.weight is base.model.embed_tokens.weight
    assert torch.equal(
        base.model.embed_tokens.weight, ref.get_base_model().model.embed_tokens.weight
    )
    x = torch.randint(0, 64, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(input_ids=x).logits, ref(input_ids=x).logits)


@pytest.mark.skipif(
    not Path("/proc/self/maps").exists(),
    reason="which files a process maps is read from /proc/self/maps, on Linux only",
)
def test_cast_lets_the_weights_file_go(tmp_path: Path) -> None:
    """The loaded float32 weights are views of the memory-mapped file; after the cast no
    tensor holds it, so the pages the cast read leave the process with the mapping."""
    weights = str((tmp_path / "model.safetensors").resolve())
    model, ref = _loaded_lora(tmp_path)
    del ref
    gc.collect()
    maps = Path("/proc/self/maps")
    # what the copy is for: transformers maps the file and its tensors view it
    assert weights in maps.read_text(), "the loaded weights no longer map the file"
    assert cast_frozen_linears(model, torch.bfloat16) == 14
    gc.collect()
    assert weights not in maps.read_text()


def test_nothing_cast_nothing_copied() -> None:
    """A model with no frozen plain linear (full fine-tuning) keeps its tensors as they are."""
    model = _tiny_lora().get_base_model()
    for p in model.parameters():
        p.requires_grad_(True)
    pointers = {n: p.data_ptr() for n, p in model.named_parameters()}
    assert cast_frozen_linears(model, torch.bfloat16) == 0
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == pointers
