"""Runs side by side: pick the main metric, find what differs, recommend one.

The runs are read by ``ftlight.sweeps.runs``; shown by ``ftlight.sweeps.report`` (table,
Markdown, CSV) and ``ftlight.sweeps.plot`` (the picture).

The main metric is the first of ``PREFERRED`` that every finished run reports after training,
else the loss; ``--metric`` picks another. The recommendation is the run with the fewest
trainable parameters whose score is within a tolerance of the best run's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ftlight.errors import ConfigError
from ftlight.sweeps.runs import RunRecord, find_runs, is_run_folder, read_run

PREFERRED = ("accuracy", "json/exact_match", "exact_match")
"""Main metric, in order of preference: classification accuracy, then structured-record exact
match (a JSON answer with the same fields and values), then plain exact match."""

FALLBACK = "loss"
"""Main metric when runs report none of ``PREFERRED`` (e.g. causal LM without generation)."""

_LOWER_IS_BETTER = ("loss", "perplexity")


# -- the comparison -----------------------------------------------------------------------
@dataclass
class Comparison:
    """Runs of one task, the metric they are compared on, and what differs between them."""

    runs: list[RunRecord]
    metric: str
    varying: list[str]
    tolerance: float

    @property
    def lower_is_better(self) -> bool:
        """Whether a smaller value of the main metric is better (loss, perplexity)."""
        return lower_is_better(self.metric)

    @property
    def finished(self) -> list[RunRecord]:
        """Runs with metrics."""
        return [r for r in self.runs if r.ok]

    def peak_memory_mb(self, run: RunRecord) -> float | None:
        """Peak memory of a run as if it had run alone.

        Trials of a local sweep share one process, so a CPU run's own report is the peak of
        every trial so far. The sweep callback records each trial's peak RSS and its RSS at
        the start; the trial's rise over its start, plus the smallest start of the sweep (the
        process after its imports), estimates its peak alone.
        """
        accelerator = str((run.config.get("trainer") or {}).get("accelerator", ""))
        peak, start = run.trial.get("peak_rss_mb"), run.trial.get("rss_at_start_mb")
        if accelerator != "cpu" or peak is None or start is None:
            return run.peak_memory_mb
        starts = [r.trial["rss_at_start_mb"] for r in self.runs if r.trial.get("rss_at_start_mb")]
        return float(peak) - float(start) + min(starts)

    @property
    def strategies_differ(self) -> bool:
        """Whether the runs use more than one strategy."""
        return len({r.strategy for r in self.runs}) > 1

    def label(self, run: RunRecord) -> str:
        """A short name for a run: its strategy (when they differ), rank, other overrides."""
        parts = [run.strategy] if self.strategies_differ else []
        if run.rank is not None and (self.strategies_differ or "strategy.r" in self.varying):
            parts.append(f"r={run.rank}")
        parts += [
            f"{short_key(k, self.varying)}={run.overrides[k]}"
            for k in self.varying
            if k not in ("strategy", "strategy.r") and k in run.overrides
        ]
        return " ".join(parts) or run.name


def compare(paths: list[Path], metric: str | None = None, tolerance: float = 0.01) -> Comparison:
    """Read the runs under ``paths`` and set up their comparison."""
    if not (isinstance(tolerance, int | float) and tolerance >= 0 and math.isfinite(tolerance)):
        raise ConfigError(f"--tolerance {tolerance!r}: expected a number >= 0, e.g. 0.01")
    folders = [p.resolve() for p in find_runs(paths)]  # relative and absolute paths alike
    root = _common_root(folders, [p.resolve() for p in paths])
    runs = [read_run(p, p.relative_to(root).as_posix() if p != root else p.name) for p in folders]
    _check_one_task(runs)
    return Comparison(
        runs=runs,
        metric=choose_metric(runs, metric),
        varying=varying_overrides(runs),
        tolerance=float(tolerance),
    )


def _common_root(folders: list[Path], given: list[Path]) -> Path:
    if len(given) == 1 and not is_run_folder(given[0]):
        return given[0]
    resolved = [p.resolve() for p in folders]
    if len(resolved) == 1:
        return folders[0].parent
    common = Path(os.path.commonpath(resolved))
    return common if common not in resolved else common.parent


def _check_one_task(runs: list[RunRecord]) -> None:
    by_task: dict[str, list[str]] = {}
    for run in runs:
        if run.task:
            by_task.setdefault(run.task, []).append(run.name)
    if len(by_task) > 1:
        groups = "; ".join(f"task={t}: {', '.join(names)}" for t, names in by_task.items())
        raise ConfigError(
            f"cannot compare runs of different tasks ({groups}): their metrics measure "
            "different things. Compare each task's runs separately, e.g. ftlight-compare "
            + " ".join(str(r.path) for r in runs if r.task == next(iter(by_task)))
        )


def lower_is_better(metric: str) -> bool:
    """Loss and perplexity fall as a model improves; every other metric rises."""
    return metric.rsplit("/", 1)[-1] in _LOWER_IS_BETTER


def choose_metric(runs: list[RunRecord], requested: str | None = None) -> str:
    """The requested metric (checked), else the first of ``PREFERRED`` all finished runs
    report, else ``FALLBACK``."""
    finished = [r for r in runs if r.ok]
    reported = sorted({k for r in finished for k in r.metrics.get("after") or {}})
    if requested:
        if finished and requested not in reported:
            raise ConfigError(
                f"--metric {requested}: no run reports it after training; they report "
                f"{', '.join(reported) or 'nothing'}"
            )
        return requested
    for name in PREFERRED:
        if finished and all(name in (r.metrics.get("after") or {}) for r in finished):
            return name
    return FALLBACK


def varying_overrides(runs: list[RunRecord]) -> list[str]:
    """Override keys whose value is not the same in every run (missing counts as a value)."""
    keys = sorted({k for r in runs for k in r.overrides})
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def short_key(key: str, keys: list[str]) -> str:
    """``strategy.r`` -> ``r`` unless another key ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


# -- the recommendation -------------------------------------------------------------------
def recommend(comparison: Comparison) -> tuple[RunRecord | None, list[str]]:
    """The run with the fewest trainable parameters whose score is within the tolerance of
    the best run's, and the lines that give the evidence (plus the smallest rank within the
    tolerance, when runs of several ranks were compared)."""
    c, metric = comparison, comparison.metric
    scored = [r for r in c.finished if r.score("after", metric) is not None and r.trainable]
    if len(scored) < 2:
        n = "no finished run" if not scored else "only one finished run"
        return None, [f"{n} scored on {metric}: nothing to choose between."]
    sign = 1.0 if c.lower_is_better else -1.0

    def value(r: RunRecord) -> float:
        return float(r.score("after", metric))

    best = min(scored, key=lambda r: (sign * value(r), r.trainable))
    near = [r for r in scored if sign * (value(r) - value(best)) <= c.tolerance + 1e-12]
    pick = min(near, key=lambda r: (r.trainable, sign * value(r), r.train_seconds or 0.0))
    within = _tolerance_words(c.tolerance, metric)
    lines = [_evidence(c, pick, best, within)]
    ranked = [r for r in near if r.rank is not None]
    if len({r.rank for r in scored if r.rank is not None}) > 1 and ranked:
        low = min(ranked, key=lambda r: (r.rank, r.trainable))
        if low is not pick:
            lines.append(
                f"Smallest rank within {within} of the best: {c.label(low)} "
                f"({_num(value(low))}, {low.trainable:,} trainable parameters)."
            )
    return pick, lines


def _evidence(c: Comparison, pick: RunRecord, best: RunRecord, within: str) -> str:
    metric = c.metric
    value = f"{_num(pick.score('after', metric))} {metric}"
    if pick is best:
        others = [r for r in c.finished if r is not best and r.score("after", metric) is not None]
        runner = ""
        if others:
            sign = 1.0 if c.lower_is_better else -1.0
            nxt = min(others, key=lambda r: sign * r.score("after", metric))
            runner = f" (next: {c.label(nxt)}, {_num(nxt.score('after', metric))})"
        return (
            f"{c.label(pick)} scores best ({value}), and no run with fewer trainable "
            f"parameters comes within {within} of it{runner}."
        )
    ratio = best.trainable / pick.trainable
    fewer = f"{_ratio(ratio)}x fewer" if ratio >= 1.05 else "as many"
    return (
        f"{c.label(pick)} reaches {value}, within {within} of the best "
        f"({c.label(best)}, {_num(best.score('after', metric))}), with {fewer} trainable "
        f"parameters ({pick.trainable:,} vs {best.trainable:,})."
    )


def _tolerance_words(tolerance: float, metric: str) -> str:
    if lower_is_better(metric):
        return f"{tolerance:g}"
    points = tolerance * 100
    return f"{points:g} point" + ("" if points == 1 else "s")


def _ratio(ratio: float) -> str:
    return f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.2g}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
