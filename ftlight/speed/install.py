"""The speed parts that change the model itself, installed once the strategy has applied.

``configure_model`` applies the strategy, then hands the model to ``install_model_parts``
with the run's plan: frozen linears kept in the autocast dtype (``speed.frozen_bf16``), block
activations recomputed in backward (``speed.activation_checkpointing``) or only the gated MLP's
activation (``speed.recompute_activation``), and compiled blocks (``speed.compile``). What each
took is kept for the run's ``speed parts`` line and for the export.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ftlight.errors import ConfigError
from ftlight.speed.gated import recompute_gated_activations
from ftlight.speed.lowp import cast_frozen_linears
from ftlight.speed.plan import SpeedPlan

log = logging.getLogger("ftlight")


@dataclass(frozen=True)
class Installed:
    """What the model-changing parts took: linears cast, gated MLPs recomputing."""

    frozen_cast: int = 0
    recomputed_mlps: int = 0


def install_model_parts(
    plan: SpeedPlan,
    model: nn.Module,
    blocks: Iterable[nn.Module],
    frozen_dtype: torch.dtype | None,
    sharded: bool,
) -> Installed:
    """Install the plan's model-changing parts on ``model`` (``blocks``: its transformer
    blocks, the strategy's shard units). ``frozen_dtype`` is the autocast dtype (None: no
    autocast); sharded weights (FSDP) keep their dtype."""
    frozen_cast = recomputed = 0
    if plan.frozen_bf16 and frozen_dtype is not None and not sharded:
        frozen_cast = cast_frozen_linears(model, frozen_dtype)
    if plan.activation_checkpointing:
        enable_activation_checkpointing(model)
    elif plan.recompute_activation:  # checkpointed blocks keep nothing of the MLP
        recomputed = recompute_gated_activations(model)
        log.debug("recompute_activation: %d gated MLPs", recomputed)
    if plan.compile:
        for block in blocks:
            block.compile(dynamic=True)
    return Installed(frozen_cast=frozen_cast, recomputed_mlps=recomputed)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of every block of a ``transformers`` model."""
    get_base = getattr(model, "get_base_model", None)  # PEFT wrappers
    hf = get_base() if callable(get_base) else model
    enable = getattr(hf, "activation_checkpointing_enable", None)
    if enable is None or not getattr(hf, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"speed.activation_checkpointing=true, but {type(hf).__name__} does not support it; "
            "set speed.activation_checkpointing=false"
        )
    enable(activation_checkpointing_kwargs={"use_reentrant": False})
