"""The vocabulary projection and cross-entropy of a training step, a block of rows at a time.

A causal LM's loss projects each labelled position onto the vocabulary (``lm_head``) and takes
the cross-entropy of those logits. Autograd then holds, at the start of backward when every
activation is still alive, the log-probabilities it saved and two gradients of the same size:
three tensors of ``positions x vocabulary`` floats, about 40 MB each for 200 positions of
SmolLM2's 49,152 tokens. ``linear_cross_entropy`` computes the loss and its gradients in the
forward pass instead, ``ROW_BLOCK`` floats of logits at a time, and keeps only the gradient of
the hidden states (``positions x hidden``) for backward. The numbers are those of the plain
path up to the order of floating-point sums.

``head_as_identity`` makes a model return the hidden states its head would project, so the
loss can take them, and tells whether the model handed its head's output back as it is (no
soft-capping or scaling after the head), which the projection here relies on.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

#: logits computed at once: 4 M floats (16 MB in float32)
ROW_BLOCK = 1 << 22


def plain_head(model: nn.Module) -> nn.Linear | None:
    """The model's output projection when it is a plain, unsharded, unhooked ``nn.Linear``."""
    if isinstance(model, FSDPModule):  # its weights are shards outside FSDP's own gathers
        return None
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not nn.Linear or head._forward_hooks or head._forward_pre_hooks:
        return None  # a hook may change what the head returns
    if "forward" in head.__dict__:  # a forward of someone else's: left as it is
        return None
    params = [head.weight] if head.bias is None else [head.weight, head.bias]
    if any(type(p.data) is not torch.Tensor for p in params):  # DTensor (FSDP), quantised
        return None
    return head


@contextlib.contextmanager
def head_as_identity(head: nn.Linear) -> Iterator[list[torch.Tensor]]:
    """Within the block the head returns its input, and the yielded list collects what it was
    given: a model whose logits are the very last of them hands back its head's output as it
    is (no soft-capping or scaling after the head)."""
    seen: list[torch.Tensor] = []
    head.forward = functools.partial(_identity, seen)
    try:
        yield seen
    finally:
        head.__dict__.pop("forward", None)


def _identity(seen: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    seen.append(x)
    return x


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the projected rows; its gradients are computed in forward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        target: torch.Tensor,
    ) -> torch.Tensor:
        count = target.shape[0]
        need = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need[2] else None
        total = hidden.new_zeros((), dtype=torch.float32)
        # the dtype the head computes in: autocast's, as the plain head would, cast once here
        device = hidden.device.type
        autocast = torch.is_autocast_enabled(device)
        low = torch.get_autocast_dtype(device) if autocast else weight.dtype
        w = weight.to(low)
        b = bias.to(low) if bias is not None else None
        rows = max(1, ROW_BLOCK // weight.shape[0])
        with torch.autocast(device, enabled=False):
            for start in range(0, count, rows):
                h, t = hidden[start : start + rows].to(low), target[start : start + rows]
                logits = nn.functional.linear(h, w, b).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if not any(need):
                    continue
                # d(mean loss)/d(logits) = (softmax - one-hot) / count, in the logits' memory,
                # then in the head's dtype, as autograd's cast back from float32 would be
                grad = logits.sub_(lse[:, None]).exp_()
                grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad = grad.div_(count).to(low)
                del logits
                if grad_h is not None:
                    grad_h[start : start + rows] = torch.mm(grad, w)
                if grad_w is not None:
                    grad_w += torch.mm(grad.t(), h)
                if grad_b is not None:
                    grad_b += grad.float().sum(0)
        ctx.kept = tuple(g is not None for g in (grad_h, grad_w, grad_b))
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = iter(ctx.saved_tensors)
        grads: list[torch.Tensor | None] = []
        for kept, dtype in zip(ctx.kept, ctx.dtypes, strict=True):
            grads.append((next(saved) * grad_out).to(dtype) if kept else None)
        return grads[0], grads[1], grads[2], None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` (float32 logits) against ``target``."""
    return _LinearCrossEntropy.apply(hidden, weight, bias, target)
