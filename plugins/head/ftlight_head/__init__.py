"""The ``head`` strategy: transfer learning; the body is frozen, the head (+ last blocks) trains."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from ftlight.errors import ConfigError, ModelError
from ftlight.models.introspect import body_of, find_blocks, output_embedding_is_tied
from ftlight.strategies import Strategy
from ftlight.tasks import Task

log = logging.getLogger("ftlight.strategies.head")


class HeadStrategy(Strategy):
    """Freeze the pretrained body; train the head and the last ``num_layers`` blocks.

    The head is every module outside the body (``base_model_prefix``): the classifier for
    classification, the LM head for causal LM. A causal-LM head tied to the input embedding is
    untied first (a copy of the weight trains; the embedding stays frozen).
    """

    name: ClassVar[str] = "head"

    def __init__(self, num_layers: int = 0) -> None:
        if num_layers < 0:
            raise ConfigError(f"strategy.num_layers={num_layers} must be 0 or more")
        self.num_layers = num_layers

    def validate(self, trainer_cfg: Mapping[str, Any], task: Task) -> None:
        """Nothing to reject up front; the head is looked up when the model is known."""

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Freeze everything, then unfreeze the head and the last ``num_layers`` blocks."""
        heads = [
            name
            for name in task.head_names(model)
            if any(True for _ in getattr(model, name).parameters())
        ]
        if not heads:
            raise ModelError(
                f"strategy=head cannot find the task head of {type(model).__name__}: it has no "
                "module with parameters outside its body (base_model_prefix="
                f"{getattr(model, 'base_model_prefix', None)!r}). Use strategy=lora or "
                "strategy=full for this model."
            )
        if task.kind == "sft" and output_embedding_is_tied(model):
            out = model.get_output_embeddings()
            out.weight = nn.Parameter(out.weight.detach().clone())
            model.config.tie_word_embeddings = False
            if hasattr(model.config, "get_text_config"):
                model.config.get_text_config().tie_word_embeddings = False
            log.info("untied the LM head from the input embeddings so that only the head trains")
        for p in model.parameters():
            p.requires_grad_(False)
        for name in heads:
            for p in getattr(model, name).parameters():
                p.requires_grad_(True)
        if self.num_layers:
            found = find_blocks(body_of(model) or model)
            if found is None or self.num_layers > len(found[1]):
                available = 0 if found is None else len(found[1])
                raise ConfigError(
                    f"strategy.num_layers={self.num_layers} but {type(model).__name__} has "
                    f"{available} transformer blocks; use a value from 0 to {available}"
                )
            for block in list(found[1])[-self.num_layers :]:
                for p in block.parameters():
                    p.requires_grad_(True)
        log.info(
            "head strategy trains %s%s",
            ", ".join(heads),
            f" + the last {self.num_layers} blocks" if self.num_layers else "",
        )
        return model
