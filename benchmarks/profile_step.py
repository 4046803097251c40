r"""Where ftlight's training step spends its time: torch.profiler over a few real steps.

    python benchmarks/profile_step.py                      # SmolLM2-135M + LoRA, 5 + 5 steps
    python benchmarks/profile_step.py --model tiny-llama --warmup 1 --steps 2 --packing

Runs ftlight's own path (``build_run(cfg)`` then ``trainer.fit``, the same composed config
as ``throughput.py``), profiles ``--steps`` optimizer steps after ``--warmup`` untimed ones,
and prints each kind of work's share of the step: matrix products (with the FLOP/s they
reach against the device's measured peak), attention, the loss, the optimizer, element-wise
work and copies, and the time outside any operator (Python, Lightning, data loading).
The process runs on the malloc ``ftlight-train`` would pick, like the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# (category, test on the operator name); the first match wins. Self time is counted, so a
# composite operator (aten::linear -> aten::mm) is charged to the leaf that did the work.
CATEGORIES: list[tuple[str, Callable[[str], bool]]] = [
    ("matmul", lambda n: n in {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}),
    ("attention", lambda n: "scaled_dot_product" in n or "flash_attention" in n),
    ("loss", lambda n: any(k in n for k in ("cross_entropy", "log_softmax", "nll_loss"))),
    ("optimizer", lambda n: n.startswith("aten::_foreach") or "adam" in n.lower()),
    (
        "copies and casts",
        lambda n: (
            n
            in {
                "aten::copy_",
                "aten::_to_copy",
                "aten::to",
                "aten::clone",
                "aten::contiguous",
                "aten::cat",
                "aten::empty_like",
                "aten::zeros_like",
                "aten::fill_",
                "aten::zero_",
            }
        ),
    ),
    ("other operators", lambda n: True),
]
"""Operator categories, matched in order."""


def categorize(name: str) -> str:
    """The category of one operator name (see ``CATEGORIES``)."""
    for category, test in CATEGORIES:
        if test(name):
            return category
    return "other operators"  # unreachable: the last test accepts everything


def summarize(
    events: Iterable[Any],
    wall_s: float,
    steps: int,
    peak_flops: float,
    time_attr: str = "self_cpu_time_total",
) -> dict[str, Any]:
    """Per-category self time per step, its share of the step, and matmul FLOP/s.

    ``events`` are ``profiler.key_averages()`` rows (``key``, ``count``, ``flops`` and the
    self time ``time_attr`` in microseconds: ``self_cpu_time_total`` on a CPU,
    ``self_device_time_total`` on a GPU, where CPU time is only the kernel launches).
    ``wall_s`` is the wall time of the profiled steps. Time the operators do not account
    for is reported as ``outside operators`` (on a GPU: time the device sat idle).
    """
    per_cat: dict[str, dict[str, float]] = {}
    top: list[tuple[float, str, int]] = []
    for evt in events:
        name = evt.key
        if not name.startswith("aten::"):
            continue  # record_function ranges and autograd nodes only wrap aten work
        seconds = getattr(evt, time_attr) / 1e6
        cat = per_cat.setdefault(categorize(name), {"seconds": 0.0, "flops": 0.0, "calls": 0})
        cat["seconds"] += seconds
        cat["flops"] += float(getattr(evt, "flops", 0) or 0)
        cat["calls"] += int(evt.count)
        top.append((seconds, name, int(evt.count)))
    in_ops = sum(c["seconds"] for c in per_cat.values())
    per_cat["outside operators"] = {"seconds": max(0.0, wall_s - in_ops), "flops": 0.0, "calls": 0}
    rows = {}
    for name, c in sorted(per_cat.items(), key=lambda kv: -kv[1]["seconds"]):
        row: dict[str, Any] = {
            "ms_per_step": 1e3 * c["seconds"] / steps,
            "share": c["seconds"] / wall_s if wall_s > 0 else 0.0,
            "calls_per_step": c["calls"] / steps,
        }
        if c["flops"] and c["seconds"] > 0:
            row["gflop_per_step"] = c["flops"] / steps / 1e9
            row["gflop_per_s"] = c["flops"] / c["seconds"] / 1e9
            row["of_peak"] = c["flops"] / c["seconds"] / peak_flops
        rows[name] = row
    top.sort(reverse=True)
    return {
        "wall_s_per_step": wall_s / steps,
        "categories": rows,
        "top_operators": [
            {"name": n, "ms_per_step": 1e3 * s / steps, "calls_per_step": c / steps}
            for s, n, c in top[:15]
        ],
    }


def format_summary(summary: dict[str, Any], peak_flops: float) -> str:
    """The printed report."""
    lines = [
        f"step wall time {1e3 * summary['wall_s_per_step']:.0f} ms; device matmul peak "
        f"{peak_flops / 1e9:.0f} GFLOP/s",
        "",
        "| work | ms/step | share of step | calls/step | GFLOP/step | GFLOP/s | of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["categories"].items():
        flops = "-", "-", "-"
        if "gflop_per_s" in row:
            flops = (
                f"{row['gflop_per_step']:.1f}",
                f"{row['gflop_per_s']:.0f}",
                f"{100 * row['of_peak']:.0f}%",
            )
        lines.append(
            f"| {name} | {row['ms_per_step']:.1f} | {100 * row['share']:.1f}% | "
            f"{row['calls_per_step']:.0f} | {flops[0]} | {flops[1]} | {flops[2]} |"
        )
    lines += ["", "top operators by self time:"]
    for op in summary["top_operators"]:
        ms, calls = op["ms_per_step"], op["calls_per_step"]
        lines.append(f"  {op['name']:<48} {ms:8.1f} ms/step  {calls:6.0f} calls")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the throughput benchmark's, where they apply)."""
    from bench_common import add_run_options, settle_run_options

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_run_options(p, 5, "profiled optimizer steps", "unprofiled steps before them")
    p.add_argument("--trace", type=Path, default=None, help="also write a Chrome trace here")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    opts = p.parse_args(argv)
    settle_run_options(p, opts, min_rows=200)
    return opts


def main(argv: list[str] | None = None) -> int:
    """Profile ftlight's training step and print where the time goes."""
    from ftlight.speed.allocator import use_fast_allocator

    use_fast_allocator()  # the malloc ftlight-train runs on (restarts this process once)
    opts = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import lightning as L
    import torch
    from bench_common import machine_info, pick_device
    from bench_systems import compose, seed
    from torch.profiler import ProfilerActivity, profile

    from ftlight.build import build_run
    from ftlight.measure.hardware import peak_flops

    device = pick_device(opts.device)
    peak = peak_flops(device, None if opts.precision == "bf16" else torch.float32)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    class StepProfiler(L.Callback):
        """Starts the profiler after the warmup steps, stops it after the profiled ones."""

        def __init__(self) -> None:
            self.prof: Any = None
            self.wall = 0.0
            self.started = 0.0

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
            # optimizer steps, like the stop below (a step may take several micro-batches)
            if trainer.global_step == opts.warmup and self.prof is None:
                self.prof = profile(activities=activities, record_shapes=True, with_flops=True)
                self.prof.__enter__()
                self.started = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            done = trainer.global_step == opts.warmup + opts.steps
            if done and self.prof is not None and not self.wall:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                self.wall = time.perf_counter() - self.started
                self.prof.__exit__(None, None, None)

    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="ftlight-profile-") as run_dir:
        opts.override = [
            *(opts.override or []),
            "trainer.log_every_n_steps=1000",
            "trainer.enable_model_summary=false",
        ]
        cfg = compose(opts, device, run_dir)
        seed(cfg)
        run = build_run(cfg)
        profiler = StepProfiler()
        run.trainer.callbacks.append(profiler)
        run.trainer.fit(run.module, datamodule=run.data)
    if profiler.prof is None or profiler.wall == 0.0:
        print("the run ended before the profiled steps: raise data rows or lower --warmup")
        return 1
    time_attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = profiler.prof.key_averages()
    summary = summarize(events, profiler.wall, opts.steps, peak, time_attr)
    print(
        f"# ftlight training step profile: {opts.model}, {opts.precision}, batch "
        f"{opts.batch_size}, packing {opts.packing}, {opts.steps} steps after {opts.warmup}"
    )
    print(
        f"machine: {machine['cpu']} | {machine['cores']} cores, torch threads "
        f"{machine['torch_threads']} | malloc {machine['allocator']} | torch {machine['torch']}"
    )
    print(format_summary(summary, peak))
    if opts.trace:
        profiler.prof.export_chrome_trace(str(opts.trace))
        print(f"wrote {opts.trace}")
    if opts.json:
        opts.json.write_text(
            json.dumps({"machine": machine, "peak_flops": peak, **summary}, indent=2, default=str)
        )
        print(f"wrote {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
