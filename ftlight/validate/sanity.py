"""A run that cannot train, or did not: settings that make training a no-op are refused before
the weights load (a warm-up longer than the run); after training, a non-finite loss stops the
run, trainable weights that never moved fail it, and a validation loss that did not change at
all is reported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ftlight.errors import ConfigError, TrainingError
from ftlight.validate.common import ABSENT, select, show

log = logging.getLogger("ftlight")


def check_before_weights(cfg: DictConfig, data: Any) -> None:
    """Settings that make training a no-op, from the config and the prepared data (a rank
    above the model's widths is the strategy's ``check_model``); raises ``ConfigError``
    before any weights load."""
    check_warmup(cfg, data)
    best = select(cfg, "eval.best")
    if best is not ABSENT and not isinstance(best, bool):
        raise ConfigError(f"eval.best={show(best)} must be true or false")
    if best is True and select(cfg, "trainer.limit_val_batches") == 0:
        raise ConfigError(
            "eval.best=true chooses the weights by the validations during training, but "
            "trainer.limit_val_batches=0 runs none; set trainer.limit_val_batches=null, or "
            "eval.best=false"
        )


def optimizer_steps(cfg: DictConfig, data: Any) -> int | None:
    """The run's optimizer steps as Lightning estimates them, for one process (ranks of a
    distributed run take fewer batches each); None when they cannot be known yet."""
    steps = select(cfg, "trainer.max_steps")
    epochs = select(cfg, "trainer.max_epochs")
    steps = steps if isinstance(steps, int) and steps > 0 else None
    if epochs in (ABSENT, None, -1):
        epochs = None if steps else 1000  # Lightning's default when neither is set
    limit = select(cfg, "trainer.limit_train_batches")
    whole = limit is ABSENT or limit is None or (isinstance(limit, float) and limit == 1.0)
    if not isinstance(epochs, int) or not whole:
        return steps  # a share or a count of the batches: Lightning's arithmetic, not ours
    accumulate = select(cfg, "trainer.accumulate_grad_batches")
    accumulate = accumulate if isinstance(accumulate, int) and accumulate > 0 else 1
    batches = len(data.train_dataloader())
    total = math.ceil(batches / accumulate) * epochs
    return min(total, steps) if steps else total


def check_warmup(cfg: DictConfig, data: Any) -> None:
    """``scheduler.warmup_steps`` shorter than the run: otherwise it never leaves warm-up."""
    warmup = select(cfg, "scheduler.warmup_steps")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup <= 0:
        return
    if select(cfg, "scheduler._target_") in (ABSENT, None):
        return
    total = optimizer_steps(cfg, data)
    if total is None or warmup < total:
        return
    peak = total / (warmup + 1)  # the warm-up's multiplier at the run's last step
    raise ConfigError(
        f"scheduler.warmup_steps={warmup} is not shorter than the run's {total} optimizer "
        f"steps: the learning rate would never leave warm-up (it ends at {peak:.1%} of "
        f"optimizer.lr). Set scheduler.warmup_steps below {total}, e.g. "
        f"scheduler.warmup_steps={total // 10}, or use scheduler.warmup_ratio=0.05"
    )


# -- during and after training ------------------------------------------------------------
def stop_if_not_finite(trainer: Any, loss: torch.Tensor, batch_idx: int) -> None:
    """Raise ``TrainingError`` when a training step's loss is NaN or infinite, before its
    backward pass and optimizer step, so no later checkpoint holds the weights it would give.
    Every rank decides together (a rank that stopped alone would leave the others waiting in
    the gradient all-reduce). ``trainer``: the Lightning trainer, or None outside a fit."""
    finite = bool(torch.isfinite(loss.detach()).all())  # one host sync per micro-batch
    if trainer is not None and trainer.world_size > 1:
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
    if finite:
        return
    lr = None
    if trainer is not None and trainer.optimizers:
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
    checkpoint = getattr(trainer, "checkpoint_callback", None) if trainer else None
    last = checkpoint and (checkpoint.last_model_path or checkpoint.best_model_path)
    kept = (
        f"The last checkpoint written before it is kept: {last}"
        if last
        else "No checkpoint had been written yet"
    )
    raise TrainingError(
        non_finite_loss_message(
            float(loss.detach().float().mean()),
            int(trainer.global_step) if trainer else 0,
            int(trainer.current_epoch) if trainer else 0,
            batch_idx,
            lr,
            str(trainer.precision) if trainer else "32-true",
            kept,
        )
    )


def non_finite_loss_message(
    loss: float, step: int, epoch: int, batch: int, lr: float | None, precision: str, kept: str
) -> str:
    """What to tell the user when the training loss is NaN or infinite."""
    rate = f" (the rate at this step was {lr:.3g})" if lr is not None else ""
    cause = (
        f"a learning rate too high for this model{rate}: lower optimizer.lr, e.g. optimizer.lr=2e-4"
    )
    if precision.startswith(("16", "bf16-true")):  # float16 overflows; bf16 weights lose steps
        cause = (
            f"trainer.precision={precision} overflowing: use trainer.precision=bf16-mixed or "
            f"32-true; or {cause}"
        )
    return (
        f"the training loss is {loss} at step {step} (epoch {epoch}, batch {batch}): training "
        f"stopped, and nothing was evaluated or exported. Likely cause: {cause}. {kept}"
    )


def parameter_sums(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per trainable parameter, its sum and sum of squares in float64: enough to tell later
    whether it moved, without keeping a copy of the weights."""
    sums = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad or p.is_meta:
                continue
            value = p.detach().double()
            pair = torch.stack([value.sum(), value.square().sum()])
            full = getattr(pair, "full_tensor", None)  # an FSDP2 shard: the whole tensor's sums
            sums[name] = (full() if callable(full) else pair).cpu()
    return sums


def moved(start: Mapping[str, torch.Tensor], model: nn.Module) -> bool | None:
    """Whether any trainable parameter changed since ``start`` (``parameter_sums``); None when
    nothing was recorded. Under FSDP2 every rank must call it."""
    if not start:
        return None
    now = parameter_sums(model)
    common = [n for n in start if n in now]
    if not common:
        return None
    return any(not torch.equal(start[n], now[n]) for n in common)


def unchanged_loss_warning(before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """The warning for a validation loss that is the same, to the last bit, before and after."""
    first, last = before.get("loss"), after.get("loss")
    if first is None or last is None or first != last:
        return None
    return (
        f"the validation loss did not change at all ({show(first)} before and after "
        "training): the trained weights make no difference to the model. Check the learning "
        "rate (optimizer.lr), the schedule and the strategy's settings"
    )


def untrained_message(strategy: str, trainable: int, steps: int) -> str:
    """The error for a run whose trainable weights never moved."""
    return (
        f"training did not move any of the {trainable:,} trainable parameters "
        f"(strategy={strategy}, {steps} optimizer steps): the run is a no-op, so nothing was "
        "exported; metrics.json records it. Likely causes: a learning rate too small to "
        "change the weights (optimizer.lr), a schedule that keeps it at 0, or gradients that "
        "never reach the trainable weights"
    )
