"""The ``bitfit`` strategy: only the bias terms (and any freshly initialised head) train."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ftlight.errors import ConfigError
from ftlight.strategies import Strategy
from ftlight.tasks import Task


class BitFitStrategy(Strategy):
    """BitFit (Ben Zaken et al., 2022): freeze every weight, train every bias.

    A head the task initialises fresh (a classifier) trains in full: its weights are random.
    A model whose body has no bias terms (Llama, Mistral...) is refused.
    """

    name: ClassVar[str] = "bitfit"

    def check_model(self, model: nn.Module, task: Task) -> None:
        """A model without bias terms outside its new head is refused before it loads."""
        _biases(model, task)

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Freeze everything, then unfreeze the biases and the task's fresh modules."""
        fresh = task.new_module_names(model)
        biases = _biases(model, task)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in biases:
            p.requires_grad_(True)
        for name in fresh:
            for p in model.get_submodule(name).parameters():
                p.requires_grad_(True)
        return model


def _biases(model: nn.Module, task: Task) -> list[nn.Parameter]:
    """The bias terms outside the task's fresh modules; refused when there are none."""
    fresh = task.new_module_names(model)
    fresh_params = {id(p) for n in fresh for p in model.get_submodule(n).parameters()}
    biases = [
        p
        for n, p in model.named_parameters()
        if n.rsplit(".", 1)[-1] == "bias" and id(p) not in fresh_params
    ]
    if not biases:
        raise ConfigError(
            f"strategy=bitfit trains bias terms, but {type(model).__name__} has none outside "
            "its new head. Use strategy=lora or strategy=head for this model."
        )
    return biases
