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

    The float32 weights a model loads are views of its memory-mapped weights file, which stays
    mapped while any of them lives: the pages the cast read would stay resident beside their
    bf16 copies. So once a layer is cast, the frozen tensors left in float32 (the embedding,
    the norms) are copied into the process's own memory and the file's mapping goes away.
    """
    shared: set[int] = set()
    for module in model.modules():
        if type(module) is not nn.Linear:
            shared.update(id(p) for p in module.parameters(recurse=False))
    cast: set[int] = set()  # the parameters given new bf16 storage
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear or module.weight.requires_grad:
            continue
        if id(module.weight) in shared or module.weight.dtype != torch.float32:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        for param in (module.weight, module.bias):
            if param is not None:
                param.data = param.data.to(dtype)
                cast.add(id(param))
        count += 1
    if count:
        _own_frozen_tensors(model, skip=cast)
    return count


def _own_frozen_tensors(model: nn.Module, skip: set[int]) -> None:
    """Copy every frozen floating-point parameter and buffer of ``model`` on the CPU into
    memory of its own, so no tensor keeps the weights file mapped (``skip``: the ids of those
    just cast, new already; trainable ones are left: the optimizer writes them, which copies
    their pages anyway)."""
    seen = set(skip)
    for module in model.modules():
        tensors = [p for p in module.parameters(recurse=False) if type(p) is nn.Parameter]
        tensors += [b for b in module.buffers(recurse=False) if b is not None]
        for t in tensors:
            if id(t) in seen or t.requires_grad or t.device.type != "cpu":
                continue
            seen.add(id(t))
            if t.is_floating_point():
                t.data = t.data.clone()
