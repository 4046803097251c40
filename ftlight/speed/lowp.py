"""Frozen linear weights stored in the autocast dtype: same numbers, no per-step cast."""

from __future__ import annotations

import torch
from torch import nn


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every frozen, plain ``nn.Linear`` weight (and bias) of ``model`` in ``dtype``.

    Under autocast to ``dtype`` a linear layer casts its weight on every call; a frozen weight
    gives the same rounded copy every time, so keeping that copy is numerically identical while
    saving the cast (a large part of a CPU decode step) and half the weight memory. Weights
    shared with another kind of module (an LM head tied to the input embedding) and quantised
    layers are left alone. Returns the number of layers cast.
    """
    shared: set[int] = set()
    for module in model.modules():
        if type(module) is not nn.Linear:
            shared.update(id(p) for p in module.parameters(recurse=False))
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear or module.weight.requires_grad:
            continue
        if id(module.weight) in shared or module.weight.dtype != torch.float32:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)
        count += 1
    return count
