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
    """Let the strategy refuse the model (``Strategy.check_model``) before the weights load."""
    hook = getattr(type(strategy), "check_model", Strategy.check_model)
    if config is None or hook is Strategy.check_model:  # nothing to check: build nothing
        return
    skeleton = model_skeleton(config, task.auto_class())
    if skeleton is not None:
        strategy.check_model(skeleton, task)
