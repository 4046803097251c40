"""Which weights a run keeps, by a validation metric: early stopping (``callbacks.early_stopping``)
and the best checkpoint (``callbacks.best``, used when ``eval.best=true``), what peers call
``load_best_model_at_end``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

from ftlight.errors import ConfigError

log = logging.getLogger("ftlight")

MODES = ("min", "max")


def _check(key: str, monitor: str, mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"callbacks.{key}.mode={mode!r} is not a choice; use min or max")
    if not monitor:
        raise ConfigError(
            f"callbacks.{key}.monitor is empty; e.g. callbacks.{key}.monitor=val/loss"
        )


class EarlyStop(EarlyStopping):
    """Lightning's ``EarlyStopping``, checked after each validation during the fit; off while
    ``patience`` is null. Remembers the step it stopped at."""

    def __init__(
        self,
        patience: int | None = None,
        monitor: str = "val/loss",
        mode: str = "min",
        min_delta: float = 0.0,
    ) -> None:
        _check("early_stopping", monitor, mode)
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 0
        ):
            raise ConfigError(
                f"callbacks.early_stopping.patience={patience!r} must be null (off) or an "
                "integer >= 0, the validations without improvement to wait; e.g. "
                "callbacks.early_stopping.patience=3"
            )
        super().__init__(
            monitor=monitor,
            mode=mode,
            min_delta=float(min_delta),
            patience=patience or 0,
            check_on_train_epoch_end=False,  # right after the validation that logged it
        )
        self.enabled = patience is not None
        self.stopped_step: int | None = None

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        if not self.enabled:
            return
        stopping = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if trainer.should_stop and not stopping:
            self.stopped_step = int(trainer.global_step)
            log.info(
                "early stopping at step %d: %s did not improve for %d validations",
                self.stopped_step,
                self.monitor,
                self.wait_count,
            )


class BestCheckpoint(L.Callback):
    """Keeps ``<dirpath>/best.ckpt``: the run at the validation during the fit with the best
    ``monitor`` (a whole checkpoint, so a run can also resume from it). Off unless
    ``enabled``."""

    def __init__(
        self, dirpath: str, monitor: str = "val/loss", mode: str = "min", enabled: bool = False
    ) -> None:
        _check("best", monitor, mode)
        self.path = Path(dirpath) / "best.ckpt"
        self.monitor = monitor
        self.mode = mode
        self.enabled = bool(enabled)
        #: the chosen validation: ``{"step", "value", "path"}``, or None before the first
        self.best: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return f"BestCheckpoint[{self.monitor}]"

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """After a validation of the fit: save the run if the metric is the best yet."""
        if not self.enabled or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(value := float(value)):
            return
        if self.best is not None:
            old = self.best["value"]
            if not (value < old if self.mode == "min" else value > old):
                return
        self.best = {"step": int(trainer.global_step), "value": value, "path": str(self.path)}
        trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes, atomically

    def state_dict(self) -> dict[str, Any]:
        """The chosen validation, so that a resumed run compares against it."""
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the chosen validation."""
        self.best = state_dict.get("best")


def _find(trainer: L.Trainer, kind: type) -> Any:
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind) and cb.enabled), None)


def watches_validation(trainer: L.Trainer) -> bool:
    """Whether the fit's validations decide something (when to stop, which weights to keep)."""
    return _find(trainer, EarlyStop) is not None or _find(trainer, BestCheckpoint) is not None


def load_best(trainer: L.Trainer, module: Any) -> dict[str, Any] | None:
    """Put the best checkpoint's trained weights into ``module``; the chosen validation, or
    None when none was recorded (no validation ran during the fit). Every rank calls it."""
    keeper = _find(trainer, BestCheckpoint)
    if keeper is None or keeper.best is None:
        return None
    chosen = dict(keeper.best)
    checkpoint = trainer.strategy.load_checkpoint(chosen["path"])
    if state := checkpoint.get("state_dict"):  # FSDP2 loads sharded weights in place instead
        trained = {k.removeprefix("model."): v for k, v in state.items()}
        module.strategy.load_trainable_state_dict(module.model, trained)
    log.info(
        "eval.best=true: evaluating and exporting the weights of step %d (%s=%.6g, the best "
        "of the validations during training; training ended at step %d)",
        chosen["step"],
        keeper.monitor,
        chosen["value"],
        trainer.global_step,
    )
    return {"monitor": keeper.monitor, **chosen}


def stopping_summary(trainer: L.Trainer) -> dict[str, Any] | None:
    """``metrics.json``'s record of early stopping, when it was on."""
    stopper = _find(trainer, EarlyStop)
    if stopper is None:
        return None
    return {
        "monitor": stopper.monitor,
        "patience": stopper.patience,
        "stopped": stopper.stopped_step is not None,
        "step": stopper.stopped_step,
    }
