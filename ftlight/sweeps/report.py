"""A comparison as text: the console table, ``compare.md`` and ``compare.csv``; and
``write_comparison``, which writes those files and ``compare.png`` into a folder."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ftlight.files import atomic_write_bytes, atomic_write_text
from ftlight.sweeps.compare import Comparison, recommend, short_key
from ftlight.sweeps.plot import plot
from ftlight.sweeps.runs import RunRecord


# -- the table ----------------------------------------------------------------------------
def table(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """Column names and one row of text per run (the console and Markdown tables)."""
    keys = [k for k in c.varying if k != "strategy"]
    rank_column = "strategy.r" not in keys and any(r.rank is not None for r in c.runs)
    k = next((r.few_shot_k for r in c.runs if r.few_shot_k), None)
    general = any(r.score("before", "general/perplexity") is not None for r in c.runs)
    head = ["run", "strategy", *(short_key(key, keys) for key in keys)]
    head += ["r"] if rank_column else []
    head += ["trainable", "%", f"{c.metric} before"] + ([f"{k}-shot"] if k else [])
    head += ["after", "change"] + (["general ppl"] if general else [])
    head += ["train s", "tokens/s", "peak MB", "saved", "status"]
    rows = []
    for run in c.runs:
        before, after = run.score("before", c.metric), run.score("after", c.metric)
        row = [run.name, run.strategy, *(run.overrides.get(key, "-") for key in keys)]
        row += [_int(run.rank)] if rank_column else []
        pct = 100.0 * run.trainable / run.total if run.trainable and run.total else None
        row += [_int(run.trainable), _pct(pct), _num(before)]
        row += [_num(run.score("few_shot", c.metric))] if k else []
        change = None if before is None or after is None else after - before
        row += [_num(after), "-" if change is None else f"{change:+.3f}"]
        if general:
            gb = run.score("before", "general/perplexity")
            ga = run.score("after", "general/perplexity")
            row.append(_forgetting(gb, ga))
        tokens = run.tokens_per_s or None  # 0: too few steps past the warm-up to time
        row += [_num(run.train_seconds, 1), _num(tokens, 0)]
        row += [_num(c.peak_memory_mb(run), 0), _size(run.saved_bytes, run.saved_what)]
        row.append("ok" if run.ok else f"{run.status}: {run.note}")
        rows.append(row)
    return head, rows


def format_console(c: Comparison) -> str:
    """The table in fixed-width columns, then the recommendation."""
    head, rows = table(c)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    widths[-1] = len(head[-1])  # the status runs on; it is the last column
    lines = ["  ".join(x.ljust(w) for x, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([*lines, "", *recommend(c)[1]])


def to_markdown(c: Comparison, picture: str | None = "compare.png") -> str:
    """``compare.md``: the table, the recommendation and how both were read."""
    head, rows = table(c)
    cell = [[x.replace("|", "\\|") for x in row] for row in [head, *rows]]
    lines = ["# Comparison", ""]
    lines += ["| " + " | ".join(cell[0]) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in cell[1:]]
    lines += ["", "## Recommendation", "", *recommend(c)[1], ""]
    if picture:
        lines += [f"![{c.metric} after training vs trainable parameters]({picture})", ""]
    better = "lower" if c.lower_is_better else "higher"
    lines += [
        "## How to read it",
        "",
        f"- Main metric: `{c.metric}` ({better} is better), on each run's evaluation split "
        "before and after training. It is the first of accuracy, json/exact_match, "
        "exact_match that every finished run reports, else loss (`--metric` picks another); "
        "every metric is in compare.csv.",
        f"- Recommendation: the run with the fewest trainable parameters whose score is within "
        f"{c.tolerance:g} of the best run's (`--tolerance`).",
        "- `general ppl`: perplexity on general text before -> after training "
        "(`eval.general`); a rise means the model forgot some general language.",
        "- `train s`: wall time of training; `tokens/s`: real (non-padding) training tokens "
        "per second; `peak MB`: peak memory (GPU: allocated; CPU: resident, for a trial of "
        "a local sweep its rise over its start plus the process's resident memory after "
        "imports, as if it had run alone); `saved`: the adapter's size, else the model's.",
        "",
    ]
    return "\n".join(lines)


def write_csv(c: Comparison) -> str:
    """``compare.csv``: one row per run with every figure, every metric included."""
    phases = ("before", "few_shot", "after")
    names = sorted(
        {m for r in c.runs for p in phases for m in _phase(r, p)},
        key=lambda m: (m.startswith("general/"), m),
    )
    columns = ["run", "status", "note", "strategy", "task", "model", *c.varying, "r"]
    columns += ["trainable", "total", "main_metric", "few_shot_k", "train_seconds"]
    columns += ["train_steps", "tokens_per_s", "peak_memory_mb", "trial_peak_rss_mb"]
    columns += ["trial_rss_at_start_mb"]
    columns += ["saved", "saved_bytes"]
    columns += [f"{p}/{m}" for p in phases for m in names]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for run in c.runs:
        row: dict[str, Any] = {
            "run": run.name,
            "status": run.status,
            "note": run.note,
            "strategy": run.strategy,
            "task": run.task,
            "model": run.metrics.get("model") or run.choices.get("model"),
            "r": run.rank,
            "trainable": run.trainable,
            "total": run.total,
            "main_metric": c.metric,
            "few_shot_k": run.few_shot_k,
            "train_seconds": run.train_seconds,
            "train_steps": (run.metrics.get("train") or {}).get("steps"),
            "tokens_per_s": run.tokens_per_s,
            "peak_memory_mb": c.peak_memory_mb(run),
            "trial_peak_rss_mb": run.trial.get("peak_rss_mb"),
            "trial_rss_at_start_mb": run.trial.get("rss_at_start_mb"),
            "saved": run.saved_what,
            "saved_bytes": run.saved_bytes,
        }
        row.update({k: run.overrides.get(k) for k in c.varying})
        row.update({f"{p}/{m}": v for p in phases for m, v in _phase(run, p).items()})
        writer.writerow(row)
    return out.getvalue()


def _phase(run: RunRecord, phase: str) -> dict[str, float]:
    if phase == "few_shot":
        return (run.metrics.get("few_shot") or {}).get("scores") or {}
    return run.metrics.get(phase) or {}


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _forgetting(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{before:.2f} -> {after:.2f} ({100.0 * (after - before) / before:+.1f}%)"


def _size(size: int | None, what: str) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            text = f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            return f"{text} ({what})"
        size /= 1024
    return "-"


# -- writing ------------------------------------------------------------------------------
def write_comparison(c: Comparison, out: Path) -> list[Path]:
    """Write ``compare.md``, ``compare.csv`` and ``compare.png`` into ``out``."""
    picture = plot(c)
    written = []
    if picture is not None:
        atomic_write_bytes(out / "compare.png", picture)
        written.append(out / "compare.png")
    atomic_write_text(out / "compare.md", to_markdown(c, "compare.png" if picture else None))
    atomic_write_text(out / "compare.csv", write_csv(c))
    return [out / "compare.md", out / "compare.csv", *written]
