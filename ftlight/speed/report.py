"""Which speed parts a run's model took, as decided at its first training step: one log line.

Each part decides per model whether it applies (a gated MLP to recompute, a head the loss can
project itself, a cache to decode with); the line says what each decided for this model, so a
user who brings another architecture sees which ones it kept and which it fell back from.
"""

from __future__ import annotations

import os
from typing import Any

from ftlight.speed import cascade
from ftlight.speed.decode import can_decode
from ftlight.speed.kernel_cache import VARIABLES


def _state(value: bool | None) -> str:
    """on / off / n/a (a part that never ran for this task)."""
    return "n/a" if value is None else ("on" if value else "off")


def _decided(calls: Any, name: str, allowed: bool) -> bool | None:
    """What the task's model calls decided, ``False`` where the plan switched the part off."""
    if not allowed:
        return False
    return getattr(calls, name, None)


def cached_kernels() -> str:
    """The CPU kernel caches' capacity in the environment (``speed.kernel_cache``)."""
    values = [os.environ.get(name) for name in VARIABLES]
    if values[0] == values[1]:
        return (
            "1024 kernels (the libraries' default)" if values[0] is None else f"{values[0]} kernels"
        )
    return ", ".join(
        f"{name}={value or 'default'}" for name, value in zip(VARIABLES, values, strict=True)
    )


def speed_parts(module: Any) -> dict[str, str]:
    """What each speed part decided for ``module``'s model (a ``FineTuneModule``); a part the
    run's plan switched off (``speed.<part>=false``) says ``off``."""
    task, model, plan = module.task, module.model, module.speed
    calls = task.calls
    causal = hasattr(task, "generate_text")  # a task whose passes call a language model
    kernel = getattr(module, "_step_kernel", None)
    own = getattr(module.strategy, "speed_parts", ())  # the parts the strategy installs
    decode = "cached greedy" if plan.decode and can_decode(model) else "model.generate"
    return {
        "sliced_loss": _state(_decided(calls, "sliced_loss", plan.sliced_loss) if causal else None),
        "head_loss": _state(_decided(calls, "head_in_loss", plan.head_loss) if causal else None),
        "recompute_activation": f"{module.installed.recomputed_mlps} gated MLPs",
        "frozen_bf16": f"{module.installed.frozen_cast} linears",
        "grouped_kv": _state(plan.grouped_kv),
        "attention_kernel": kernel or "torch's choice",
        "kernel_cache": cached_kernels(),
        "share_prefix": _state(getattr(calls, "share_in_training", False) if causal else None),
        "shared_opening_in_eval": _state(
            plan.shared_opening and cascade.supports(model) if causal else None
        ),
        "decode": decode if causal else "n/a",
        "lora_fold": _state(plan.lora_fold if "lora_fold" in own else None),
        "lora_fused": _state(plan.lora_fused if "lora_fused" in own else None),
    }


def speed_line(module: Any) -> str:
    """The log line: ``speed parts on <class>: name=decision, ...``."""
    inner = module.model
    if callable(getattr(inner, "get_base_model", None)):
        inner = inner.get_base_model()
    parts = ", ".join(f"{k}={v}" for k, v in speed_parts(module).items())
    return f"speed parts on {type(inner).__name__}: {parts}"
