"""Gated MLPs that recompute their activation in backward: same numbers, one tensor fewer kept."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM

from ftlight.speed.gated import gated_product, is_gated_mlp, recompute_gated_activations

SIZES = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def _llama(lora: bool) -> nn.Module:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SIZES, tie_word_embeddings=True))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
        for name, p in model.named_parameters():  # B starts at zero: give it values
            if "lora_B" in name:
                nn.init.normal_(p, std=0.1)
    return model


def _grads(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_same_loss_and_gradients_as_autograd(lora: bool) -> None:
    model = _llama(lora)
    plain = copy.deepcopy(model)
    assert recompute_gated_activations(model) == 2
    ids = torch.randint(0, 64, (3, 11))
    loss, grads = _grads(model, ids)
    ref_loss, ref_grads = _grads(plain, ids)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.equal(grad, ref_grads[name]), name


def test_gelu_family_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = GemmaForCausalLM(GemmaConfig(**SIZES, head_dim=8))
    plain = copy.deepcopy(model)
    assert recompute_gated_activations(model) == 2
    ids = torch.randint(0, 64, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = _grads(model, ids)
        ref_loss, ref_grads = _grads(plain, ids)
    assert torch.equal(loss, ref_loss)
    for name, grad in grads.items():
        assert torch.equal(grad, ref_grads[name]), name


def test_keeps_two_of_three_intermediates() -> None:
    """The saved tensors of one MLP: gate(x), up(x) and down's input; not act(gate(x))."""
    model = _llama(lora=False)
    mlp = model.model.layers[0].mlp
    x = torch.randn(2, 5, 32, requires_grad=True)

    def saved_bytes() -> int:
        sizes: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.numel() == 2 * 5 * 96:  # the MLP's width: gate, up, act, product
                sizes[t.data_ptr()] = t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            mlp(x).sum().backward()
        return sum(sizes.values())

    before = saved_bytes()
    recompute_gated_activations(model)
    after = saved_bytes()
    width = 2 * 5 * 96 * 4
    assert (before, after) == (4 * width, 3 * width)


def test_no_graph_no_function() -> None:
    act = nn.SiLU()
    gate, up = torch.randn(4, 6), torch.randn(4, 6)
    with torch.no_grad():
        out = gated_product(gate.requires_grad_(), up, act)
    assert out.grad_fn is None
    assert torch.equal(out, act(gate) * up)


def test_other_mlps_keep_their_forward() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = (nn.Linear(4, 4) for _ in range(3))
            self.act_fn = nn.SiLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # not the gated product
            return self.down_proj(self.act_fn(self.gate_proj(x)) + self.up_proj(x))

    class Inherits(Custom):
        pass

    model = nn.Sequential(Custom(), Inherits())
    assert recompute_gated_activations(model) == 0
    assert not is_gated_mlp(model[1])
    llama = _llama(lora=False)
    mlp = llama.model.layers[0].mlp
    mlp.act_fn = nn.PReLU()  # an activation with weights
    assert not is_gated_mlp(mlp)


def test_patched_model_pickles() -> None:
    model = _llama(lora=False)
    recompute_gated_activations(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    # bytes this test pickled itself a moment ago, in memory: no file or user input
    loaded = torch.load(buffer, weights_only=False)
    ids = torch.randint(0, 64, (1, 7))
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert "forward" in loaded.model.layers[0].mlp.__dict__
