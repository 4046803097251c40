"""Greedy decoding for evaluation: the shared prompt prefix computed once, finished rows
dropped from the batch.

``model.generate`` on a padded batch pays for every row until the longest answer ends,
and re-encodes the prompt's common opening (a system prompt, an instruction) once per row.
On SFT evaluation both are most of the work: prompts share most of their tokens, and a
fine-tuned model ends most answers well before the slowest one. ``greedy_decode`` gives
the same tokens as greedy ``generate`` (argmax at every step, each row stopping at its
first end token) while encoding the common prefix once and shrinking the batch (and its
key/value cache) as rows finish.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ftlight.speed import cascade
from ftlight.speed.prefix import MIN_SHARED_PREFIX, cache_argument, new_cache, takes_argument


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    share_prefix: bool = True,
) -> torch.Tensor:
    """The new tokens for each prompt of a padded batch, as greedy ``generate`` lays them out.

    Returns a ``(batch, steps)`` tensor: each row's answer up to and including its first end
    token, then ``pad_token_id``; ``steps`` is the longest answer (at most
    ``max_new_tokens``). Prompts may be padded on either side.
    """
    device = input_ids.device
    mask = attention_mask.bool()
    prompts = [row[keep] for row, keep in zip(input_ids, mask, strict=True)]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_decode: a prompt has no tokens")
    batch = len(prompts)
    shared = _shared_prefix(prompts) if share_prefix and batch > 1 else 0
    if shared < MIN_SHARED_PREFIX:
        shared = 0
    cache_name = cache_argument(model) or "past_key_values"
    keep_logits = {"logits_to_keep": 1} if takes_argument(model, "logits_to_keep") else {}
    cache = new_cache(model)
    separate = False  # the opening kept once, outside the rows' cache (``cascade``)
    with contextlib.ExitStack() as scope:
        if shared:  # the common opening, once
            model(
                input_ids=prompts[0][None, :shared],
                **{cache_name: cache},
                use_cache=True,
                **keep_logits,
            )
            if cascade.supports(model):
                opening = [(layer.keys, layer.values) for layer in cache.layers]
                scope.enter_context(cascade.attend_to_shared_prefix(model, opening))
                cache, separate = new_cache(model), True
            else:  # every row's cache starts from a copy of it
                cache.batch_repeat_interleave(batch)
        # the rest of each prompt, left-padded, after the shared part: [shared][pad][rest]
        rests = [p[shared:] for p in prompts]
        width = max(len(r) for r in rests)
        ids = torch.full((batch, width), pad_token_id, dtype=input_ids.dtype, device=device)
        own = torch.zeros((batch, width), dtype=torch.long, device=device)
        for i, rest in enumerate(rests):
            ids[i, width - len(rest) :] = rest
            own[i, width - len(rest) :] = 1
        positions = shared + (own.cumsum(-1) - 1).clamp(min=0)
        if separate:  # 4-D: causal over the rows' own tokens, padding masked
            causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
            step_mask: torch.Tensor = causal[None, None] & own.bool()[:, None, None, :]
        else:
            step_mask = torch.cat([own.new_ones(batch, shared), own], dim=1)
        logits = model(
            input_ids=ids,
            attention_mask=step_mask,
            position_ids=positions,
            **{cache_name: cache},
            use_cache=True,
            **keep_logits,
        ).logits
        next_position = positions[:, -1:] + 1

        eos = torch.tensor(sorted(set(eos_token_ids)), dtype=input_ids.dtype, device=device)
        out = torch.full(
            (batch, max_new_tokens), pad_token_id, dtype=input_ids.dtype, device=device
        )
        alive = torch.arange(batch, device=device)  # the original row of each batch row
        steps = 0
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(-1)
            out[alive, step] = token
            steps = step + 1
            going = ~torch.isin(token, eos)
            if step + 1 == max_new_tokens or not bool(going.any()):
                break
            if not bool(going.all()):  # drop the rows that ended, and their cache
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, token = alive[keep], token[keep]
                own, next_position = own[keep], next_position[keep]
            own = torch.cat([own, own.new_ones(len(alive), 1)], dim=1)
            if separate:
                step_mask = own.bool()[:, None, None, :]
            else:
                step_mask = torch.cat([own.new_ones(len(alive), shared), own], dim=1)
            logits = model(
                input_ids=token[:, None],
                attention_mask=step_mask,
                position_ids=next_position,
                **{cache_name: cache},
                use_cache=True,
                **keep_logits,
            ).logits
            next_position = next_position + 1
    return out[:, :steps]


def can_decode(model: nn.Module) -> bool:
    """Whether ``greedy_decode`` applies: a decoder-only transformers model taking a cache
    and position ids, with a language-modelling head (otherwise use ``model.generate``)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    inner: Any = getattr(model, "_orig_mod", model)
    if callable(getattr(inner, "get_base_model", None)):
        inner = inner.get_base_model()
    can_generate = getattr(inner, "can_generate", None)
    if not (callable(can_generate) and can_generate()):
        return False
    return cache_argument(model) is not None and takes_argument(model, "position_ids")


def _shared_prefix(prompts: list[torch.Tensor]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own (the
    last prompt token's logits give the first answer token)."""
    shortest = min(len(p) for p in prompts)
    first = prompts[0][: shortest - 1]
    same = torch.ones(len(first), dtype=torch.bool, device=first.device)
    for p in prompts[1:]:
        same &= p[: len(first)] == first
    differs = (~same).nonzero()
    return int(differs[0]) if len(differs) else len(first)
