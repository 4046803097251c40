"""LoRA adapters folded into their layers' weights while evaluating, then put back exactly.

An unmerged LoRA layer runs two extra small matrix products beside every adapted linear
layer. On a CPU decoding step they are not cheap: with the demo's trained adapter a step costs
about a quarter more than with the adapters folded into the weights (benchmarks/README.md,
*Evaluation*). Evaluating with ``W + scale * B @ A`` gives the same function (it is what the
merged export holds).

The fold is made in place, so it costs no copy of the weights (about 430 MB for SmolLM2-135M
in fp32). PEFT's own ``merge_adapter``/``unmerge_adapter`` restores ``W`` by subtraction,
which rounds: after many evaluations the frozen weights would drift. Here the subtraction is
tried when folding: the elements it would not give back bit for bit (a few in fp32) are
kept aside with their original values, and put back after it on leaving. A weight shared with
another parameter (a head tied to the embedding) is folded into a copy instead, so the other
user keeps the original. An adapter that is still zero (before training) is skipped, with no
fold at all. Only float32 weights are folded: into bf16 weights the sum would round much of
the update away.

The first fold of a run costs more than the later ones: weights loaded from a safetensors file
are a private mapping of it, and writing them copies each page once (memory stays the same: the
copies replace the file's pages).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class _Fold:
    """One layer's folded adapters and what it takes to put its weight back."""

    layer: nn.Module
    adapters: list[str]
    copy_of: nn.Parameter | None = None  # the original weight, when the fold went to a copy
    wrong: torch.Tensor | None = None  # flat positions the subtraction would not restore
    kept: torch.Tensor | None = None  # their original values
    factors: tuple = ()  # the adapters' A and B as folded (object and version of each)


@contextmanager
def merged_lora(model: nn.Module) -> Iterator[int]:
    """Within the block, each plain linear LoRA layer of ``model`` computes with its adapters
    folded into its weight and skips its adapter branch; yields how many layers were merged.

    On leaving (also on an error) every weight holds its original bits again, and is the same
    parameter object. Layers that cannot be merged as a plain weight update (quantised or
    sharded base weights, DoRA, embeddings, convolutions) keep running unmerged, and so do
    trained adapters over bf16 or fp16 weights (frozen weights kept in bf16 for speed): at 8 or
    11 bits of mantissa the sum would round away much of the update, and evaluation scores
    what the full-precision export holds.
    """
    folds: list[_Fold] = []
    try:
        tied = _tied_storages(model)
        for layer in _mergeable(model):
            adapters = [a for a in layer.active_adapters if a in layer.lora_A]
            fold = _Fold(layer, adapters)
            if any(bool(layer.lora_B[name].weight.any()) for name in adapters):
                if layer.get_base_layer().weight.dtype != torch.float32:
                    continue  # bf16/fp16 would round most of the update away: keep the branch
                _fold_weight(fold, tied)
            # else: an untrained adapter (B = 0) adds exactly nothing: the weight stays
            folds.append(fold)
            layer.merged_adapters.extend(adapters)  # PEFT then runs the base layer only
        yield len(folds)
    finally:
        for fold in reversed(folds):
            _restore(fold)
            for name in fold.adapters:
                fold.layer.merged_adapters.remove(name)


@torch.no_grad()
def _fold_weight(fold: _Fold, tied: set[int]) -> None:
    base = fold.layer.get_base_layer()
    weight = base.weight
    deltas = [fold.layer.get_delta_weight(name) for name in fold.adapters]
    merged = _plus(weight.detach(), deltas)
    if weight.untyped_storage().data_ptr() in tied:  # another parameter reads these bits
        base.weight = nn.Parameter(merged, requires_grad=False)
        fold.copy_of = weight
        return
    original = weight.detach()
    back = _minus(merged, deltas)
    # compared bit for bit (as integers: -0.0 is not 0.0, and a NaN is kept as it was)
    wrong = (back.view(torch.int32) != original.view(torch.int32)).flatten().nonzero().squeeze(1)
    fold.wrong, fold.kept = wrong, original.flatten()[wrong]
    fold.factors = _factors(fold)
    original.copy_(merged)


@torch.no_grad()
def _restore(fold: _Fold) -> None:
    base = fold.layer.get_base_layer()
    if fold.copy_of is not None:
        base.weight = fold.copy_of
        return
    if fold.wrong is None:
        return  # not folded
    weight = base.weight.detach()
    if _factors(fold) != fold.factors:  # the fold can only be taken out as it was made
        log.warning(
            "a LoRA adapter changed while merged for evaluation: its layer's frozen weight "
            "did not come back bit for bit and differs by rounding"
        )
    back = _minus(weight, [fold.layer.get_delta_weight(name) for name in fold.adapters])
    back.view(-1)[fold.wrong] = fold.kept
    weight.copy_(back)


def _plus(weight: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
    """``weight`` plus each delta in turn, in a new tensor (float32 weights only are folded)."""
    for delta in deltas:
        weight = weight + delta
    return weight


def _minus(weight: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
    """``_plus`` taken back: each delta subtracted in the reverse order, in a new tensor."""
    for delta in reversed(deltas):
        weight = weight - delta
    return weight


def _factors(fold: _Fold) -> tuple:
    """Each adapter's A and B weights and their in-place versions: the same ones give the same
    delta again (the same product of the same tensors)."""
    layer = fold.layer
    tensors = [m[name].weight for name in fold.adapters for m in (layer.lora_A, layer.lora_B)]
    return tuple((id(t), t._version) for t in tensors)


def _tied_storages(model: nn.Module) -> set[int]:
    """The storages more than one parameter of ``model`` reads (tied weights)."""
    seen: set[int] = set()
    tied: set[int] = set()
    for _, p in model.named_parameters(remove_duplicate=False):
        try:
            ptr = p.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # a tensor subclass without one storage
            continue
        (tied if ptr in seen else seen).add(ptr)
    return tied


def _mergeable(model: nn.Module) -> Iterator[nn.Module]:
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # PEFT not installed: nothing to merge
        return
    for module in model.modules():
        if type(module) is not LoraLinear or module.merged or module.disable_adapters:
            continue
        if any(module.use_dora.get(a, False) for a in module.active_adapters):
            continue
        base = module.get_base_layer()
        weight = getattr(base, "weight", None)
        if type(base) is not nn.Linear or type(weight) is not nn.Parameter:
            continue  # quantised (Params4bit) or sharded (DTensor) weights
        if weight.dtype not in _FLOATS or weight.device.type == "meta":
            continue
        if getattr(module, "fan_in_fan_out", False):
            continue
        if any(
            a in module.lora_B and module.lora_B[a].bias is not None for a in module.active_adapters
        ):
            continue  # lora_bias: the fold would leave out B's bias
        yield module
