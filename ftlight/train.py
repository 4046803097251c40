"""One fine-tuning run, top to bottom: build the parts, evaluate before, fit, evaluate after,
export, report. ``train(cfg)`` is a plain function (tests and notebooks call it); the
``ftlight-train`` command (``ftlight.cli.train``) composes the config and calls it.

A run stopped by a signal checkpoints and raises ``RunInterrupted`` (``ftlight.preemption``);
one that resumes in its own folder continues there: the scores before training its first
attempt kept, its CSV log, its loss history and time (``ftlight.resume``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from ftlight.best import load_best, stopping_summary, watches_validation
from ftlight.build import Run, build_run
from ftlight.checkpoint import only_chosen_checkpoint
from ftlight.config import register
from ftlight.errors import TrainingError
from ftlight.evaluation.plan import Evaluation
from ftlight.evaluation.summary import log_scores, run_summary, write_report, write_summary
from ftlight.export import export_run, trained_model
from ftlight.logs import timed
from ftlight.preemption import find_preemption, stop_on_signal
from ftlight.resume import checkpoint_step, keep_before, kept_before, resolve_ckpt_path
from ftlight.runfolder import claim_run_folder, is_launching_process, resumes_in
from ftlight.speed.allocator import release_free_memory
from ftlight.speed.kernel_cache import bound_kernel_caches
from ftlight.speed.plan import SpeedPlan
from ftlight.validate.sanity import moved, unchanged_loss_warning, untrained_message
from hydra_plugins.ftlight_slurm import _launcher as slurm_launcher

register()
slurm_launcher.register()  # hydra/launcher=slurm
log = logging.getLogger("ftlight")


@dataclass
class RunResult:
    """What ``train`` hands back to callers (tests, notebooks)."""

    run_dir: Path
    module: Any
    trainer: Any
    data: Any
    tokenizer: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, Path] = field(default_factory=dict)


def train(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> RunResult:
    """Run one fine-tuning job from a composed config; ``callbacks`` join the configured ones.

    ``ckpt_path=auto`` resumes from the run folder's newest checkpoint, if it has one.
    """
    # before the precision's measurement builds this process's first bf16 kernels
    bound_kernel_caches(OmegaConf.select(cfg, "speed.kernel_cache", default=SpeedPlan.kernel_cache))
    cfg = resolve_ckpt_path(cfg)
    with claim_run_folder(cfg):
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        run = build_run(cfg, callbacks)
        ev = run.evaluation  # nothing below reads the config
        _continue_logs(run)
        with stop_on_signal(run.trainer, run.run_dir):
            few_shot, before = _scores_before(run)
            release_free_memory()  # each phase's peak is its own (ftlight.speed.allocator)
            seconds = _fit(run)
            best = load_best(run.trainer, run.module) if ev.best else None
            after = _scores(run, "after") if ev.after else {}
            release_free_memory()
        summary = run_summary(run, before, after, seconds, few_shot)
        summary["train"]["world_size"] = run.trainer.world_size  # the processes that trained
        trained = _check_trained(run, summary, best)  # a collective under FSDP2
        model = trained_model(run) if ev.export and trained else None  # a collective too
        log_scores(run, summary)
        exports: dict[str, Path] = {}
        if run.trainer.is_global_zero:
            write_report(run, summary, plots=ev.plots)  # kept if the export fails
            if model is not None:
                exports = export_run(run, model, summary)
                summary["exports"] = {k: str(v) for k, v in exports.items()}
                write_summary(run, summary)
        if not trained:
            raise TrainingError(
                untrained_message(
                    run.strategy.name, summary["params"]["trainable"], summary["train"]["steps"]
                )
            )
    return RunResult(
        run.run_dir, run.module, run.trainer, run.data, run.tokenizer, summary, exports
    )


def _check_trained(run: Run, summary: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Record the chosen weights and early stopping in ``summary``, and mark it (``warning``)
    when the trainable weights never moved, the validation loss did not change at all, or
    ``eval.best=true`` found no validation to choose from; False when nothing moved."""
    warnings = []
    if run.evaluation.best:
        if best is None:
            warnings.append(
                "eval.best=true, but no validation ran during training: the last weights were "
                "evaluated and exported. Validate during the fit (trainer.val_check_interval, "
                "trainer.check_val_every_n_epoch)"
            )
        summary["best"] = best
    if (stopping := stopping_summary(run.trainer)) is not None:
        summary["train"]["early_stopping"] = stopping
    did_move = moved(run.module.start_sums, run.module.model)
    if did_move is False:
        warnings.append(
            untrained_message(
                run.strategy.name, summary["params"]["trainable"], summary["train"]["steps"]
            )
        )
    elif message := unchanged_loss_warning(summary["before"], summary["after"]):
        warnings.append(message)
    for message in warnings:
        log.warning("WARNING: %s", message)
    if warnings:
        summary["warning"] = warnings
    return did_move is not False


def _scores(run: Run, when: str) -> dict[str, float]:
    """The task's metrics on the evaluation split, plus general-text perplexity if asked."""
    with timed(f"evaluate {when} training", log):
        return run.evaluation.scores(run, when)


def _scores_before(run: Run) -> tuple[dict[str, Any] | None, dict]:
    """The prompted base model's scores and the scores before training: measured, or kept by
    an earlier attempt of this run when it resumes in its own folder."""
    ev = run.evaluation
    if run.ckpt_path and resumes_in(run.run_dir, run.ckpt_path):
        kept = kept_before(run.before_key, run.run_dir)
        if kept is not None:
            log.info("scores before training: kept by this run's first attempt")
            return kept.get("few_shot"), kept.get("before") or {}
    few_shot = ev.few_shot_scores(run)  # the prompted base
    before = _scores(run, "before") if ev.before else {}
    if is_launching_process():
        keep_before(run.before_key, run.run_dir, before, few_shot)
    return few_shot, before


def _continue_logs(run: Run) -> None:
    """Loggers that can continue a log (ftlight's CSV) keep what the checkpoint resumed from
    holds, and nothing for a run that starts afresh."""
    ckpt = run.ckpt_path
    if not ckpt:
        step = None
    elif (file := run.ckpt_file) is not None:
        step = checkpoint_step(Path(file))
    else:  # remote or resolved by Lightning itself: keep every row
        step = math.inf
    for lg in run.trainer.loggers:
        if hasattr(lg, "continue_from"):
            lg.continue_from(step)


def _fit(run: Run) -> float:
    """Train (resuming from ``ckpt_path`` if given); the wall time in seconds.

    Without ``ckpt_path`` no checkpoint is loaded, not even one Lightning finds by itself.
    """
    trainer, ev = run.trainer, run.evaluation
    ckpt = run.ckpt_path
    run.module.generate_in_eval = ev.generate_during_fit
    limit_val = trainer.limit_val_batches
    if _after_eval_repeats_fit_validation(trainer, ev):
        trainer.limit_val_batches = 0  # the evaluation after training logs the same val/loss
    started = time.perf_counter()
    try:
        fresh = only_chosen_checkpoint(trainer) if ckpt is None else contextlib.nullcontext()
        with timed("train", log), fresh:
            # weights_only: a checkpoint holds tensors and plain values; loading runs no code
            trainer.fit(run.module, datamodule=run.data, ckpt_path=ckpt, weights_only=True)
    finally:
        trainer.limit_val_batches = limit_val
    seconds = time.perf_counter() - started
    _release_optimizer_state(trainer)
    if (preemption := find_preemption(trainer)) and trainer.is_global_zero:
        preemption.drop_if_superseded(run.run_dir)
    return seconds


def _release_optimizer_state(trainer: L.Trainer) -> None:
    """Free what only further optimizer steps would read, before the evaluation after training
    and the export: AdamW's two moments per trained weight (1.1 GB for a full fine-tune of a
    135 M-parameter model) and any gradients left. The run's checkpoints keep them for a resume,
    and a later ``fit`` builds its optimizers again."""
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
        optimizer.zero_grad(set_to_none=True)
    release_free_memory()


def _after_eval_repeats_fit_validation(trainer: L.Trainer, ev: Evaluation) -> bool:
    """A one-epoch fit validates once, at its end, on the split the evaluation after training
    scores right away (logging ``val/*`` at the same step): that pass would be done twice."""
    return (
        ev.after
        and not watches_validation(trainer)  # early stopping and eval.best need that pass
        and ev.split == "validation"
        and not ev.generate_during_fit
        and trainer.max_epochs == 1
        and trainer.val_check_interval == 1.0
        and trainer.check_val_every_n_epoch == 1
    )
