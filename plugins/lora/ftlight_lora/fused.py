"""LoRA's forward with the adapter's product added inside the matrix product.

peft computes an adapted linear layer as ``base(x) + B(A(x)) * scaling``: after the two small
products it makes two more passes over the layer's whole output (the scaling, then the sum),
and backward makes another for the scaling's gradient. On a CPU, where a small model's step is
bound by memory traffic as much as by arithmetic, those passes over every adapted layer's
output cost several percent of a training step. ``base(x).addmm_(A(x), B^T, alpha=scaling)``
adds the scaled product in the matrix product's own accumulation instead, in place (no second
output of the layer's size); the scaling then only touches the ``r``-wide gradients.

``fuse`` installs that forward on every plain LoRA linear layer of a model. Each call still
checks that it applies (one active vanilla adapter, no dropout, not merged, no extra
arguments) and hands anything else to peft's own forward. Evaluation folds trained adapters
into the weights instead (``ftlight_lora.merge``): on a decoding step even the fused adapter's
two small products cost a quarter of the step.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn


def fuse(model: nn.Module) -> int:
    """Give every plain LoRA linear layer of ``model`` the fused forward; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.get_base_layer()) is nn.Linear:
            # partials, not bound methods: a pickled model (torch.save, spawned processes)
            # loads again, as both name module-level functions
            module.forward = functools.partial(_forward, module)
            count += 1
    return count


def _forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    adapter = _plain_adapter(self, x) if not (args or kwargs) else None
    if adapter is None:
        return LoraLinear.forward(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[adapter], self.lora_B[adapter]
    result = self.base_layer(x)
    low = lora_a(x)
    if not result.is_contiguous():
        result = result.contiguous()
    # in place: the base product's output is nobody's saved tensor, and a second output of
    # the layer's size (the MLP's width, for 50 prompts at once in evaluation) is not made;
    # the casts are autocast's own (an in-place product is not cast for us)
    flat = result.view(-1, result.shape[-1])
    flat.addmm_(
        low.reshape(-1, low.shape[-1]).to(result.dtype),
        lora_b.weight.t().to(result.dtype),
        alpha=self.scaling[adapter],
    )
    return result


def _plain_adapter(layer: LoraLinear, x: torch.Tensor) -> str | None:
    """The one active adapter when it is vanilla LoRA the fused forward computes exactly."""
    name = _vanilla_adapter(layer)
    if name is None:
        return None
    if x.dtype != layer.lora_A[name].weight.dtype and not torch.is_autocast_enabled(x.device.type):
        return None  # peft casts the input to the adapter's dtype first
    return name


def _vanilla_adapter(layer: LoraLinear) -> str | None:
    if layer.disable_adapters or layer.merged:
        return None
    active = layer.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    if name not in layer.lora_A or name in layer.lora_variant:
        return None
    if not isinstance(layer.lora_dropout[name], nn.Identity) or layer.lora_B[name].bias is not None:
        return None
    return name
