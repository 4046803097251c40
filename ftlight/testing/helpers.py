"""Helpers for testing ftlight runs and strategy plugins on tiny models (no downloads).

``compose_config`` builds a run's config as ``ftlight-train`` would; ``fit`` and
``train_with_probe`` run it with a ``Probe`` that records weights, losses and logits.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from ftlight.build import build_run
from ftlight.config import CONF_DIR, register
from ftlight.train import train

register()

#: small data files the set-ups train on
DATA = Path(__file__).resolve().parent / "data"

# Deterministic, quiet, fast: fp32 on CPU, no progress bar, no logger files, no PNG plots.
BASE = [
    "trainer=cpu",
    "trainer.precision=32-true",
    "callbacks.progress=null",
    "+trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=none",
    "eval.plots=false",
]
#: overrides for a command-line run that only has to go through every phase quickly (two
#: steps, four generated tokens, no export, plots, general text or few-shot baseline)
QUICK_RUN = [
    "trainer.precision=32-true",
    "trainer.max_steps=2",
    "trainer.max_epochs=-1",
    "task.max_new_tokens=4",
    "callbacks.progress=null",
    "eval.export=false",
    "eval.plots=false",
    "eval.general=null",
    "eval.few_shot=0",
]
# The two set-ups every strategy is tested on, by model: a tiny causal LM on 16 alpaca rows,
# and a tiny encoder classifying 16 reviews.
SETUPS = {
    "tiny-llama": [
        "model=tiny-llama",
        "task=causal_lm",
        "data=local",
        f"data.train_path={DATA / 'alpaca_train.jsonl'}",
        f"data.val_path={DATA / 'alpaca_val.jsonl'}",
        "task.max_new_tokens=8",
    ],
    "tiny-bert": [
        "model=tiny-bert",
        "task=classification",
        "data=local",
        "data.format=text_label",
        f"data.train_path={DATA / 'reviews_train.csv'}",
        f"data.val_path={DATA / 'reviews_val.tsv'}",
        "data.max_length=512",  # tiny-bert's position limit
    ],
}
# Short fits that certainly move the weights: a high constant learning rate, no validation
# or checkpoints during the fit.
QUICK_FIT = [
    "trainer.max_epochs=-1",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
    "trainer.check_val_every_n_epoch=1000",
    "callbacks.checkpoint=null",
    "trainer.enable_checkpointing=false",
]


def compose_config(overrides: list[str], tmp_path: Path, setup: str | None = None) -> DictConfig:
    """The composed ``config`` for a test run writing into ``tmp_path``.

    ``setup`` (a key of ``SETUPS``, or of ``extra_setups``) adds a tiny model and its data;
    ``overrides`` come last, so they win.
    """
    preset = _setups[setup] if setup else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(
            config_name="config",
            overrides=[*BASE, *preset, f"run_dir={tmp_path}", *overrides],
            return_hydra_config=True,
        )


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter (packed 4-bit weights as stored)."""
    return {name: p.data.detach().clone() for name, p in model.named_parameters()}


def eval_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of ``model`` in eval mode, leaving every module's mode as it was."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    with torch.no_grad():
        out = model(**inputs).logits.float().clone()
    for m, training in modes.items():
        m.train(training)
    return out


class Probe(L.Callback):
    """Records what a run's model looked like: weights before and after training, the
    trainable names and counts, per-step losses, and logits on the first validation batch
    at the end of training (before any export merges adapters)."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}
        self.trainable: set[str] = set()
        self.counts: dict[str, Any] = {}
        self.losses: list[float] = []
        self.inputs: dict[str, torch.Tensor] = {}
        self.logits: torch.Tensor | None = None
        self.eval_mode_modules: list[str] | None = None
        self.fit_validations = 0  # validation passes run by fit() itself

    def _record_start(self, module: L.LightningModule) -> None:
        if not self.start:  # the first evaluation or fit, right after the strategy was applied
            self.start = snapshot(module.model)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Before an evaluation that precedes training (or one that fit() runs)."""
        self._record_start(module)
        if trainer.state.fn == "fit":
            self.fit_validations += 1

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Before the first training step."""
        self._record_start(module)

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, i: int
    ) -> None:
        """Which modules are in eval mode when training starts (there should be none)."""
        if self.eval_mode_modules is None:
            self.eval_mode_modules = [n for n, m in module.named_modules() if not m.training]

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        """The micro-batch loss."""
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """The trained state, as the run holds it in memory."""
        model = module.model
        self.end = snapshot(model)
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.counts = module.strategy.describe(model)
        batch = next(iter(trainer.datamodule.val_dataloader()))
        keys = ("input_ids", "attention_mask", "token_type_ids")
        self.inputs = {k: batch[k] for k in keys if k in batch}
        # under the run's precision (bf16-mixed keeps frozen weights in bf16 for autocast)
        with trainer.precision_plugin.forward_context():
            self.logits = eval_logits(model, self.inputs)

    def epoch_mean_losses(self, batches_per_epoch: int = 2) -> tuple[float, float]:
        """Mean training loss of the first and of the last epoch (the same batches)."""
        first, last = self.losses[:batches_per_epoch], self.losses[-batches_per_epoch:]
        return sum(first) / len(first), sum(last) / len(last)


def fit(
    cfg: DictConfig, callbacks: Sequence[L.Callback] = (), ckpt_path: str | None = None
) -> tuple[Any, Probe]:
    """Build a run from ``cfg`` and fit it (no evaluation before or after, no export)."""
    L.seed_everything(cfg.seed, verbose=False)
    run = build_run(cfg)
    probe = Probe()
    run.trainer.callbacks.extend([probe, *callbacks])
    run.trainer.fit(run.module, datamodule=run.data, ckpt_path=ckpt_path)
    return run, probe


class NoDropout(L.Callback):
    """Every dropout of the model (the strategy's adapters' too) at zero: two ways of computing
    a step can then be compared bit for bit (a dropout mask depends on the shapes drawn)."""

    @staticmethod
    def _zero(module: L.LightningModule) -> None:
        for layer in module.model.modules():
            if isinstance(layer, torch.nn.Dropout):
                layer.p = 0.0
            for name in ("attention_dropout", "dropout", "attn_dropout"):
                if isinstance(getattr(layer, name, None), float):
                    setattr(layer, name, 0.0)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._zero(module)

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._zero(module)


def train_with_probe(cfg: DictConfig) -> tuple[Any, Probe]:
    """``ftlight.train.train(cfg)`` with a ``Probe`` attached to its trainer."""
    probe = Probe()
    return train(cfg, callbacks=[probe]), probe


@dataclass
class TrainedRun:
    """A finished ``train(cfg)`` run and what its probe recorded."""

    strategy: str
    task: str
    cfg: DictConfig
    result: Any
    probe: Probe
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.result.run_dir)


_setups: dict[str, list[str]] = dict(SETUPS)


def add_setup(name: str, overrides: list[str]) -> None:
    """Register another set-up for ``compose_config`` (a test suite's own tiny model or data)."""
    _setups[name] = list(overrides)


def setup_overrides(name: str) -> list[str]:
    """The overrides of a set-up (a ``SETUPS`` key or a name given to ``add_setup``)."""
    return list(_setups[name])


@contextlib.contextmanager
def isolated_cache(folder: Path) -> Iterator[Path]:
    """Tiny models and tokenised data go to ``folder`` (``FTLIGHT_CACHE``); torch runs on one
    thread, which is faster for tiny models and fair to shared test machines."""
    saved = {k: os.environ.get(k) for k in ("FTLIGHT_CACHE", "TOKENIZERS_PARALLELISM")}
    os.environ["FTLIGHT_CACHE"] = str(folder)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield folder
    finally:
        torch.set_num_threads(threads)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
