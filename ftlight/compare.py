"""``ftlight-compare``: runs side by side as a table, a CSV, a picture and a recommendation.

``ftlight-compare PATH...`` takes run folders or a multirun sweep folder. ``SweepComparison``
is the Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``) that writes the same files
into a sweep's folder after each trial, so a sweep always holds its comparison so far.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import hashlib
import io
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ftlight.errors import FtlightError
from ftlight.evaluation.compare import (
    TRIAL_FILE,
    Comparison,
    RunRecord,
    compare,
    recommend,
    short_key,
)
from ftlight.files import atomic_write_bytes, atomic_write_text
from ftlight.redact import MASK, is_secret_key

log = logging.getLogger("ftlight")

# one marker per strategy in the picture, in the order the strategies first appear
_MARKERS = ("s", "^", "o", "D", "v", "P", "X", "*", "<", ">", "h", "p")


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


# -- the picture --------------------------------------------------------------------------
def plot(c: Comparison) -> bytes | None:
    """``compare.png``: main metric after training vs trainable parameters (log x); one
    marker per strategy, LoRA points labelled with r, the before and few-shot levels as
    lines, the recommended run circled. None when no run has both figures."""
    points = [r for r in c.finished if r.trainable and r.score("after", c.metric) is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, strategy in enumerate(dict.fromkeys(r.strategy for r in points)):
        mine = [r for r in points if r.strategy == strategy]
        marker = _MARKERS[i % len(_MARKERS)]
        xs = [r.trainable for r in mine]
        ys = [r.score("after", c.metric) for r in mine]
        ax.scatter(xs, ys, marker=marker, s=55, label=strategy, zorder=3)
        # labels of alternate strategies on alternate sides: LoRA and QLoRA of one rank
        # have the same parameter count, so their points can sit on top of each other
        side = 1 if i % 2 == 0 else -1
        for r, x, y in zip(mine, xs, ys, strict=True):
            if r.rank is not None:
                ax.annotate(
                    f"r={r.rank}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(6 * side, 4),
                    ha="left" if side > 0 else "right",
                    fontsize=8,
                )
    k = next((r.few_shot_k for r in points if r.few_shot_k), None)
    for phase, style, name in (("before", "--", "before training"), ("few_shot", ":", f"{k}-shot")):
        # one line per distinct level: runs of one base model and data share it
        levels = {round(v, 6) for r in points if (v := r.score(phase, c.metric)) is not None}
        for i, level in enumerate(sorted(levels)):
            ax.axhline(level, ls=style, color="grey", lw=1, label=None if i else name)
    pick, _ = recommend(c)
    if pick is not None and pick in points:
        ax.scatter(
            [pick.trainable],
            [pick.score("after", c.metric)],
            s=260,
            facecolors="none",
            edgecolors="black",
            lw=1.2,
            label="recommended",
            zorder=4,
        )
    values = [
        v
        for r in points
        for p in ("before", "few_shot", "after")
        if (v := r.score(p, c.metric)) is not None
    ]
    if not c.lower_is_better and 0.0 <= min(values) and max(values) <= 1.0:
        # a score: keep the 0-1 scale readable even when every run scores the same
        low, high = min(values), max(values)
        pad = max(0.05, 0.1 * (high - low))
        ax.set_ylim(max(-0.02, low - pad), min(1.02, high + pad))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{c.metric} after training")
    ax.set_title(f"{c.metric} vs trainable parameters")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


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


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="ftlight-compare",
        description="Compare fine-tuning runs: one row per run (strategy, the overrides that "
        "differ, trainable parameters, the main metric before and after, training time, "
        "tokens/s, peak memory, saved size, forgetting), a recommendation, compare.md, "
        "compare.csv and compare.png.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or a sweep folder")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="recommend the run with the fewest trainable parameters within this much of the "
        "best score (default 0.01: one point of accuracy)",
    )
    parser.add_argument("--metric", default=None, help="compare on this metric instead")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for compare.md/.csv/.png (default: the one folder given, else the "
        "current folder)",
    )
    args = parser.parse_args(argv)
    try:
        c = compare(args.paths, metric=args.metric, tolerance=args.tolerance)
        out = args.out or (args.paths[0] if len(args.paths) == 1 else Path("."))
        print(format_console(c))
        written = write_comparison(c, out)
    except FtlightError as err:
        parser.exit(2, f"ftlight-compare: {err}\n")
    print("\nwrote " + ", ".join(str(p) for p in written))


# -- the sweep callback -------------------------------------------------------------------
NAME_LIMIT = 200
"""Longest trial folder name, in bytes (file systems take 255; the job number comes first)."""


def trial_name(overrides: Any, exclude: Any = ()) -> str:
    """A sweep trial's folder name: its ``key=value`` overrides, sorted, joined by commas.

    What Hydra's ``override_dirname`` gives, made safe for a folder name: secret values
    masked (``ftlight.redact``), ``/`` replaced so that a path value opens no subfolders, and
    a long name cut (with a hash of the whole, so that names stay distinct).
    """
    items = []
    for line in overrides:
        key, sep, value = str(line).partition("=")
        if key.lstrip("+~") in set(exclude):
            continue
        items.append(f"{key}{sep}{MASK if sep and is_secret_key(key) else value}")
    name = ",".join(sorted(items)).replace("/", "_").replace("\\", "_")
    if len(name.encode()) > NAME_LIMIT:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name.encode()[: NAME_LIMIT - 9].decode(errors="ignore") + "~" + digest
    return name



def in_sweep() -> bool:
    """Whether this process runs a trial of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class SweepComparison(Callback):
    """Writes the sweep's comparison into its folder after every trial and at the end.

    After each trial it also records ``trial.json`` in the trial's folder: whether it
    failed and why, and its peak resident memory. Trials of a local sweep run one after the
    other in one process, whose lifetime peak is all a run can report about itself, so each
    trial starts by freeing what earlier ones left and resetting the peak (Linux); what
    stays resident (``rss_at_start_mb``) still counts towards its peak.
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._rss_at_start: float | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Reset the process's peak-memory counter for this trial."""
        if _is_multirun(config):
            self._started = time.perf_counter()
            _release_free_memory()  # what earlier trials freed should not count as this one's
            self._rss_at_start = _reset_peak_rss()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Record the trial, then refresh the comparison of every trial so far."""
        if not _is_multirun(config):
            return
        try:
            self._record(Path(config.hydra.runtime.output_dir), job_return)
            c = compare([Path(config.hydra.sweep.dir)])
            write_comparison(c, Path(config.hydra.sweep.dir))
            log.info("comparison of %d runs so far: %s", len(c.runs), config.hydra.sweep.dir)
        except Exception as err:  # a comparison must never fail the sweep it describes
            log.warning("could not write the comparison of %s: %s", config.hydra.sweep.dir, err)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the final comparison and print it."""
        sweep = Path(config.hydra.sweep.dir)
        try:
            c = compare([sweep])
            written = write_comparison(c, sweep)
        except Exception as err:
            print(f"ftlight: no comparison for {sweep}: {err}", file=sys.stderr)
            return
        print("\n" + format_console(c) + "\n\nwrote " + ", ".join(str(p) for p in written))

    def _record(self, run_dir: Path, job_return: Any) -> None:
        """``trial.json``: completed or failed (and why), wall time, peak and starting RSS."""
        failed = job_return.status == JobStatus.FAILED
        record: dict[str, Any] = {
            "status": "failed" if failed else "completed",
            "wall_seconds": round(time.perf_counter() - self._started, 1),
            "peak_rss_mb": _status_mb("VmHWM"),
            "rss_at_start_mb": self._rss_at_start,
        }
        if failed:
            try:
                job_return.return_value  # noqa: B018  (raises the trial's exception)
            except Exception as err:
                text = str(err).strip()
                record["error"] = text.splitlines()[0] if text else repr(err)
        if run_dir.is_dir():
            atomic_write_text(run_dir / TRIAL_FILE, json.dumps(record, indent=2) + "\n")


def _is_multirun(config: DictConfig) -> bool:
    return config.hydra.get("mode") == RunMode.MULTIRUN


def _release_free_memory() -> None:
    """Collect garbage and hand the C library's free heap back to the system (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator keeps what it keeps
        pass


def _reset_peak_rss() -> float | None:
    """Reset the kernel's peak-RSS counter of this process; the RSS now (MB), or None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_mb("VmRSS")


def _status_mb(name: str) -> float | None:
    """A ``/proc/self/status`` memory figure in MB (Linux), or None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
    return round(int(match.group(1)) / 1024, 1) if match else None


if __name__ == "__main__":
    main()
