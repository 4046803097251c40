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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

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


class _ReservedLayer(DynamicLayer):
    """A cache layer whose keys and values lie at the front of buffers with room to grow:
    appending a token writes in place, where ``DynamicLayer`` copies the whole layer
    (``torch.cat``) at every decoding step."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self._keys, self._values, self.filled = keys, values, filled
        self._expose()

    @classmethod
    def around(cls, layer: DynamicLayer, room: int) -> _ReservedLayer:
        """``layer``'s keys and values, copied to the front of buffers ``room`` longer."""
        filled = layer.keys.shape[-2]
        return cls(_grown(layer.keys, filled, room), _grown(layer.values, filled, room), filled)

    def _expose(self) -> None:
        self.keys = self._keys[..., : self.filled, :]
        self.values = self._values[..., : self.filled, :]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values after the cached ones; the whole cache as views."""
        end = self.filled + key_states.shape[-2]
        if end > self._keys.shape[-2]:  # out of room: grow by half again
            room = max(end - self.filled, self._keys.shape[-2] // 2)
            self._keys = _grown(self._keys, self.filled, room)
            self._values = _grown(self._values, self.filled, room)
        self._keys[..., self.filled : end, :] = key_states
        self._values[..., self.filled : end, :] = value_states
        self.filled = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Tokens held."""
        return self.filled

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices``."""
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row ``repeats`` times."""
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._expose()


def _grown(states: torch.Tensor, filled: int, room: int) -> torch.Tensor:
    buffer = states.new_empty((*states.shape[:-2], filled + room, states.shape[-1]))
    buffer[..., :filled, :] = states[..., :filled, :]
    return buffer


def reserve(cache: DynamicCache, tokens: int) -> None:
    """Make room in ``cache`` for ``tokens`` more per row, so that appending them does not
    copy the cache (plain full-attention layers; others are left as they are)."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            cache.layers[i] = _ReservedLayer.around(layer, tokens)


class RowCache:
    """A cache for ``rows`` rows, filled group by group from the caches of separate passes.

    Each row keeps its first ``length`` positions (zeros where its pass held fewer: the
    caller's mask hides them), with room for ``room`` more tokens per row. ``cache`` is None
    when a pass's cache has layers other than plain full-attention ones.
    """

    def __init__(self, model: nn.Module, rows: int, length: int, room: int) -> None:
        self.model, self.rows, self.length, self.room = model, rows, length, room
        self.cache: DynamicCache | None = None
        self.usable = True

    def add(self, start: int, part: DynamicCache) -> None:
        """``part``'s rows as rows ``start:`` of the whole."""
        if not self.usable:
            return
        layers = part.layers
        if not all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers):
            self.usable, self.cache = False, None
            return
        if self.cache is None:
            self.cache = new_cache(self.model)
            if len(self.cache.layers) != len(layers):
                self.usable, self.cache = False, None
                return
            for i, layer in enumerate(layers):
                shape = (self.rows, layer.keys.shape[1], self.length + self.room)
                keys = layer.keys.new_zeros((*shape, layer.keys.shape[-1]))
                values = layer.values.new_zeros((*shape, layer.values.shape[-1]))
                self.cache.layers[i] = _ReservedLayer(keys, values, self.length)
        for mine, layer in zip(self.cache.layers, layers, strict=True):
            n = min(self.length, layer.keys.shape[-2])
            end = start + layer.keys.shape[0]
            mine._keys[start:end, :, :n] = layer.keys[..., :n, :]
            mine._values[start:end, :, :n] = layer.values[..., :n, :]


@dataclass
class PrefixPass:
    """A forward pass whose rows start with a shared opening (``forward_with_shared_prefix``)."""

    output: Any
    #: the rows' keys and values after the pass (``keep_cache``): their own tokens only when
    #: ``opening`` is kept apart, else the opening repeated per row and then their own tokens
    cache: DynamicCache | None = None
    #: per layer, the opening's (keys, values) at batch 1, when attended to as one copy
    opening: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def encode_opening(
    model: nn.Module, input_ids: torch.Tensor, shared: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values of the first ``shared`` tokens of ``input_ids``'s first
    row, computed at batch 1."""
    return [(layer.keys, layer.values) for layer in opening_cache(model, input_ids, shared).layers]


def opening_cache(model: nn.Module, input_ids: torch.Tensor, shared: int) -> DynamicCache:
    """A cache holding the first ``shared`` tokens of ``input_ids``'s first row (batch 1)."""
    cache = new_cache(model)
    name = cache_argument(model) or "past_key_values"
    keep = {"logits_to_keep": 1} if takes_argument(model, "logits_to_keep") else {}
    model(input_ids=input_ids[:1, :shared], **{name: cache}, use_cache=True, **keep)
    return cache


def forward_with_shared_prefix(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    shared: int,
    opening: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    keep_cache: bool = False,
    one_copy: bool = True,
    **kwargs: Any,
) -> PrefixPass:
    """``model``'s output for positions ``shared:`` of every row, the first ``shared`` tokens
    (the same in every row) computed once.

    ``kwargs`` go to the second call (for example ``logits_to_keep`` over positions
    ``shared:``). Rows may be right-padded; the shared part is never padding. ``opening``
    (from ``encode_opening``) saves computing it again for another group of the same rows;
    ``keep_cache`` returns the rows' keys and values for decoding to continue from;
    ``one_copy=False`` (``speed.shared_opening``) gives every row a copy of the opening in
    scoring passes too.
    """
    rows, length = input_ids.shape
    name = cache_argument(model) or "past_key_values"
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = torch.arange(shared, length, device=input_ids.device).expand(rows, -1)
    # without a gradient (scoring) the opening stays one copy (``ftlight.speed.cascade``): wide
    # evaluation batches would otherwise repeat it per row; a training step's few rows repeat
    # it, which ran faster (SDPA) than attending to one copy with the gradient recorded
    if one_copy and not torch.is_grad_enabled() and cascade.supports(model):
        if opening is None:
            opening = encode_opening(model, input_ids, shared)
        own = attention_mask[:, shared:].bool()
        width = own.shape[1]
        causal = torch.ones((width, width), dtype=torch.bool, device=own.device).tril()
        cache = new_cache(model) if keep_cache else None
        with cascade.attend_to_shared_prefix(model, opening):
            output = model(
                input_ids=input_ids[:, shared:],
                attention_mask=causal[None, None] & own[:, None, None, :],
                position_ids=positions,
                **({name: cache, "use_cache": True} if keep_cache else {"use_cache": False}),
                **kwargs,
            )
        return PrefixPass(output, cache, opening)
    # a copy of the opening per row: computed here, since the cache grows in place
    cache = opening_cache(model, input_ids, shared)
    cache.batch_repeat_interleave(rows)
    output = model(
        input_ids=input_ids[:, shared:],
        attention_mask=attention_mask,
        position_ids=positions,
        **{name: cache},
        use_cache=True,
        **kwargs,
    )
    return PrefixPass(output, cache if keep_cache else None)
