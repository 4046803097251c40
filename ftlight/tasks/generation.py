"""Decoding as the model says: its ``generation_config`` applied to greedy answers.

A model's ``generation_config`` may carry settings that change its greedy answers (Qwen2.5-
Instruct ships a repetition penalty of 1.05). ``model.generate(do_sample=False)`` applies
them, so evaluation and ``ftlight-generate`` do too: ``GreedyAnswers`` holds the settings
(the config with the run's ``task.generation`` overrides), ``processors`` builds
transformers' public logits processors from them for the fast decoder
(``ftlight.speed.decode.fast_greedy``), which hands the pass to ``model.generate`` where a
setting asks for more than a processor (beam search, stop strings). Each prompt is processed
as ``generate`` processes a prompt of its own: padding in a batch never changes an answer.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.generation import (
    ExponentialDecayLengthPenalty,
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

from ftlight.errors import ConfigError

log = logging.getLogger("ftlight")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ids(value: Any) -> bool:
    return isinstance(value, list) and all(_count(v) for v in value)


def _id_lists(value: Any) -> bool:
    return isinstance(value, list) and all(_ids(v) and v for v in value)


#: the settings the fast decoder applies (``task.generation.<key>`` overrides them), each with
#: a check of its value and what that check expects
SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "repetition_penalty": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0,
        "a number > 0 (1.0: no penalty)",
    ),
    "no_repeat_ngram_size": (_count, "a whole number >= 0 (0: off)"),
    "bad_words_ids": (_id_lists, "a list of token-id lists, e.g. [[123], [45, 67]]"),
    "suppress_tokens": (_ids, "a list of token ids"),
    "begin_suppress_tokens": (_ids, "a list of token ids"),
    "min_new_tokens": (_count, "a whole number >= 0"),
    "min_length": (_count, "a whole number >= 0 (prompt and answer together)"),
    "forced_bos_token_id": (_count, "a token id"),
    "forced_eos_token_id": (lambda v: _count(v) or (_ids(v) and v), "a token id or a list"),
    "sequence_bias": (
        lambda v: isinstance(v, list) and all(len(p) == 2 and _ids(p[0]) and p[0] for p in v),
        "a list of [token ids, bias] pairs",
    ),
    "exponential_decay_length_penalty": (
        lambda v: isinstance(v, list | tuple) and len(v) == 2,
        "a [start index, decay factor] pair",
    ),
}

#: settings that change greedy answers in ways no logits processor does: with any of them the
#: pass goes to ``model.generate`` (which applies them), each with when it is on
GENERATE_ONLY: dict[str, Callable[[Any], bool]] = {
    "num_beams": lambda v: v is not None and v > 1,
    "guidance_scale": lambda v: v is not None and v != 1,
    "stop_strings": lambda v: bool(v),
    "watermarking_config": lambda v: v is not None,
    "max_time": lambda v: v is not None,
    "penalty_alpha": lambda v: v is not None and v > 0,
    "dola_layers": lambda v: v is not None,
    "prompt_lookup_num_tokens": lambda v: v is not None,
    "token_healing": lambda v: bool(v),
}


def check_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``task.generation`` as plain values, unset (null) keys left out; a ``ConfigError``
    names an unknown key or a bad value."""
    given = {k: _plain(v) for k, v in (overrides or {}).items() if v is not None}
    for key, value in given.items():
        if key not in SETTINGS:
            raise ConfigError(
                f"task.generation.{key}: not a decoding setting ftlight applies; expected one "
                f"of {', '.join(SETTINGS)}"
            )
        check, expected = SETTINGS[key]
        if not check(value):
            raise ConfigError(
                f"task.generation.{key}={value!r}: expected {expected}; or null for the "
                "model's own setting (its generation_config)"
            )
    return given


def decoding_config(model: nn.Module, overrides: Mapping[str, Any]) -> GenerationConfig:
    """The model's ``generation_config`` (a default one if it has none) with ``overrides``."""
    own = getattr(model, "generation_config", None)
    config = copy.deepcopy(own) if isinstance(own, GenerationConfig) else GenerationConfig()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def generate_only(config: GenerationConfig) -> list[str]:
    """The settings of ``config`` that only ``model.generate`` applies (as ``key=value``)."""
    return [
        f"{key}={getattr(config, key)!r}"
        for key, on in GENERATE_ONLY.items()
        if on(getattr(config, key, None))
    ]


def processors(
    config: GenerationConfig, prompt_length: int, max_new_tokens: int, eos: Sequence[int]
) -> LogitsProcessorList:
    """The logits processors ``generate`` builds from ``config`` for one prompt of
    ``prompt_length`` tokens, in ``generate``'s order (the order changes scores)."""
    c, end = config, torch.tensor(sorted(set(eos)), dtype=torch.long)
    out = LogitsProcessorList()
    if c.sequence_bias is not None:
        out.append(SequenceBiasLogitsProcessor(sequence_bias=c.sequence_bias))
    if c.repetition_penalty is not None and c.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(c.repetition_penalty))
    if c.no_repeat_ngram_size:
        out.append(NoRepeatNGramLogitsProcessor(c.no_repeat_ngram_size))
    if c.bad_words_ids is not None:
        out.append(NoBadWordsLogitsProcessor(c.bad_words_ids, end if len(end) else None))
    if c.min_length and len(end):
        out.append(MinLengthLogitsProcessor(c.min_length, end))
    if c.min_new_tokens and len(end):
        out.append(MinNewTokensLengthLogitsProcessor(prompt_length, c.min_new_tokens, end))
    if c.forced_bos_token_id is not None:
        out.append(ForcedBOSTokenLogitsProcessor(c.forced_bos_token_id))
    if c.forced_eos_token_id is not None:
        forced = c.forced_eos_token_id
        out.append(ForcedEOSTokenLogitsProcessor(prompt_length + max_new_tokens, forced))
    if c.remove_invalid_values is True:
        out.append(InfNanRemoveLogitsProcessor())
    if c.exponential_decay_length_penalty is not None:
        decay = tuple(c.exponential_decay_length_penalty)
        out.append(ExponentialDecayLengthPenalty(decay, end, prompt_length))
    if c.suppress_tokens is not None:
        out.append(SuppressTokensLogitsProcessor(c.suppress_tokens))
    if c.begin_suppress_tokens is not None:
        begin = prompt_length + int(prompt_length == 1 and c.forced_bos_token_id is not None)
        out.append(SuppressTokensAtBeginLogitsProcessor(c.begin_suppress_tokens, begin))
    if c.renormalize_logits is True:
        out.append(LogitNormalization())
    return out


class GreedyAnswers:
    """Greedy answers of a model as its ``generation_config`` (and ``overrides``) says: the
    decoding policy. ``generate`` decodes through ``model.generate``; the fast decoder
    (``ftlight.speed.decode.fast_greedy``) gives the same answers with the same settings."""

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self.overrides = check_overrides(overrides)
        self._noted: set[str] = set()  # why a pass went to ``model.generate``, logged once

    def config(self, model: nn.Module) -> GenerationConfig:
        """The settings answers to ``model``'s prompts are decoded with."""
        return decoding_config(model, self.overrides)

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        eos: Sequence[int],
        pad_id: int,
        tokenizer: Any = None,
        config: GenerationConfig | None = None,
    ) -> torch.Tensor:
        """The ``(rows, steps)`` new tokens for left-padded prompts from greedy
        ``model.generate`` under ``config`` (default: ``self.config(model)``)."""
        config = copy.deepcopy(config) if config is not None else self.config(model)
        config.do_sample, config.num_return_sequences = False, 1
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(set(eos)) or None,
            pad_token_id=pad_id,
            tokenizer=tokenizer,
        )
        return out[:, input_ids.shape[1] :]

    def note(self, why: list[str]) -> None:
        """Log once per reason that a pass went to ``model.generate``."""
        key = ", ".join(why)
        if key not in self._noted:
            self._noted.add(key)
            log.info(
                "decoding with model.generate, not ftlight's greedy decoder: %s (the fast "
                "decoder applies only logits processors)",
                key,
            )


def _plain(value: Any) -> Any:
    """An override as plain Python values (Hydra hands lists over as ``ListConfig``)."""
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    return value
