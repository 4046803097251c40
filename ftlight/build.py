"""Build every object of a run from its config group, in the order the data flow needs.

``build_parts`` makes and checks what a run needs before any weights load (strategy, task,
model source, tokenizer, prepared data); ``load_model``, ``build_module`` and ``build_trainer``
make the rest. ``ftlight-train``, ``ftlight-eval`` and the benchmarks build through these.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import transformers
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ftlight.checkpoint import AtomicCheckpointIO
from ftlight.errors import ConfigError, FtlightError
from ftlight.evaluation.plan import Evaluation
from ftlight.evaluation.predictions import phase_file
from ftlight.evaluation.scoring import score_split
from ftlight.logs import PHASES, quiet_libraries, timed
from ftlight.module import FineTuneModule
from ftlight.preemption import Preemption, on_slurm
from ftlight.redact import redact
from ftlight.resume import before_key
from ftlight.speed.plan import SpeedPlan
from ftlight.strategies.registry import check_strategy
from ftlight.validate import check_config, check_run
from ftlight.validate.run import checkpoint_file
from ftlight.validate.sanity import check_before_weights

log = logging.getLogger("ftlight")


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets ftlight's own errors through unwrapped.

    Hydra wraps whatever a constructor raises in ``InstantiationException``; the user's
    mistake (a bad path, an unknown name) should reach them as the ``FtlightError`` it is.
    """
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, FtlightError):
            raise err.__cause__ from None
        raise


@dataclass
class Parts:
    """What a run is made of before its weights load; nothing reads the config later."""

    cfg: DictConfig
    run_dir: Path
    strategy: Any
    task: Any
    source: Any
    tokenizer: Any
    data: Any
    #: ``from_pretrained`` arguments of the base model (the task's and the strategy's)
    load_kwargs: dict[str, Any]
    #: the model's shape and the training data's hash, stored in checkpoints
    fingerprint: dict[str, Any]
    #: what the run scores before and after training and writes at its end (``eval``)
    evaluation: Evaluation
    #: the checkpoint the fit resumes from (``ckpt_path``, resolved), or None
    ckpt_path: str | None
    #: the local checkpoint file that resume reads, where it is known before the fit
    ckpt_file: str | None
    #: what the scores before training depend on (``ftlight.resume.before_key``)
    before_key: str


@dataclass
class Run(Parts):
    """The parts plus the module that trains and the trainer that drives it."""

    module: FineTuneModule
    trainer: L.Trainer

    def evaluate(
        self, split: str, phase: str | None = None, folder: Path | None = None
    ) -> dict[str, float]:
        """The task's metrics of the current model on ``split`` (generation included);
        ``phase`` also writes its rows to ``<phase>.jsonl`` in ``folder`` (default: the run
        folder's ``predictions``)."""
        rows = phase_file(self.run_dir, phase, folder) if phase else None
        return score_split(self.trainer, self.module, self.data, split, rows)


def build_parts(cfg: DictConfig, label_names: Sequence[str] | None = None) -> Parts:
    """Check the config, then strategy, task, source, tokenizer and prepared data.

    ``label_names`` (class names read from a model folder) reach the data module after it is
    built: a value read from a file never enters the config that ``instantiate`` walks.
    """
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    PHASES.clear()  # this run's phases (metrics.json) start here
    check_config(cfg)  # every option, path and checkpoint, before anything is built or loaded
    strategy = check_strategy(instantiate(cfg.strategy), str(cfg.strategy.get("_target_")))
    task = instantiate(cfg.task)
    evaluation = instantiate(cfg.eval)  # a general-text file is read here, before any weights
    strategy.validate(OmegaConf.to_container(cfg.trainer, resolve=True), task)
    source = instantiate(cfg.model)
    data = instantiate(cfg.data)
    if label_names is not None:
        data.label_names = list(label_names)
    with timed("load tokenizer", log):
        tokenizer = source.load_tokenizer()
    data.bind(tokenizer, task)
    with timed("prepare data", log):
        data.prepare()
    task.configure(tokenizer, data.references(evaluation.split))
    kwargs = {**task.model_kwargs(data.labels, tokenizer), **strategy.load_kwargs(task)}
    fingerprint = check_run(cfg, source, data, strategy)  # limits, fit; a resume's model, data
    check_before_weights(cfg, data)  # no-op settings: a warm-up past the end
    ckpt = str(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    return Parts(
        cfg,
        Path(cfg.run_dir),
        strategy,
        task,
        source,
        tokenizer,
        data,
        kwargs,
        fingerprint,
        evaluation,
        ckpt,
        checkpoint_file(cfg),
        before_key(cfg),
    )


def load_model(parts: Parts) -> nn.Module:
    """The base model for the task, with the strategy's loading arguments."""
    model = parts.source.load(parts.task.auto_class(), **parts.load_kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = parts.tokenizer.pad_token_id
    return model


def build_module(cfg: DictConfig, parts: Parts, model: nn.Module) -> FineTuneModule:
    """The LightningModule: the model under the strategy, with the optimizer and schedule."""
    precision = str(OmegaConf.select(cfg, "trainer.precision", default=""))
    return FineTuneModule(
        model=model,
        strategy=parts.strategy,
        task=parts.task,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        frozen_dtype=torch.bfloat16 if precision.startswith("bf16-mixed") else None,
        speed=speed_plan(cfg),
        fingerprint=parts.fingerprint,
    )


def speed_plan(cfg: DictConfig) -> SpeedPlan:
    """The run's speed plan (``speed``; a config written before the group: every part on),
    less the parts that stand aside on the installed libraries."""
    node = cfg.get("speed")
    plan = SpeedPlan() if node is None else instantiate(node)
    if not isinstance(plan, SpeedPlan):
        raise ConfigError("speed config must build a ftlight.speed.plan.SpeedPlan (speed=auto)")
    return plan.checked()


def build_trainer(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """The Trainer with the configured callbacks (plus ``callbacks``) and loggers; the loggers
    get the config with secrets masked."""
    quiet_libraries()
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    plugins: list[Any] = [AtomicCheckpointIO()]
    if on_slurm() and any(isinstance(c, Preemption) for c in [*configured, *callbacks]):
        # ftlight's Preemption checkpoints at a step boundary and requeues; Lightning's own
        # handler would save mid-step, from inside the signal handler
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*configured, *callbacks],
        logger=loggers or False,
        plugins=plugins,
        use_distributed_sampler=False,
    )
    if not isinstance(trainer, L.Trainer):
        raise ConfigError("trainer config must build a lightning.pytorch.Trainer")
    hparams = redact(cfg)  # loggers (CSV hparams.yaml, the W&B config) get secrets masked
    for lg in trainer.loggers:
        lg.log_hyperparams(hparams)
    return trainer


def build_run(
    cfg: DictConfig, callbacks: Sequence[L.Callback] = (), label_names: Sequence[str] | None = None
) -> Run:
    """Every object of a run, built once from its config group (``label_names``: see
    ``build_parts``)."""
    parts = build_parts(cfg, label_names)
    module = build_module(cfg, parts, load_model(parts))
    return Run(**vars(parts), module=module, trainer=build_trainer(cfg, callbacks))
