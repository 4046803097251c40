"""Greedy decoding for evaluation: the shared prompt prefix computed once, finished rows
dropped from the batch.

``model.generate`` on a padded batch pays for every row until the longest answer ends,
and re-encodes the prompt's common opening (a system prompt, an instruction) once per row.
On SFT evaluation both are most of the work: prompts share most of their tokens, and a
fine-tuned model ends most answers well before the slowest one. ``greedy_decode`` gives
the same tokens as greedy ``generate`` (argmax at every step, each row stopping at its
first end token) while encoding the common prefix once and shrinking the batch (and its
key/value cache) as rows finish. The cache has room reserved for the answer, so each step
writes its token in place instead of copying the cache; and when a scoring pass has already
run the prompts (``Prompted``), decoding continues from its keys and values. Logits processors
(the model's ``generation_config``: ``ftlight.tasks.generation``) change each row's scores
before its argmax, as ``generate`` applies them to a prompt of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.generation import LogitsProcessorList

from ftlight.speed import cascade
from ftlight.speed.prefix import (
    MIN_SHARED_PREFIX,
    cache_argument,
    encode_opening,
    new_cache,
    opening_cache,
    reserve,
    takes_argument,
)
from ftlight.tasks.generation import GreedyAnswers, generate_only, processors


@dataclass
class Prompted:
    """Prompts already run through the model: where greedy decoding continues from.

    ``greedy_decode`` builds one itself; a scoring pass over the same prompts (evaluation's
    loss pass, ``CausalLMTask.evaluation_outputs``) can hand over its keys and values instead,
    so the prompts are not encoded twice.
    """

    cache: DynamicCache  # every row's cached keys and values
    valid: torch.Tensor  # (rows, cached) bool: the cached positions that are the row's prompt
    positions: torch.Tensor  # (rows,) the position id of each row's first new token
    first: torch.Tensor  # (rows,) each row's first new token (argmax after its prompt)
    #: per layer, the shared opening's (keys, values) at batch 1 when kept apart from the rows'
    #: cache (``ftlight.speed.cascade``); None when the cache holds it per row
    opening: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None
    rows: torch.Tensor | None = None  # the output row of each cached row (default: in order)
    #: (rows, vocabulary) float32 scores of each row's first new token, before any processor:
    #: what logits processors start from (None: only ``first`` is known)
    scores: torch.Tensor | None = None


#: per output row, its prompt's tokens (no padding) and the processors of its scores
RowProcessors = Sequence[tuple[torch.Tensor, LogitsProcessorList]]


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    share_prefix: bool = True,
    prompted: Prompted | None = None,
    processors: RowProcessors | None = None,
) -> torch.Tensor:
    """The new tokens for each prompt of a padded batch, as greedy ``generate`` lays them out.

    Returns a ``(batch, steps)`` tensor: each row's answer up to and including its first end
    token, then ``pad_token_id``; ``steps`` is the longest answer (at most
    ``max_new_tokens``). Prompts may be padded on either side. ``prompted``: the prompts
    already encoded (``input_ids`` and ``attention_mask`` are then not read); it must carry
    ``scores`` when ``processors`` are given. ``processors``: each row's prompt and logits
    processors, applied to its scores before every argmax.
    """
    if prompted is None:
        prompted = _prompt(model, input_ids, attention_mask, share_prefix, pad_token_id)
    if processors and prompted.scores is None:
        raise ValueError("greedy_decode: processors need the prompts' scores (Prompted.scores)")
    with contextlib.ExitStack() as scope:
        if prompted.opening is not None:
            scope.enter_context(cascade.attend_to_shared_prefix(model, prompted.opening))
        return _continue(model, prompted, max_new_tokens, eos_token_ids, pad_token_id, processors)


def _prompt(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    share_prefix: bool,
    pad_token_id: int,
) -> Prompted:
    """Every prompt through the model: the common opening once, then the rest of each."""
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
    opening = None
    if shared and cascade.supports(model):  # the opening once, kept apart
        opening = encode_opening(model, prompts[0][None], shared)
    elif shared:  # every row's cache starts from a copy of it
        cache = opening_cache(model, prompts[0][None], shared)
        cache.batch_repeat_interleave(batch)
    # the rest of each prompt, left-padded, after the shared part: [shared][pad][rest]
    rests = [p[shared:] for p in prompts]
    width = max(len(r) for r in rests)
    ids = torch.full((batch, width), pad_token_id, dtype=input_ids.dtype, device=device)
    own = torch.zeros((batch, width), dtype=torch.bool, device=device)
    for i, rest in enumerate(rests):
        ids[i, width - len(rest) :] = rest
        own[i, width - len(rest) :] = True
    positions = shared + (own.cumsum(-1) - 1).clamp(min=0)
    with contextlib.ExitStack() as scope:
        if opening is not None:  # 4-D: causal over the rows' own tokens, padding masked
            scope.enter_context(cascade.attend_to_shared_prefix(model, opening))
            causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
            valid = own
            step_mask: torch.Tensor = causal[None, None] & own[:, None, None, :]
        else:
            valid = torch.cat([own.new_ones(batch, shared), own], dim=1)
            step_mask = valid.long()
        logits = model(
            input_ids=ids,
            attention_mask=step_mask,
            position_ids=positions,
            **{cache_name: cache},
            use_cache=True,
            **keep_logits,
        ).logits
    last = logits[:, -1]
    return Prompted(
        cache, valid, positions[:, -1] + 1, last.argmax(-1), opening, scores=last.float()
    )


def _continue(
    model: nn.Module,
    prompted: Prompted,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    processors: RowProcessors | None = None,
) -> torch.Tensor:
    """Greedy steps from ``prompted`` until every row has ended or the budget is spent."""
    cache_name = cache_argument(model) or "past_key_values"
    keep_logits = {"logits_to_keep": 1} if takes_argument(model, "logits_to_keep") else {}
    separate = prompted.opening is not None
    cache = prompted.cache
    reserve(cache, max_new_tokens)  # appending writes in place, not a copy of the cache
    token, valid = prompted.first, prompted.valid
    device, batch = token.device, len(token)
    alive = prompted.rows if prompted.rows is not None else torch.arange(batch, device=device)
    next_position = prompted.positions[:, None]
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=token.dtype, device=device)
    out = torch.full((batch, max_new_tokens), pad_token_id, dtype=token.dtype, device=device)
    if processors:
        token = _processed(prompted.scores, alive, out[:, :0], processors)
    steps = 0
    for step in range(max_new_tokens):
        out[alive, step] = token
        steps = step + 1
        going = ~torch.isin(token, eos)
        if step + 1 == max_new_tokens or not bool(going.any()):
            break
        if not bool(going.all()):  # drop the rows that ended, and their cache
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, token = alive[keep], token[keep]
            valid, next_position = valid[keep], next_position[keep]
        valid = torch.cat([valid, valid.new_ones(len(alive), 1)], dim=1)
        step_mask = valid[:, None, None, :] if separate else valid.long()
        logits = model(
            input_ids=token[:, None],
            attention_mask=step_mask,
            position_ids=next_position,
            **{cache_name: cache},
            use_cache=True,
            **keep_logits,
        ).logits
        if processors:  # in float32, as ``generate`` scores
            token = _processed(logits[:, -1].float(), alive, out[:, : step + 1], processors)
        else:
            token = logits[:, -1].argmax(-1)
        next_position = next_position + 1
    return out[:, :steps]


def _processed(
    scores: torch.Tensor, alive: torch.Tensor, answers: torch.Tensor, processors: RowProcessors
) -> torch.Tensor:
    """The argmax of each live row's ``scores`` after its processors, which see the row's
    prompt and ``answers`` so far (one row at a time: a batch's padding is no input)."""
    tokens = torch.empty(len(alive), dtype=answers.dtype, device=scores.device)
    for i, row in enumerate(alive.tolist()):
        prompt, steps = processors[row]
        ids = torch.cat([prompt.to(answers.device), answers[row]])[None]
        tokens[i] = steps(ids, scores[i : i + 1].clone()).argmax(-1)[0]
    return tokens


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


@torch.no_grad()
def fast_greedy(
    answers: GreedyAnswers,
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos: list[int],
    pad_id: int,
    prompted: Prompted | None = None,
    tokenizer: Any = None,
) -> torch.Tensor:
    """The ``(rows, steps)`` new tokens for left-padded prompts, as greedy ``generate`` gives
    each prompt alone under ``answers``' settings, from ftlight's cached decoder where it
    applies (logits processors only; a key/value cache; within a sliding window), else from
    ``model.generate``. ``prompted``: the prompts already encoded."""
    config = answers.config(model)
    slow = generate_only(config)
    if not can_decode(model):
        slow = slow or ["a model without a key/value cache interface"]
    window = cascade.attention_window(model)
    if window is not None and input_ids.shape[1] + max_new_tokens > window:
        slow = slow or [
            f"prompts and answers longer than the model's sliding attention window ({window} "
            "tokens)"
        ]
    if slow:
        answers.note(slow)
        return answers.generate(
            model, input_ids, attention_mask, max_new_tokens, eos, pad_id, tokenizer, config
        )
    prompts = [row[keep] for row, keep in zip(input_ids, attention_mask.bool(), strict=True)]
    steps = [processors(config, len(p), max_new_tokens, eos) for p in prompts]
    if not any(steps):
        prompts, steps = [], []  # plain argmax
    elif prompted is not None and prompted.scores is None:
        prompted = None  # the first step needs the prompts' scores, not just their argmax
    return greedy_decode(
        model,
        input_ids,
        attention_mask,
        max_new_tokens,
        eos,
        pad_id,
        prompted=prompted,
        processors=list(zip(prompts, steps, strict=True)) or None,
    )
