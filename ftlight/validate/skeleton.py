"""A model's skeleton before its weights load: modules and parameter names on the meta device.

Strategies refuse models they cannot train from it (``Strategy.check_model``): a model without
bias terms for ``bitfit``, one whose layers bitsandbytes cannot quantise for ``qlora``. Building
it allocates no memory and reads no weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig

from ftlight.errors import ConfigError
from ftlight.strategies.base import Strategy

log = logging.getLogger("ftlight")


def model_skeleton(config: Mapping[str, Any], auto_class: type) -> nn.Module | None:
    """The model ``config`` (a ``config.json``) describes, as ``auto_class`` builds it, on the
    meta device; None where ``transformers`` cannot build it from the config alone."""
    values = dict(config)
    model_type = values.pop("model_type", None)
    if not model_type or values.get("auto_map"):  # a folder's own code runs only at load
        return None
    try:
        built = AutoConfig.for_model(model_type, **values)
        with torch.device("meta"):
            return auto_class.from_config(built)
    except Exception as err:  # a config this transformers cannot build: checks run at apply
        log.debug("no skeleton of the %s model before loading: %s", model_type, err)
        return None


def check_strategy_fits(strategy: Any, config: Mapping[str, Any] | None, task: Any) -> None:
    """Let the strategy refuse the model (``Strategy.check_model``) before the weights load;
    a folder of already-quantised weights is refused."""
    check_not_quantised(strategy, config)
    hook = getattr(type(strategy), "check_model", Strategy.check_model)
    if config is None or hook is Strategy.check_model:  # nothing to check: build nothing
        return
    skeleton = model_skeleton(config, task.auto_class())
    if skeleton is not None:
        strategy.check_model(skeleton, task)


def check_not_quantised(strategy: Any, config: Mapping[str, Any] | None) -> None:
    """A folder whose ``config.json`` holds a ``quantization_config`` (weights already 4- or
    8-bit, GPTQ, AWQ, ...) cannot be fine-tuned in full precision: its weights are not floats to
    train, and qlora quantises a full-precision model itself (its own settings, its export
    merged over the original weights)."""
    quant = (config or {}).get("quantization_config")
    name = getattr(strategy, "name", "") or type(strategy).__name__
    if not quant:
        return
    method = quant.get("quant_method", "a quantisation") if isinstance(quant, Mapping) else quant
    bits = ""
    if isinstance(quant, Mapping):
        bits = (
            " in 4 bits"
            if quant.get("load_in_4bit")
            else (" in 8 bits" if quant.get("load_in_8bit") else "")
        )
    raise ConfigError(
        f"this model folder holds weights already quantised{bits} ({method}: quantization_config "
        f"in its config.json), which strategy={name} cannot train from. Point model.name_or_path "
        "at the original full-precision model (strategy=qlora quantises it to 4 bits itself)"
    )
