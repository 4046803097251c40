"""The ``head`` strategy: transfer learning; the body is frozen, the head (+ last blocks) trains."""

from __future__ import annotations

import logging
from typing import ClassVar

from torch import nn

from ftlight.errors import ConfigError, ModelError
from ftlight.models.introspect import body_of, find_blocks, output_embedding_is_tied
from ftlight.strategies import Strategy
from ftlight.tasks import Task

log = logging.getLogger("ftlight.strategies.head")


class HeadStrategy(Strategy):
    """Freeze the pretrained body; train the head and the last ``num_layers`` blocks.

    The task names its head (``Task.head_names``): the LM head for a causal LM; the classifier,
    and the pooler feeding it where the body has one, for classification. A head tied to the
    input embedding is untied first (a copy of the weight trains; the embedding stays frozen).
    """

    name: ClassVar[str] = "head"

    def __init__(self, num_layers: int = 0) -> None:
        if num_layers < 0:
            raise ConfigError(f"strategy.num_layers={num_layers} must be 0 or more")
        self.num_layers = num_layers

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Freeze everything, then unfreeze the head and the last ``num_layers`` blocks."""
        heads = task.head_names(model)
        if not heads:
            raise ModelError(
                f"strategy=head cannot find the task head of {type(model).__name__}: it has no "
                "module with parameters outside its body (base_model_prefix="
                f"{getattr(model, 'base_model_prefix', None)!r}). Use strategy=lora or "
                "strategy=full for this model."
            )
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if out is not None and output_embedding_is_tied(model) and _within(model, out, heads):
            out.weight = nn.Parameter(out.weight.detach().clone())
            model.config.tie_word_embeddings = False
            if hasattr(model.config, "get_text_config"):
                model.config.get_text_config().tie_word_embeddings = False
            log.info("untied the LM head from the input embeddings so that only the head trains")
        for p in model.parameters():
            p.requires_grad_(False)
        for name in heads:
            for p in model.get_submodule(name).parameters():
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


def _within(model: nn.Module, module: nn.Module, names: list[str]) -> bool:
    """Whether ``module`` is one of the named modules or inside one."""
    return any(module is m for name in names for m in model.get_submodule(name).modules())
