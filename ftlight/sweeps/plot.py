"""``compare.png``: the main metric after training against trainable parameters."""

from __future__ import annotations

import io

from ftlight.sweeps.compare import Comparison, recommend

# one marker per strategy in the picture, in the order the strategies first appear
_MARKERS = ("s", "^", "o", "D", "v", "P", "X", "*", "<", ">", "h", "p")


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
