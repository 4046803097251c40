"""The ``lora`` strategy: a frozen model plus trainable low-rank adapters (peft)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from ftlight.errors import ConfigError
from ftlight.strategies import Strategy
from ftlight.tasks import Task
from ftlight_lora.fused import fuse
from ftlight_lora.merge import merged_lora

log = logging.getLogger("ftlight.strategies.lora")


class LoRAStrategy(Strategy):
    """LoRA adapters of rank ``r`` on ``target_modules`` (default: every linear layer of the body).

    Modules the task initialises fresh (a classifier) train in full and are saved with the
    adapter (peft ``modules_to_save``).
    """

    name: ClassVar[str] = "lora"
    speed_parts: ClassVar[tuple[str, ...]] = ("lora_fold", "lora_fused")

    def __init__(
        self,
        r: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: str | list[str] = "all-linear",
        bias: Literal["none", "all", "lora_only"] = "none",  # peft's choices
        use_rslora: bool = False,
        use_dora: bool = False,
    ) -> None:
        if r < 1:
            raise ConfigError(f"strategy.r={r} must be a positive integer (try 8, 16 or 32)")
        if alpha is not None and float(alpha) == 0.0:
            # peft scales each adapter by alpha / r: at 0 training changes nothing at all
            raise ConfigError(
                "strategy.alpha=0 scales every adapter to zero, so training would change "
                "nothing; set strategy.alpha=null (2 * r) or a positive value, e.g. "
                f"strategy.alpha={2 * r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"strategy.dropout={dropout} must be in [0, 1)")
        self.r = r
        self.alpha = float(alpha) if alpha is not None else float(2 * r)
        self.dropout = dropout
        self.target_modules = (
            target_modules if isinstance(target_modules, str) else list(target_modules)
        )
        self.bias = bias
        self.use_rslora = use_rslora
        self.use_dora = use_dora

    def check_model(self, model: nn.Module, task: Task) -> None:
        """A rank above the width of every layer it adapts (read from the model's skeleton,
        before the weights load): no such layer's weight has a higher rank, and the adapters
        would hold more parameters than the layers they adapt."""
        widths = dict(self._adapted_widths(model))
        if not widths or self.r <= max(widths.values()):
            return
        name, width = max(widths.items(), key=lambda kv: kv[1])
        raise ConfigError(
            f"strategy.r={self.r} is above the rank of every layer it adapts: the widest is "
            f"{name}, {width} wide (the smaller of its input and output sizes), and the "
            "adapters would train more parameters than the layers hold. Use "
            f"strategy.r={width} at most, e.g. strategy.r={min(8, width)}, or strategy=full"
        )

    def _adapted_widths(self, model: nn.Module) -> Iterator[tuple[str, int]]:
        """The linear layers ``target_modules`` names and the rank each weight can have."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            kind = type(module).__name__
            if kind not in ("Linear", "Conv1D") or weight is None or weight.dim() != 2:
                continue
            if self.target_modules == "all-linear":
                if module is head:  # peft leaves the output layer out of all-linear
                    continue
            elif isinstance(self.target_modules, str):  # peft full-matches a regex
                if not re.fullmatch(self.target_modules, name):
                    continue
            elif not any(name == t or name.endswith(f".{t}") for t in self.target_modules):
                continue
            yield name, min(weight.shape)

    def lora_config(self, model: nn.Module, task: Task) -> LoraConfig:
        """The peft config for this model and task."""
        fresh = task.new_module_names(model)
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias=self.bias,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            task_type=task.peft_task_type,
            modules_to_save=fresh or None,
        )

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Wrap the model with peft LoRA (once)."""
        if isinstance(model, PeftModel):
            return model
        try:
            adapted = get_peft_model(model, self.lora_config(model, task))
        except ValueError as err:
            raise ConfigError(
                f"strategy.target_modules={self.target_modules!r} does not fit "
                f"{type(model).__name__}: {err}. Use 'all-linear' or names of its linear layers."
            ) from err
        if self.speed.lora_fused:  # the adapter's product inside the matrix product (``fused``)
            fuse(adapted)
        return adapted

    @contextlib.contextmanager
    def evaluation_view(self, model: nn.Module) -> Iterator[None]:
        """The adapters folded into their weights for the pass (``speed.lora_fold``; in place,
        put back bit for bit: ``ftlight_lora.merge``); zero adapters are skipped."""
        if not self.speed.lora_fold:
            yield
            return
        with merged_lora(model) as merged:
            log.debug("evaluating with %d LoRA layers merged", merged)
            yield

    def merged_model(self, model: nn.Module) -> nn.Module:
        """Fold the adapters into the base weights (in place) and return the plain model."""
        if isinstance(model, PeftModel):
            return model.merge_and_unload()
        return model

    def export(
        self, model: nn.Module, save: Callable[[nn.Module, Path], None], out_dir: Path
    ) -> dict[str, Path]:
        """``adapter/`` (peft format) first, then ``model/`` with the adapters merged."""
        adapter = out_dir / "adapter"
        save(model, adapter)
        merged = out_dir / "model"
        save(self.merged_model(model), merged)
        return {"adapter": adapter, "model": merged}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Counts plus the rank."""
        return {**super().describe(model), "r": self.r}
