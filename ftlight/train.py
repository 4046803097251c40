"""``ftlight-train``: compose the config, fine-tune, evaluate before and after, export."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from ftlight.compare import in_sweep
from ftlight.config import CONF_DIR, register
from ftlight.errors import FtlightError
from ftlight.evaluation.fewshot import few_shot_scores
from ftlight.evaluation.general import GeneralText
from ftlight.logs import timed
from ftlight.speed.allocator import describe as describe_allocator

register()
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


def train(cfg: DictConfig) -> RunResult:
    """Run one fine-tuning job from a composed config (plain function; tests call it)."""
    from ftlight.runfolder import claim_run_folder

    with claim_run_folder(cfg):
        return _train(cfg)


def _train(cfg: DictConfig) -> RunResult:
    """The run itself, in a run folder this process holds."""
    from ftlight.assemble import build_run

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    general = GeneralText.from_setting(cfg.eval.get("general"))  # read before any model loads
    run = build_run(cfg)
    trainer, module, data = run.trainer, run.module, run.data
    ev = cfg.eval
    few_shot = few_shot_scores(run, ev.get("few_shot"), ev.split)  # the prompted base model
    before: dict[str, float] = {}
    if ev.before:
        with timed("evaluate before training", log):
            before = run.evaluate(ev.split) | general.scores(run)
    module.generate_in_eval = bool(ev.generate_during_fit)
    limit_val = trainer.limit_val_batches
    if _after_eval_repeats_fit_validation(trainer, ev):
        trainer.limit_val_batches = 0  # the evaluation after training logs the same val/loss
    started = time.perf_counter()
    try:
        with timed("train", log):
            # weights_only: a checkpoint holds tensors and plain values; loading runs no code
            trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path, weights_only=True)
    finally:
        trainer.limit_val_batches = limit_val
    run.train_seconds = time.perf_counter() - started
    after: dict[str, float] = {}
    if ev.after:
        with timed("evaluate after training", log):
            after = run.evaluate(ev.split) | general.scores(run)
    return run.finish(
        before, after, export=bool(ev.export), plots=bool(ev.plots), few_shot=few_shot
    )


def _after_eval_repeats_fit_validation(trainer: L.Trainer, ev: DictConfig) -> bool:
    """A one-epoch fit validates once, at its end, on the split the evaluation after training
    scores right away (logging ``val/*`` at the same step): that pass would be done twice."""
    return (
        bool(ev.after)
        and ev.split == "validation"
        and not ev.generate_during_fit
        and trainer.max_epochs == 1
        and trainer.val_check_interval == 1.0
        and trainer.check_val_every_n_epoch == 1
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> float | None:
    logging.getLogger("ftlight").setLevel(logging.INFO)
    log.info("%s", describe_allocator())
    try:
        result = train(cfg)
    except FtlightError as err:
        log.error("%s", err)  # into the run's ftlight.log
        print(f"ftlight-train: {err}", file=sys.stderr)  # stdout may be piped elsewhere
        if in_sweep():
            raise  # the sweep runs its other trials; the comparison lists this one as failed
        raise SystemExit(2) from None
    after = result.metrics.get("after", {})
    return after.get("loss")


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _main()


if __name__ == "__main__":
    # `python -m ftlight.train` restarts after the imports above; `ftlight-train` restarts first
    from ftlight.speed.allocator import use_fast_allocator

    use_fast_allocator()
    main()
