"""The strategy contract: which parameters of a model train, and what a run saves and exports."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ftlight.errors import ConfigError
from ftlight.models.introspect import find_blocks
from ftlight.speed.plan import SpeedPlan

if TYPE_CHECKING:
    from ftlight.tasks.base import Task

log = logging.getLogger(__name__)


class Strategy:
    """Base class of every strategy plugin; every hook has a working default.

    A strategy decides which parameters train (``apply``), what a checkpoint must hold
    (``trainable_state_dict``), how the model is sharded (``shard_units``) and what the run
    exports (``export``). It is the one place that sets ``requires_grad``.
    """

    name: ClassVar[str] = ""
    #: the run's speed plan (``ftlight.speed.plan``), given by the module before ``apply``: a
    #: strategy that installs a speed part of its own reads its switch here (``lora_fused``)
    speed: SpeedPlan = SpeedPlan()
    #: the plan's parts this strategy installs itself (the run's speed line reports them)
    speed_parts: ClassVar[tuple[str, ...]] = ()

    def load_kwargs(self, task: Task) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments (quantisation config, dtype) for the base model."""
        return {}

    def validate(self, trainer_cfg: Mapping[str, Any], task: Task) -> None:
        """Reject combinations that cannot work, before anything heavy; raise ``ConfigError``."""

    def check_model(self, model: nn.Module, task: Task) -> None:
        """Refuse a model this strategy cannot train, before its weights load; ``model`` is
        its skeleton on the meta device (``ftlight.validate.skeleton``); raise ``ConfigError``."""

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Freeze / inject adapters and return the model to train (may wrap it). Idempotent."""
        return model

    def optimizer_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """How the optimizer sees the trainable parameters: a list of groups, each
        ``{"params": [(name, parameter), ...], "lr_scale": float}`` (``lr_scale`` optional,
        multiplying the configured learning rate). By default one group of every parameter
        that requires a gradient; weight decay is split off per group by the module."""
        return [{"params": [(n, p) for n, p in model.named_parameters() if p.requires_grad]}]

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold: by default every trainable parameter."""
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(
        self, model: nn.Module, state: Mapping[str, torch.Tensor]
    ) -> None:
        """Load what ``trainable_state_dict`` saved; every expected key must be present."""
        expected = set(self.trainable_state_dict(model))
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - {n for n, _ in model.named_parameters()})
        if missing or unexpected:
            raise ConfigError(
                f"checkpoint does not match strategy={self.name}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}. Resume with the same strategy and model config "
                "that wrote the checkpoint."
            )
        model.load_state_dict(dict(state), strict=False)

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        """The blocks FSDP wraps one by one: the model's repeated transformer blocks."""
        found = find_blocks(model)
        return list(found[1]) if found else []

    def prepare_for_eval(self, model: nn.Module) -> None:
        """Called right after the model is put in eval mode (a hook for quantised layers)."""

    @contextlib.contextmanager
    def evaluation_view(self, model: nn.Module) -> Iterator[None]:
        """The model as an evaluation pass runs it, for the pass's length; it must compute the
        same function and leave every weight as it was (LoRA folds its adapters in:
        ``speed.lora_fold``). By default the model as it is."""
        yield

    def merged_model(self, model: nn.Module) -> nn.Module:
        """A plain ``transformers`` model with everything trained folded in, ready to save."""
        return model

    def export(
        self, model: nn.Module, save: Callable[[nn.Module, Path], None], out_dir: Path
    ) -> dict[str, Path]:
        """Write the run's export under ``out_dir``; ``save`` writes one model folder atomically."""
        target = out_dir / "model"
        save(self.merged_model(model), target)
        return {"model": target}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Trainable and total parameter counts (counting 4-bit weights by their element count)."""
        trainable = total = 0
        for p in model.parameters():
            n = _numel(p)
            total += n
            if p.requires_grad:
                trainable += n
        return {"trainable": trainable, "total": total}


def _numel(p: torch.Tensor) -> int:
    """Element count of a parameter; packed 4-bit weights report their unpacked size."""
    quant_state = getattr(p, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    return p.numel()
