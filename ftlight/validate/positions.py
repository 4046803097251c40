"""The model's position limit, and every pass that feeds the model kept within it.

The limit comes from the model's config (``max_position_embeddings``, ``n_positions``,
``n_ctx``). Past it a learned position table (GPT-2, OPT, GPTBigCode, BERT) fails with an
``IndexError`` at the first forward, and a rotary model computes on positions it was never
trained on. Before any weights load, ``check_run`` refuses training rows longer than the
limit and ``check_generation`` sizes generation (each evaluation prompt plus
``task.max_new_tokens``); later passes ask ``model_limit`` (few-shot prompts, general-text
windows, ``ftlight-generate``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from ftlight.errors import ConfigError
from ftlight.validate.common import select, show

log = logging.getLogger("ftlight")

LIMIT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")
"""Config entries that give a model's position limit, in the order they are looked for."""

#: families whose position ids start after the padding id, so that ``pad_token_id + 1`` rows
#: of the table are never a token's position
_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer")


def position_limit(config: Mapping[str, Any]) -> tuple[int, str] | None:
    """The most positions the model takes and the config entry that says so, e.g.
    ``(128, "n_positions=128")``; None when its config names no limit."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and not any(_positive(config.get(k)) for k in LIMIT_KEYS):
        config = text  # a multimodal config keeps its language model's limit apart
    for key in LIMIT_KEYS:
        value = config.get(key)
        if _positive(value):
            limit = int(value)
            if config.get("model_type") in _OFFSET_TYPES:
                limit -= int(config.get("pad_token_id") or 1) + 1
            return limit, f"{key}={value}"
    return None


def model_limit(model: Any) -> int | None:
    """The position limit of a loaded model (read from its config), or None."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    found = position_limit(config.to_dict() if hasattr(config, "to_dict") else vars(config))
    return found[0] if found else None


def check_generation(cfg: DictConfig, data: Any, config: Mapping[str, Any], where: str) -> None:
    """Each evaluation prompt plus ``task.max_new_tokens`` fits in the model's positions.

    With ``task.max_new_tokens=auto`` the budget is cut to what fits (logged); a fixed
    budget that does not fit is refused, naming the limit and the settings to change.
    """
    task = getattr(data, "task", None)
    found = position_limit(config)
    if found is None or not _generates(cfg, task):
        return
    limit, entry = found
    prompts = [
        len(row["prompt_ids"])
        for split, rows in data.encoded.items()
        if split != "train"
        for row in rows
        if "prompt_ids" in row
    ]
    if not prompts:
        return
    longest, wanted = max(prompts), int(task.max_new_tokens)
    room = limit - longest
    if wanted <= room:
        return
    if task.max_new_tokens_setting == "auto" and room > 0:
        log.info(
            "task.max_new_tokens=auto: %d new tokens after the longest evaluation prompt (%d "
            "tokens) would pass the model's %d positions (%s); generating at most %d",
            wanted,
            longest,
            limit,
            entry,
            room,
        )
        task.max_new_tokens = room
        return
    fix = (
        f"set task.max_new_tokens={room} or less (or auto, which fits it)"
        if room > 0
        else "shorten the prompts"
    )
    raise ConfigError(
        f"generation would pass the model's {limit} positions ({entry} {where}): the longest "
        f"evaluation prompt has {longest} tokens and task.max_new_tokens="
        f"{task.max_new_tokens_setting} asks for {wanted} more. {fix[0].upper()}{fix[1:]}, or "
        f"lower data.max_length (now {show(select(cfg, 'data.max_length'))}) to cut the "
        "prompts, or set task.generate=false to score without generating"
    )


def fit_new_tokens(prompt: int, max_new_tokens: int, limit: int | None, option: str) -> int:
    """``max_new_tokens`` cut so that a prompt of ``prompt`` tokens and its answer fit in
    ``limit`` positions; refused when the prompt alone fills them (``option`` names the
    setting in the message)."""
    if limit is None or prompt + max_new_tokens <= limit:
        return max_new_tokens
    if prompt >= limit:
        raise ConfigError(
            f"the prompt has {prompt} tokens, and the model takes at most {limit} positions "
            f"(its config's position limit): no room for an answer. Shorten the prompt to "
            f"fewer than {limit} tokens"
        )
    log.warning(
        "%s=%d: the prompt's %d tokens leave room for %d new tokens in the model's %d "
        "positions; generating at most %d",
        option,
        max_new_tokens,
        prompt,
        limit - prompt,
        limit,
        limit - prompt,
    )
    return limit - prompt


def _generates(cfg: DictConfig, task: Any) -> bool:
    """Whether this run decodes answers: a generating task and an evaluation that runs it."""
    if not getattr(task, "generate", False) or not hasattr(task, "max_new_tokens_setting"):
        return False
    keys = ("eval.before", "eval.after", "eval.generate_during_fit")
    few_shot = select(cfg, "eval.few_shot")
    return any(bool(select(cfg, k)) for k in keys) or few_shot not in (None, 0, False)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
