"""Attention over a prompt opening shared by every row, without a copy of it per row.

Greedy decoding of a batch whose prompts start the same way (a system prompt, an
instruction, few-shot examples) computes that opening once. With a plain key/value cache its
keys and values must still be repeated for every row, and every decoding step then copies the
repeated cache (to append a token) and reads it row by row. With few-shot prompts of about 430
tokens, 370 of them shared, that is most of a step's memory traffic.

Here the opening's keys and values stay a single copy (batch 1) and each row's cache holds only
its own tokens. The attention of every layer scores a query against both, the shared part with
one batched product for all rows, and takes one softmax over the two sets of scores: the same
attention, in a different order of summation. It is used by ``greedy_decode`` for the model
families listed in ``FAMILIES`` (plain softmax attention with rotary positions, no sliding
window); other models decode with the opening repeated per row.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface

NAME = "ftlight_shared_prefix"
#: model types whose attention is plain scaled softmax over (shared + own) keys
FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "granite"})

#: per layer, the shared opening's (keys, values), each (1, kv_heads, shared, head_dim)
_SHARED: contextvars.ContextVar[Sequence[tuple[torch.Tensor, torch.Tensor]] | None] = (
    contextvars.ContextVar("ftlight_shared_prefix", default=None)
)


def supports(model: nn.Module) -> bool:
    """Whether ``model`` can attend to a shared opening kept once (see module doc)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in FAMILIES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if attention_window(model) is not None:
        return False
    layer_types = getattr(config, "layer_types", None) or []
    return all(kind == "full_attention" for kind in layer_types)


def attention_window(model: nn.Module) -> int | None:
    """The sliding attention window of ``model``'s layers, in tokens (None: every layer
    attends to the whole sequence). The shared opening is kept once only without one;
    ``greedy_decode`` keeps padding between a row's prompt and its answer in the cache, where a
    window would count it, so past the window answers come from ``model.generate``."""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    if not window or not getattr(config, "use_sliding_window", True):
        return None
    layer_types = getattr(config, "layer_types", None) or []
    if layer_types and all(kind == "full_attention" for kind in layer_types):
        return None
    return int(window)


def shared_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Softmax attention of ``query`` over the shared opening and each row's own keys.

    ``query`` is ``(rows, heads, q, dim)``; ``key``/``value`` the rows' own ``(rows,
    kv_heads, own, dim)``; ``attention_mask`` a boolean ``(rows, 1, q, own)`` (True: attend).
    Returns ``(rows, q, heads, dim)`` as ``transformers`` attention functions do.
    """
    shared = _SHARED.get()
    if shared is None:
        raise RuntimeError("shared_attention runs only inside attend_to_shared_prefix()")
    shared_key, shared_value = shared[module.layer_idx]
    rows, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # in place where no gradient is recorded (scoring, decoding): less memory traffic
    inplace = not torch.is_grad_enabled()
    # (rows, kv_heads, group*q, dim): the queries of each key/value head side by side
    grouped = query.reshape(rows, kv_heads, group * q, dim).float()
    # the shared part: all rows' queries against the one copy, one product per kv head
    flat = grouped.transpose(0, 1).reshape(kv_heads, rows * group * q, dim)
    shared_scores = torch.bmm(flat, shared_key[0].float().transpose(1, 2)) * scale
    own_scores = torch.matmul(grouped, key.float().transpose(2, 3)) * scale
    if attention_mask is not None:
        allowed = attention_mask.bool().expand(rows, 1, q, -1)
        allowed = allowed[:, :, None].expand(rows, 1, group, q, -1).reshape(rows, 1, group * q, -1)
        own_scores = own_scores.masked_fill_(~allowed, float("-inf"))
    # one softmax over both sets of scores without joining them: a common maximum, then
    # each part's exponentials, weighted values and sums
    top = torch.maximum(
        _per_row(shared_scores.amax(-1, keepdim=True), rows),
        own_scores.amax(-1, keepdim=True),
    )  # (rows, kv_heads, group*q, 1); finite: the shared part is never masked
    shared_top = top.transpose(0, 1).reshape(kv_heads, rows * group * q, 1)
    if inplace:
        own_scores = own_scores.sub_(top).exp_()
        shared_scores = shared_scores.sub_(shared_top).exp_()
    else:
        own_scores = (own_scores - top).exp()
        shared_scores = (shared_scores - shared_top).exp()
    total = own_scores.sum(-1, keepdim=True) + _per_row(shared_scores.sum(-1, keepdim=True), rows)
    shared_out = _per_row(torch.bmm(shared_scores, shared_value[0].float()), rows)
    out = torch.matmul(own_scores, value.float())
    out = out.add_(shared_out).div_(total) if inplace else (out + shared_out) / total
    out = out.to(query.dtype).reshape(rows, heads, q, dim)
    return out.transpose(1, 2).contiguous(), None


def _per_row(flat: torch.Tensor, rows: int) -> torch.Tensor:
    """``(kv_heads, rows * n, k)`` -> ``(rows, kv_heads, n, k)``: the shared part's layout
    (rows folded into one product per head) back to the rows' own."""
    kv_heads, _, k = flat.shape
    return flat.reshape(kv_heads, rows, -1, k).transpose(0, 1)


AttentionInterface.register(NAME, shared_attention)


@contextlib.contextmanager
def attend_to_shared_prefix(
    model: nn.Module, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[None]:
    """Within the block, ``model``'s attention also attends to ``layers`` (the shared
    opening's keys and values per layer); masks given to the model must then be 4-D boolean
    ``(rows, 1, q, own)`` over the rows' own cache."""
    config = model.config
    before = config._attn_implementation
    token = _SHARED.set(layers)
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
        _SHARED.reset(token)
