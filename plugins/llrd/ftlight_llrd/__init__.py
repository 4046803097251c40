"""The ``llrd`` strategy: every weight trains, lower blocks at geometrically smaller rates."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ftlight.errors import ConfigError, ModelError
from ftlight.models.introspect import find_blocks
from ftlight.strategies import Strategy
from ftlight.tasks import Task


class LayerwiseLRDecayStrategy(Strategy):
    """Layer-wise learning-rate decay (ULMFiT's discriminative rates, as used for BERT/ELECTRA).

    Everything trains. The task head and whatever follows the last block run at the configured
    learning rate; block ``i`` of ``L`` at ``decay ** (L - i)`` times it; the input embeddings
    at ``decay ** (L + 1)`` times it. Lower layers hold general features that a small task
    should move least.
    """

    name: ClassVar[str] = "llrd"

    def __init__(self, decay: float = 0.8) -> None:
        if not 0.0 < decay <= 1.0:
            raise ConfigError(
                f"strategy.decay={decay} must be in (0, 1]: the factor between the learning "
                "rates of neighbouring blocks (1.0 is plain full fine-tuning; try 0.8)"
            )
        self.decay = decay

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Unfreeze every parameter."""
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def optimizer_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """One group per depth: embeddings, each block, then the head at the full rate."""
        found = find_blocks(model)
        if found is None:
            raise ModelError(
                f"strategy=llrd needs the repeated transformer blocks of {type(model).__name__} "
                "and found none; use strategy=full for this model"
            )
        path, blocks = found
        depth = len(blocks)
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        embedding_params = {id(p) for p in embedding.parameters()} if embedding else set()
        levels: dict[int, list[tuple[str, nn.Parameter]]] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith(f"{path}."):
                level = int(name[len(path) + 1 :].split(".", 1)[0]) + 1
            elif id(p) in embedding_params:
                level = 0
            else:  # the head, final norms, poolers: above the last block
                level = depth + 1
            levels.setdefault(level, []).append((name, p))
        return [
            {"params": params, "lr_scale": self.decay ** (depth + 1 - level)}
            for level, params in sorted(levels.items())
        ]
