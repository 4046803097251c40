"""What a finished run reports: ``metrics.json``, the before/after table, the loggers' scores and
the plots (files on rank 0 only)."""

from __future__ import annotations

import logging
from typing import Any

from ftlight.errors import StorageError
from ftlight.evaluation.report import format_table, plot_run, write_metrics
from ftlight.logs import PHASES
from ftlight.measure.throughput import ThroughputMonitor
from ftlight.redact import redact, secrets_in
from ftlight.resume import RunHistory
from ftlight.speed.report import speed_parts

log = logging.getLogger("ftlight")

THROUGHPUT_KEYS = ("real_tokens_per_s", "mfu", "peak_memory_mb")


def _monitor(trainer: Any) -> ThroughputMonitor | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, ThroughputMonitor)), None)


def _whole_run(trainer: Any, throughput: dict[str, float], seconds: float | None) -> dict:
    """Attempts, training seconds and throughput of the whole run, earlier attempts included."""
    history = next((cb for cb in trainer.callbacks if isinstance(cb, RunHistory)), None)
    if history is None or seconds is None:
        return {"attempts": 1, "seconds": seconds, "throughput": throughput}
    return history.whole_run(throughput, seconds)


def run_summary(
    run: Any,
    before: dict[str, float],
    after: dict[str, float],
    train_seconds: float | None = None,
    few_shot: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` payload: what ran, its parameter counts, the scores and the speed."""
    counts = run.strategy.describe(run.module.model)
    monitor = _monitor(run.trainer)
    history = monitor.loss_history() if monitor else []
    throughput = {k: monitor.summary.get(k, 0.0) for k in THROUGHPUT_KEYS} if monitor else {}
    whole = _whole_run(run.trainer, throughput, train_seconds)
    summary: dict[str, Any] = {
        "strategy": run.strategy.name,
        "task": run.task.name,
        "model": run.source.display_name,
        "data": run.data.describe(),
        # validation rows that copy training rows (count, first rows): scores to read with care
        "data_overlap": getattr(run.data, "overlap", {}),
        "params": {"trainable": int(counts["trainable"]), "total": int(counts["total"])},
        "before": before,
        "after": after,
        "throughput": whole["throughput"],
        # what each speed part decided for this model (``speed=plain``: every one off)
        "speed": speed_parts(run.module),
        "train": {
            "steps": int(run.trainer.global_step),
            "final_loss": history[-1][1] if history else None,
            "seconds": whole["seconds"],
            "attempts": whole["attempts"],
            "data_stats": run.data.stats,
        },
    }
    if few_shot:
        summary["few_shot"] = few_shot
    return summary


def log_scores(run: Any, summary: dict[str, Any]) -> None:
    """Before/after scores and throughput to every logger (W&B summary, CSV), on every rank."""
    scores = {f"before/{k}": v for k, v in summary["before"].items()}
    scores.update({f"after/{k}": v for k, v in summary["after"].items()})
    scores.update({f"throughput/{k}": v for k, v in summary["throughput"].items()})
    for lg in run.trainer.loggers:
        lg.log_metrics(scores, step=int(run.trainer.global_step))
        lg.save()


def write_report(run: Any, summary: dict[str, Any], plots: bool) -> None:
    """Print the table; write ``metrics.json`` (secrets masked) and the plots. Rank 0 only."""
    print(
        "\n" + format_table(summary["before"], summary["after"], summary.get("few_shot")) + "\n",
        flush=True,
    )
    write_summary(run, summary)
    if plots:
        monitor = _monitor(run.trainer)
        history = monitor.loss_history() if monitor else []
        val_history = monitor.val_losses if monitor else []
        plot_run(run.run_dir, summary["before"], summary["after"], history, val_history)
    log.info("run folder: %s", run.run_dir)


def write_summary(run: Any, summary: dict[str, Any]) -> None:
    """Write ``metrics.json`` (secrets masked) with each phase's figures so far; written
    before the export, and again after it. Rank 0 only."""
    # seconds and peak resident memory of each phase: load, evaluations, training, export
    summary["phases"] = {name: dict(figures) for name, figures in PHASES.items()}
    clean = redact(summary, secrets_in(run.cfg), by_key=False)  # keys are metric names
    path = run.run_dir / "metrics.json"
    try:
        write_metrics(path, clean)
    except OSError as err:
        raise StorageError(
            f"could not write {path} ({err.strerror or err}): nothing was exported, and the "
            "checkpoints are kept. Free some space or make the folder writable, then resume "
            f"with ckpt_path={run.run_dir / 'checkpoints' / 'last.ckpt'}"
        ) from err
