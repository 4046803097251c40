r"""Training throughput of ftlight against a hand-written loop, the HF Trainer and TRL.

    python benchmarks/throughput.py --model smollm2-135m --steps 30 --warmup 5 \
        --systems ftlight,loop,hf_trainer,trl --json out.json

Every system trains the same model, LoRA config, rows, batch size, learning rate and
precision, in its own process (one after another), so that peak memory is per system and
one system cannot slow another. See benchmarks/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    add_run_options,
    emit,
    machine_info,
    memory_figures,
    pick_device,
    run_child,
    settle_run_options,
)

SYSTEM_NAMES = ("ftlight", "loop", "hf_trainer", "trl")
FORMULAS = (
    "per-step rate = real tokens in the step / step seconds (end of previous step to end of "
    "this one: data loading, hooks and logging included); aggregate = timed real tokens / "
    "timed seconds; real tokens = attention_mask.sum() (packed rows: positions before the pad "
    "tail); MFU = aggregate tok/s x ftlight.measure.mfu.flops_per_token(total, trainable) "
    "[= 4*total + 2*trainable] / ftlight.measure.hardware.peak_flops(device) [measured matmul "
    "peak in the run's precision; the highest of the parent's and each system process's "
    "measurements]"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--only`` is how the parent starts a child)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_run_options(p, 30, "timed optimizer steps", "untimed steps before them")
    p.add_argument("--systems", default="ftlight,loop,hf_trainer,trl")
    p.add_argument("--rows", type=int, default=None, help="demo training rows (default: enough)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the systems round robin this many times; report each one's fastest run",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads in each system's process"
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per system")
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--only", choices=SYSTEM_NAMES, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.repeats < 1:
        p.error("--repeats must be >= 1")
    settle_run_options(p, opts, min_rows=1000)
    systems = [s.strip() for s in opts.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEM_NAMES))
    if unknown:
        p.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEM_NAMES)}")
    opts.system_list = systems
    return opts


def child_main(opts: argparse.Namespace) -> None:
    """Train one system in this process and print its result line."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger("ftlight").setLevel(logging.WARNING)
    import torch
    from bench_systems import SYSTEMS

    from ftlight.measure.hardware import peak_flops

    if opts.threads:
        torch.set_num_threads(opts.threads)
    started = time.perf_counter()
    device = pick_device(opts.device)
    outcome = SYSTEMS[opts.only](opts, device)
    timer = outcome.timer
    emit(
        {
            "system": opts.only,
            "device": str(device),
            "params": outcome.params,
            "summary": timer.summary(),
            "steps": timer.steps,
            "losses": {str(k): v for k, v in sorted(timer.losses.items())},
            "memory": memory_figures(device),
            "setup_s": (timer.t_first_step - started) if timer.t_first_step else None,
            "wall_s": time.perf_counter() - started,
            "notes": outcome.notes,
            "torch_threads": torch.get_num_threads(),
            "peak_flops": peak_flops(device, None if opts.precision == "bf16" else torch.float32),
            **outcome.extra,
        }
    )


def child_command(opts: argparse.Namespace, system: str) -> list[str]:
    """This script with the same options, for one system."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", system]
    cmd += ["--model", opts.model, "--steps", str(opts.steps), "--warmup", str(opts.warmup)]
    cmd += ["--batch-size", str(opts.batch_size), "--precision", opts.precision]
    cmd += ["--rows", str(opts.rows), "--device", opts.device]
    if opts.max_length:
        cmd += ["--max-length", str(opts.max_length)]
    if opts.threads:
        cmd += ["--threads", str(opts.threads)]
    if opts.packing:
        cmd.append("--packing")
    for item in opts.override or []:
        cmd += ["--override", item]
    return cmd


def print_run(tag: str, res: dict[str, Any]) -> None:
    """One line per finished child."""
    if "error" in res:
        print(f"{tag} FAILED: {res['error']}\n{res.get('log_tail', '')}", flush=True)
        return
    s = res["summary"]
    print(
        f"{tag} {s['tokens_per_s_aggregate']:.0f} real tok/s aggregate, median "
        f"{s['tokens_per_s_median']:.0f} (min {s['tokens_per_s_min']:.0f}, max "
        f"{s['tokens_per_s_max']:.0f}), {s['step_s_median']:.3f} s/step, wall "
        f"{res['wall_s']:.0f} s, lr {res.get('lr')}, load avg {res['load_avg_1min']}"
        + "".join(f"\n    note: {n}" for n in res.get("notes", [])),
        flush=True,
    )


def best_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest successful run (least disturbed by other work), all runs attached."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    best = max(ok, key=lambda r: r["summary"].get("tokens_per_s_aggregate", 0.0))
    if len(runs) > 1:
        best = {
            **best,
            "all_runs_tokens_per_s": [
                r.get("summary", {}).get("tokens_per_s_aggregate") for r in runs
            ],
        }
    return best


def add_derived(results: dict[str, dict[str, Any]], peak: float) -> None:
    """MFU per system and ftlight's throughput ratio to each other system."""
    from ftlight.measure.mfu import flops_per_token

    for res in results.values():
        s = res.get("summary") or {}
        rate = s.get("tokens_per_s_aggregate")
        if rate and res.get("params"):
            fpt = flops_per_token(res["params"]["total"], res["params"]["trainable"])
            res["flops_per_token"] = fpt
            res["mfu"] = rate * fpt / peak
    base = (results.get("ftlight") or {}).get("summary") or {}
    for res in results.values():
        s = res.get("summary") or {}
        if base.get("tokens_per_s_aggregate") and s.get("tokens_per_s_aggregate"):
            res["ftlight_ratio"] = base["tokens_per_s_aggregate"] / s["tokens_per_s_aggregate"]
            res["ftlight_ratio_median"] = base["tokens_per_s_median"] / s["tokens_per_s_median"]


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per system."""
    head = (
        "| system | real tok/s median (min-max) | aggregate tok/s | s/step median "
        "| in-step s median | peak mem MB | MFU | ftlight / system (aggregate, median) "
        "| loss first -> last |"
    )
    lines = [head, "|" + "---|" * 9]
    for name, res in results.items():
        if "error" in res or "skipped" in res:
            why = res.get("skipped") or res.get("error")
            lines.append(f"| {name} | {why} |" + " |" * 7)
            continue
        s = res["summary"]
        mem = res["memory"].get("cuda_peak_mb", res["memory"]["peak_rss_mb"])
        ratio = "-"
        if "ftlight_ratio" in res:
            ratio = f"{res['ftlight_ratio']:.2f}x (median {res['ftlight_ratio_median']:.2f}x)"
        loss = "-"
        if s.get("loss_first_timed") is not None:
            loss = f"{s['loss_first_timed']:.3f} -> {s['loss_last']:.3f}"
        lines.append(
            f"| {name} | {s['tokens_per_s_median']:.0f} ({s['tokens_per_s_min']:.0f}-"
            f"{s['tokens_per_s_max']:.0f}) | {s['tokens_per_s_aggregate']:.0f} | "
            f"{s['step_s_median']:.3f} | {s['inner_s_median']:.3f} | {mem:.0f} | "
            f"{100 * res.get('mfu', 0):.1f}% | {ratio} | {loss} |"
        )
    return "\n".join(lines)


def parent_main(opts: argparse.Namespace) -> int:
    """Run each system in a child process, then print and save the comparison."""
    import torch

    from ftlight.measure.hardware import peak_flops

    if opts.threads:  # measure the peak with the threads the systems will use
        torch.set_num_threads(opts.threads)
    device = pick_device(opts.device)
    machine = machine_info()
    dtype = None if opts.precision == "bf16" else torch.float32
    peak = peak_flops(device, dtype)
    print(f"# ftlight throughput benchmark: {opts.model}, {opts.precision}, device {device}")
    print(
        f"machine: {machine['cpu']} | {machine['cores']} cores, torch threads "
        f"{machine['torch_threads']} | load avg {machine['load_avg']} | GPU {machine['gpu']} | "
        f"malloc {machine['allocator']}"
    )
    print(
        f"versions: torch {machine['torch']}, transformers {machine['transformers']}, peft "
        f"{machine['peft']}, lightning {machine['lightning']}, trl {machine['trl']}"
    )
    print(
        f"settings: batch {opts.batch_size}, {opts.warmup} warmup + {opts.steps} timed steps, "
        f"packing {opts.packing}, {opts.rows} demo rows, max_length "
        f"{opts.max_length or 'config'}, repeats {opts.repeats}, threads "
        f"{opts.threads or 'default'}, LoRA (ftlight strategy=lora, "
        f"dropout 0), overrides {opts.override or []}"
    )
    print(f"peak (this process): {peak / 1e9:.0f} GFLOP/s ({opts.precision} matmul, measured)")
    print(f"formulas: {FORMULAS}\n", flush=True)

    log_dir = Path(tempfile.mkdtemp(prefix="ftlight-bench-logs-"))
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in opts.system_list}
    skipped: dict[str, dict[str, Any]] = {}
    if "trl" in runs and importlib.util.find_spec("trl") is None:
        skipped["trl"] = {"skipped": "trl is not installed (pip install trl)"}
        print("[trl] skipped: trl is not installed (pip install trl)", flush=True)
        del runs["trl"]
    # round robin (A B C, A B C, ...): a burst of load from other work hits one run of a
    # system, not all of them
    for repeat in range(opts.repeats):
        for system in runs:
            tag = f"[{system}]" if opts.repeats == 1 else f"[{system} #{repeat + 1}]"
            print(f"{tag} running ...", flush=True)
            load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            log = log_dir / f"{system}-{repeat + 1}.log"
            res = run_child(child_command(opts, system), opts.timeout, log)
            res["load_avg_1min"] = [load_before, os.getloadavg()[0] if load_before else None]
            runs[system].append(res)
            print_run(tag, res)
    results = {s: best_run(r) for s, r in runs.items()}
    results.update(skipped)
    # the matmul peak is measured in every process; on a shared machine the highest
    # measurement is the closest to the hardware's (a low one would inflate MFU)
    peaks = [peak] + [r["peak_flops"] for rs in runs.values() for r in rs if "peak_flops" in r]
    peak = max(peaks)
    print(f"\npeak for MFU: {peak / 1e9:.0f} GFLOP/s (highest of {len(peaks)} measurements)")
    shas = {r.get("config_sha") for r in results.values() if r.get("config_sha")}
    if len(shas) > 1:
        print(
            "WARNING: the systems composed different configs (conf/ changed during the run?): "
            + ", ".join(f"{s}={r.get('config_sha')}" for s, r in results.items())
        )
    add_derived(results, peak)
    machine["load_avg_end"] = machine_info()["load_avg"]
    print("\n" + markdown_table(results))
    print(f"\nload average at start {machine['load_avg']}, at end {machine['load_avg_end']}")
    if opts.json:
        payload = {
            "machine": machine,
            "settings": {k: v for k, v in vars(opts).items() if k not in ("json", "only")},
            "peak_flops": peak,
            "formulas": FORMULAS,
            "results": results,
            "runs": runs if opts.repeats > 1 else None,
        }
        opts.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {opts.json}")
    return 0 if all("error" not in r for r in results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """Parent (compare systems) or child (``--only``: train one)."""
    opts = parse_args(argv)
    if opts.only:
        child_main(opts)
        return 0
    return parent_main(opts)


if __name__ == "__main__":
    sys.exit(main())
