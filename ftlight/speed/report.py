"""Which speed parts a run's model took, as decided at its first training step: one log line.

Each part decides per model whether it applies (a gated MLP to recompute, a head the loss can
project itself, a cache to decode with); the line says what each decided for this model, so a
user who brings another architecture sees which ones it kept and which it fell back from.
"""

from __future__ import annotations

from typing import Any

from ftlight.speed import cascade
from ftlight.speed.decode import can_decode


def _state(value: bool | None) -> str:
    """on / off / n/a (a part that never ran for this task)."""
    return "n/a" if value is None else ("on" if value else "off")


def speed_parts(module: Any) -> dict[str, str]:
    """What each speed part decided for ``module``'s model (a ``FineTuneModule``)."""
    task, model = module.task, module.model
    causal = hasattr(task, "sliced_loss")
    kernel = getattr(module, "_step_kernel", None)
    return {
        "sliced_loss": _state(getattr(task, "sliced_loss", None)),
        "head_loss": _state(getattr(task, "head_in_loss", None)),
        "recompute_activation": f"{getattr(module, 'recomputed_mlps', 0)} gated MLPs",
        "frozen_bf16": f"{getattr(module, 'frozen_cast', 0)} linears",
        "attention_kernel": kernel or "torch's choice",
        "share_prefix": _state(getattr(task, "prefix_sharing", None) if causal else None),
        "shared_opening_in_eval": _state(cascade.supports(model) if causal else None),
        "decode": ("cached greedy" if can_decode(model) else "model.generate") if causal else "n/a",
    }


def speed_line(module: Any) -> str:
    """The log line: ``speed parts on <class>: name=decision, ...``."""
    inner = module.model
    if callable(getattr(inner, "get_base_model", None)):
        inner = inner.get_base_model()
    parts = ", ".join(f"{k}={v}" for k, v in speed_parts(module).items())
    return f"speed parts on {type(inner).__name__}: {parts}"
