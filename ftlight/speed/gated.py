"""Gated MLPs that keep two of their three elementwise intermediates for backward.

The MLP of Llama-style models computes ``down(act(gate(x)) * up(x))``. Autograd keeps
``gate(x)`` (for the activation's gradient), ``up(x)`` and ``act(gate(x))`` (for the product's
gradients): three tensors of the MLP's width per token and layer, the width being 2.7x the
model's for SmolLM2. Only the first two are needed: the activation is recomputed from
``gate(x)`` in backward, one elementwise pass, and the numbers are the same as autograd's
(the same operations on the same values). The memory it saves at the training step's peak is
measured in benchmarks/README.md.

``recompute_gated_activations`` installs this on every MLP whose forward is exactly that
expression (Llama, Mistral, Qwen2/3, Gemma, OLMo, Granite, SmolLM3 and others in transformers);
any other MLP keeps its own forward.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

import torch
from torch import nn

#: the forward this module reproduces, as transformers writes it for its gated MLP families
_FORWARD = re.compile(
    r"def forward\(self, (\w+)\):\s*"
    r"down_proj = self\.down_proj\(self\.act_fn\(self\.gate_proj\(\1\)\) \* self\.up_proj\(\1\)\)"
    r"\s*return down_proj\s*$"
)


class _GatedProduct(torch.autograd.Function):
    """``act(gate) * up`` keeping ``gate`` and ``up`` only; ``act`` is recomputed in backward."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, act: nn.Module) -> torch.Tensor:
        ctx.act = act
        ctx.save_for_backward(gate, up)
        return act(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gate, up = ctx.saved_tensors
        with torch.enable_grad():
            source = gate.detach().requires_grad_(ctx.needs_input_grad[0])
            activated = ctx.act(source)
        grad_up = grad * activated.detach() if ctx.needs_input_grad[1] else None
        grad_gate = None
        if ctx.needs_input_grad[0]:
            (grad_gate,) = torch.autograd.grad(activated, source, grad * up)
        return grad_gate, grad_up, None


def gated_product(gate: torch.Tensor, up: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """``act(gate) * up``; under autograd only ``gate`` and ``up`` are kept for backward."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return _GatedProduct.apply(gate, up, act)
    return act(gate) * up


def _forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(gated_product(mlp.gate_proj(x), mlp.up_proj(x), mlp.act_fn))


def is_gated_mlp(module: nn.Module) -> bool:
    """Whether ``module``'s forward is transformers' ``down(act(gate(x)) * up(x))``."""
    act = getattr(module, "act_fn", None)
    if not isinstance(act, nn.Module) or any(True for _ in act.parameters()):
        return False  # an activation with weights is not a pure function of the gate
    projections = ("gate_proj", "up_proj", "down_proj")
    if not all(isinstance(getattr(module, n, None), nn.Module) for n in projections):
        return False
    return _forward_source(type(module)) is not None


@functools.cache
def _forward_source(cls: type) -> str | None:
    forward = cls.__dict__.get("forward")
    if forward is None:  # inherited: the defining class decides
        parent = next((b for b in cls.__mro__[1:] if "forward" in b.__dict__), None)
        return _forward_source(parent) if parent is not None and parent is not nn.Module else None
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return None
    source = inspect.cleandoc(source)
    return source if _FORWARD.match(source) else None


def recompute_gated_activations(model: nn.Module) -> int:
    """Give every gated MLP of ``model`` the forward above; returns how many."""
    count = 0
    for module in model.modules():
        if "forward" not in module.__dict__ and is_gated_mlp(module):
            # a partial of a module-level function: the model still pickles
            module.forward = functools.partial(_forward, module)
            count += 1
    return count
