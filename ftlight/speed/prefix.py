"""Run the opening that every row of a batch shares once, for training and scoring passes.

SFT rows of one data set usually start the same way: the chat template's system prompt, a
fixed instruction, and in few-shot scoring the same worked examples. Those tokens carry no
loss, yet a plain forward pass computes them once per row. ``shared_prefix_length`` finds the
tokens that every row of a batch starts with, unpadded and not needed for any logit;
``forward_with_shared_prefix`` runs them once (batch 1) and then the rest of every row on top
of their keys and values: in scoring passes one copy that every row attends to, for the model
families ``ftlight.speed.cascade`` knows, else (and in training) a copy per row. Gradients flow
back through them, so a training step gets the same loss and gradients as the plain pass (up
to float rounding), at
the cost of ``shared + rows x rest`` tokens instead of ``rows x length``. One difference:
dropout inside the shared part draws one mask for all rows of the batch.

On the built-in demo (SmolLM2's chat template) about 70 of a row's 150 tokens are shared.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from ftlight.speed import cascade

#: a common opening shorter than this is not worth a separate forward pass
MIN_SHARED_PREFIX = 16


def shared_prefix_length(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keep: torch.Tensor | None = None,
    minimum: int = MIN_SHARED_PREFIX,
) -> int:
    """Leading tokens that every row of the batch has in common, or 0 when fewer than
    ``minimum`` (or a single row).

    A shared token must be the same in every row, unpadded in every row (``attention_mask``),
    and its logits must not be wanted (``keep``: the positions whose logits the caller needs).
    Every row keeps at least one token of its own.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] < 2 or input_ids.shape[1] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(0)
    if keep is not None:
        same &= ~keep.bool().any(0)
    differs = (~same[: input_ids.shape[1] - 1]).nonzero()
    shared = int(differs[0]) if len(differs) else input_ids.shape[1] - 1
    return shared if shared >= minimum else 0


def takes_argument(model: nn.Module, name: str) -> bool:
    """Whether the innermost model's ``forward`` takes ``name`` (under a PEFT wrapper or
    ``torch.compile``)."""
    inner: Any = getattr(model, "_orig_mod", model)
    get_base = getattr(inner, "get_base_model", None)
    if callable(get_base):
        inner = get_base()
    return _forward_takes(type(inner), name)


@functools.cache
def _forward_takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


def cache_argument(model: nn.Module) -> str | None:
    """The name under which ``model``'s forward takes a key/value cache (``cache`` in newer
    ``transformers``, ``past_key_values`` before), or None when it takes none."""
    for name in ("cache", "past_key_values"):
        if takes_argument(model, name):
            return name
    return None


def new_cache(model: nn.Module) -> DynamicCache:
    """An empty key/value cache laid out for ``model`` (its sliding-window layers too)."""
    config = getattr(model, "config", None)
    try:
        return DynamicCache(config=config)
    except TypeError:  # older signature
        return DynamicCache()


def forward_with_shared_prefix(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    shared: int,
    **kwargs: Any,
) -> Any:
    """``model``'s output for positions ``shared:`` of every row, the first ``shared`` tokens
    (the same in every row) computed once.

    ``kwargs`` go to the second call (for example ``logits_to_keep`` over positions
    ``shared:``). Rows may be right-padded; the shared part is never padding.
    """
    rows, length = input_ids.shape
    cache = new_cache(model)
    name = cache_argument(model) or "past_key_values"
    model(
        input_ids=input_ids[:1, :shared],
        **{name: cache},
        use_cache=True,
        logits_to_keep=1,
    )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = torch.arange(shared, length, device=input_ids.device).expand(rows, -1)
    # without a gradient (scoring) the opening stays one copy (``ftlight.speed.cascade``): wide
    # evaluation batches would otherwise repeat it per row; a training step's few rows repeat
    # it, which ran faster (SDPA) than attending to one copy with the gradient recorded
    if not torch.is_grad_enabled() and cascade.supports(model):
        opening = [(layer.keys, layer.values) for layer in cache.layers]
        own = attention_mask[:, shared:].bool()
        width = own.shape[1]
        causal = torch.ones((width, width), dtype=torch.bool, device=own.device).tril()
        with cascade.attend_to_shared_prefix(model, opening):
            return model(
                input_ids=input_ids[:, shared:],
                attention_mask=causal[None, None] & own[:, None, None, :],
                position_ids=positions,
                use_cache=False,
                **kwargs,
            )
    cache.batch_repeat_interleave(rows)
    return model(
        input_ids=input_ids[:, shared:],
        attention_mask=attention_mask,
        position_ids=positions,
        **{name: cache},
        use_cache=True,
        **kwargs,
    )
