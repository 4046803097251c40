"""The before/after report: console table, ``metrics.json``, PNG plots and the model card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ftlight.files import atomic_write_text

log = logging.getLogger("ftlight")

# Metrics where lower is better (the table marks the direction of change).
LOWER_IS_BETTER = {"loss", "perplexity"}


def format_table(
    before: dict[str, float], after: dict[str, float], few_shot: dict[str, Any] | None = None
) -> str:
    """A plain-text table of every metric before and after training; a ``few_shot`` block
    (``metrics.json``) adds the prompted base model's column between the two."""
    shots = (few_shot or {}).get("scores", {})
    keys = sorted(set(before) | set(after), key=lambda k: (k not in _ORDER, _ORDER.get(k, 0), k))
    width = max([len(k) for k in keys] + [6])
    middle = f"  {str(few_shot['k']) + '-shot':>10}" if few_shot else ""
    lines = [f"{'metric':<{width}}  {'before':>10}{middle}  {'after':>10}  {'change':>10}"]
    lines.append("-" * len(lines[0]))
    for k in keys:
        b, a = before.get(k), after.get(k)
        change = "" if b is None or a is None else f"{a - b:+10.4f}"
        shot = f"  {_fmt(shots.get(k)):>10}" if few_shot else ""
        lines.append(f"{k:<{width}}  {_fmt(b):>10}{shot}  {_fmt(a):>10}  {change:>10}")
    return "\n".join(lines)


_ORDER = {
    "exact_match": 0,
    "json/valid_json": 1,
    "json/exact_match": 2,
    "accuracy": 0,
    "f1_macro": 1,
    "loss": 5,
    "perplexity": 6,
    "token_accuracy": 7,
}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_metrics(path: Path, payload: dict[str, Any]) -> None:
    """Write ``metrics.json`` atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=float) + "\n")


def plot_run(
    out_dir: Path,
    before: dict[str, float],
    after: dict[str, float],
    train_losses: list[tuple[int, float]],
    val_losses: list[tuple[int, float]],
) -> list[Path]:
    """``metrics.png`` (before vs after bars) and ``loss.png`` (training/validation curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    scores = [k for k in sorted(after) if k in before and k not in LOWER_IS_BETTER]
    if scores:
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(scores) + 2), 3.6))
        xs = range(len(scores))
        ax.bar([x - 0.2 for x in xs], [before[k] for k in scores], 0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [after[k] for k in scores], 0.4, label="after")
        ax.set_xticks(list(xs), scores, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, max(1.0, *[after[k] for k in scores], *[before[k] for k in scores]))
        ax.set_title("evaluation before and after fine-tuning")
        ax.legend()
        fig.tight_layout()
        path = out_dir / "metrics.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if train_losses:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        steps, losses = zip(*train_losses, strict=True)
        ax.plot(steps, losses, lw=0.8, alpha=0.5, label="train (micro-batch)")
        if len(losses) >= 10:
            k = max(2, len(losses) // 20)
            smooth = [
                sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
                for i in range(len(losses))
            ]
            ax.plot(steps, smooth, lw=1.5, label=f"train (mean of {k})")
        if val_losses:
            vs, vl = zip(*val_losses, strict=True)
            ax.plot(vs, vl, "o-", label="validation")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title("loss")
        ax.legend()
        fig.tight_layout()
        path = out_dir / "loss.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def model_card(meta: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> str:
    """A README for the export folder: base model, strategy, data, hyperparameters, metrics."""
    lines = [
        f"# {meta.get('base_model', 'model')} fine-tuned with ftlight ({meta.get('strategy')})",
        "",
        f"- base model: `{meta.get('base_model')}`",
        f"- task: `{meta.get('task')}`",
        f"- strategy: `{meta.get('strategy')}` "
        f"({meta.get('params', {}).get('trainable', 0):,} trainable of "
        f"{meta.get('params', {}).get('total', 0):,} parameters)",
        f"- data: {meta.get('data')}",
        "",
        "## Hyperparameters",
        "",
        "```yaml",
        meta.get("config_yaml", "").strip(),
        "```",
        "",
        "## Evaluation (same split, same metrics)",
        "",
        "```",
        format_table(before, after),
        "```",
        "",
    ]
    return "\n".join(lines)
