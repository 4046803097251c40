"""LoRA adapters folded into their layers' weights while evaluating, then put back exactly.

An unmerged LoRA layer runs two extra small matmuls (and a dropout) beside every adapted
linear layer: on a CPU decode step of a small model that is a third of the time. Evaluating
with ``W + scale * B @ A`` gives the same function (it is what the merged export holds).
PEFT's own ``merge_adapter``/``unmerge_adapter`` restores ``W`` by subtraction, which
rounds: after many evaluations the frozen weights would drift. Here the merged weight is a
new tensor and the original parameter object is put back untouched.

A merged copy costs the adapted weights' full size in memory (about 430 MB for SmolLM2-135M
in fp32, every linear layer adapted). A layer that adds its adapter inside its own matrix
product (its :data:`ADAPTER_IN_PRODUCT` check says so, as the ``lora`` strategy's fused
forward does) keeps its trained adapter instead: an evaluation pass of the demo's 50 held-out
tickets took 20.3 s against 18.8 s with merged copies (fp32, AVX2) and saved the copy. An
adapter that is still zero (before training) is skipped by every layer, without a copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)

#: attribute of a LoRA layer whose forward can add the adapter inside the base layer's matrix
#: product: a no-argument callable, True when it does so for the layer's adapter as it stands
ADAPTER_IN_PRODUCT = "ftlight_adapter_in_product"


@contextmanager
def merged_lora(model: nn.Module) -> Iterator[int]:
    """Within the block, each plain linear LoRA layer of ``model`` computes with merged
    weights and skips its adapter branch; yields how many layers were merged.

    Layers that cannot be merged exactly as a weight swap (quantised or sharded base
    weights, DoRA, embeddings, convolutions) keep running unmerged, and so do trained
    adapters whose layer computes them inside its product (:data:`ADAPTER_IN_PRODUCT`).
    """
    swaps: list[tuple[nn.Module, nn.Module, nn.Parameter | None, list[str]]] = []
    try:
        for layer in _mergeable(model):
            base = layer.get_base_layer()
            weight = base.weight
            adapters = [a for a in layer.active_adapters if a in layer.lora_A]
            if any(bool(layer.lora_B[name].weight.any()) for name in adapters):
                in_product = getattr(layer, ADAPTER_IN_PRODUCT, None)
                if in_product is not None and in_product():
                    continue  # computed inside the base product: cheaper than a copy
                deltas = [layer.get_delta_weight(name) for name in adapters]
                merged = weight.detach().float()
                for delta in deltas:
                    merged = merged + delta.float()
                base.weight = nn.Parameter(merged.to(weight.dtype), requires_grad=False)
                swaps.append((layer, base, weight, adapters))
            else:  # an untrained adapter (B = 0) adds exactly nothing: no copy of the weight
                swaps.append((layer, base, None, adapters))
            layer.merged_adapters.extend(adapters)  # PEFT then runs the base layer only
        yield len(swaps)
    finally:
        for layer, base, weight, adapters in reversed(swaps):
            if weight is not None:
                base.weight = weight
            for name in adapters:
                layer.merged_adapters.remove(name)


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
        yield module
