"""Build every object of a run from its config group, in the order the data flow needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from ftlight.errors import ConfigError, FtlightError
from ftlight.logs import timed
from ftlight.module import FineTuneModule
from ftlight.redact import redact, redacted_yaml, secrets_in
from ftlight.speed.attention import check_kernel
from ftlight.strategies.registry import check_strategy
from ftlight.validate import check_config, check_run

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
class Run:
    """The objects of one run, built once and passed in; nothing reads the config later."""

    cfg: DictConfig
    run_dir: Path
    strategy: Any
    source: Any
    task: Any
    tokenizer: Any
    data: Any
    module: FineTuneModule
    trainer: L.Trainer
    load_kwargs: dict[str, Any]
    train_seconds: float | None = None  # wall time of fit(), set by the caller that runs it

    def evaluate(self, split: str) -> dict[str, float]:
        """Score the current model on ``split`` with the task's metrics (generation included)."""
        self.module.generate_in_eval = True
        self.module.reset_metrics()
        gen0 = (
            getattr(self.task, "generated_tokens", 0),
            getattr(self.task, "generation_seconds", 0.0),
        )
        if split == "test":
            self.trainer.test(self.module, datamodule=self.data, verbose=False)
        else:
            self.trainer.validate(self.module, datamodule=self.data, verbose=False)
        self.module.generate_in_eval = False
        self.module.train()  # validate() leaves the model in eval mode; fit() expects train mode
        values = dict(self.module.last_eval)
        tokens = getattr(self.task, "generated_tokens", 0) - gen0[0]
        seconds = getattr(self.task, "generation_seconds", 0.0) - gen0[1]
        if tokens:
            log.info(
                "generated %d tokens in %.1f s (%.1f tokens/s)", tokens, seconds, tokens / seconds
            )
        self.module.val_metrics.clear()
        return values

    def _export_model(self) -> Any:
        """The trained model as one plain, full-precision module (on rank 0; None elsewhere).

        FSDP2-sharded weights are gathered; when frozen weights were kept in bf16 for speed,
        the base is reloaded in full precision and the trained tensors are put back on it.
        """
        model = self.module.model
        if not self.module._sharded and not self.module.frozen_cast:
            return model
        if self.module._sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            # a collective: every rank takes part, rank 0 receives the full tensors
            state = get_model_state_dict(
                model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            state = self.strategy.trainable_state_dict(model)
        if not self.trainer.is_global_zero:
            return None
        fresh = self.source.load(self.task.auto_class(), **self.load_kwargs)
        fresh = self.strategy.apply(fresh, self.task)
        if self.module._sharded:
            fresh.load_state_dict(state)
        else:
            self.strategy.load_trainable_state_dict(fresh, state)
        return fresh

    def finish(
        self,
        before: dict[str, float],
        after: dict[str, float],
        export: bool,
        plots: bool,
        few_shot: dict[str, Any] | None = None,
    ) -> Any:
        """Export, write ``metrics.json`` and plots, print the table (rank 0 only)."""
        from ftlight.evaluation.report import format_table, model_card, plot_run, write_metrics
        from ftlight.export import ModelSaver
        from ftlight.train import RunResult

        params = {k: v for k, v in self.strategy.describe(self.module.model).items()}
        throughput = {}
        history: list[tuple[int, float]] = []
        val_history: list[tuple[int, float]] = []
        for cb in self.trainer.callbacks:
            if hasattr(cb, "summary") and hasattr(cb, "loss_history"):
                throughput = {
                    k: cb.summary.get(k, 0.0)
                    for k in ("real_tokens_per_s", "mfu", "peak_memory_mb")
                }
                history, val_history = cb.loss_history(), cb.val_losses
        payload: dict[str, Any] = {
            "strategy": self.strategy.name,
            "task": self.task.name,
            "model": self.source.display_name,
            "data": self.data.describe(),
            "params": {"trainable": int(params["trainable"]), "total": int(params["total"])},
            "before": before,
            "after": after,
            "throughput": throughput,
            "train": {
                "steps": int(self.trainer.global_step),
                "final_loss": history[-1][1] if history else None,
                "seconds": self.train_seconds,
                "data_stats": self.data.stats,
            },
        }
        if few_shot:
            payload["few_shot"] = few_shot
        exports: dict[str, Path] = {}
        model = self._export_model() if export else self.module.model
        for lg in self.trainer.loggers:
            scores = {f"before/{k}": v for k, v in before.items()}
            scores.update({f"after/{k}": v for k, v in after.items()})
            scores.update({f"throughput/{k}": v for k, v in throughput.items()})
            lg.log_metrics(scores, step=int(self.trainer.global_step))
            lg.save()
        if self.trainer.is_global_zero:
            print("\n" + format_table(before, after, few_shot) + "\n", flush=True)
            if export:
                meta = {
                    "base_model": self.source.display_name,
                    "strategy": self.strategy.name,
                    "task": self.task.name,
                    "data": self.data.describe(),
                    "params": payload["params"],
                    "labels": self.data.labels.names if self.data.labels else None,
                    "instruction": self.data.instruction,
                    "config_yaml": redacted_yaml(self.cfg),
                }
                card = model_card(meta, before, after)
                saver = ModelSaver(
                    self.tokenizer, {k: v for k, v in meta.items() if k != "config_yaml"}, card
                )
                with timed("export", log):
                    exports = self.strategy.export(model, saver, self.run_dir)
                payload["exports"] = {k: str(v) for k, v in exports.items()}
            clean = redact(payload, secrets_in(self.cfg), by_key=False)  # keys are metric names
            write_metrics(self.run_dir / "metrics.json", clean)
            if plots:
                plot_run(self.run_dir, before, after, history, val_history)
            log.info("run folder: %s", self.run_dir)
        return RunResult(
            run_dir=self.run_dir,
            module=self.module,
            trainer=self.trainer,
            data=self.data,
            tokenizer=self.tokenizer,
            metrics=payload,
            exports=exports,
        )


def build_run(cfg: DictConfig) -> Run:
    """Strategy, model source, tokenizer, task, data, model, module, trainer: in that order."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    run_dir = Path(cfg.run_dir)
    check_config(cfg)  # every option, path and checkpoint, before anything is built or loaded
    strategy = check_strategy(instantiate(cfg.strategy), str(cfg.strategy.get("_target_")))
    task = instantiate(cfg.task)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    strategy.validate(trainer_cfg, task)
    attention = check_kernel(str(cfg.get("attention_kernel", "auto")))  # before any loading
    source = instantiate(cfg.model)
    data = instantiate(cfg.data)
    with timed("load tokenizer", log):
        tokenizer = source.load_tokenizer()
    data.bind(tokenizer, task)
    with timed("prepare data", log):
        data.prepare()
    task.configure(tokenizer, data.references(cfg.eval.split))
    kwargs = {**task.model_kwargs(data.labels, tokenizer), **strategy.load_kwargs(task)}
    fingerprint = check_run(cfg, source, data)  # the model's limits; a resume's model and data
    model = source.load(task.auto_class(), **kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    precision = str(OmegaConf.select(cfg, "trainer.precision", default=""))
    module = FineTuneModule(
        frozen_dtype=torch.bfloat16 if precision.startswith("bf16-mixed") else None,
        model=model,
        strategy=strategy,
        task=task,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        activation_checkpointing=bool(cfg.get("activation_checkpointing", False)),
        compile=bool(cfg.get("compile", False)),
        attention_kernel=attention,
        fingerprint=fingerprint,
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    from ftlight.checkpoint import AtomicCheckpointIO

    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
    )
    if not isinstance(trainer, L.Trainer):
        raise ConfigError("trainer config must build a lightning.pytorch.Trainer")
    hparams = redact(cfg)  # loggers (CSV hparams.yaml, the W&B config) get secrets masked
    for lg in trainer.loggers:
        lg.log_hyperparams(hparams)
    return Run(cfg, run_dir, strategy, source, task, tokenizer, data, module, trainer, kwargs)
