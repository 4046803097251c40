"""Shared pieces of the benchmarks: step timing, real-token counts, memory, machine facts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ftlight.measure.throughput import real_tokens as count_real_tokens
from ftlight.speed.allocator import preload_command

IGNORE_INDEX = -100
RESULT_PREFIX = "BENCH_JSON: "
"""A child process prints its result as one line starting with this prefix."""


def add_run_options(
    p: argparse.ArgumentParser, steps: int, steps_help: str, warmup_help: str
) -> None:
    """The options every benchmark of a training run shares (model, batches, precision)."""
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m | tiny-llama | any model=")
    p.add_argument("--steps", type=int, default=steps, help=steps_help)
    p.add_argument("--warmup", type=int, default=5, help=warmup_help)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--packing", action="store_true", help="pack rows to data.max_length")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="data.max_length (default: the config's 256; 1024 for tiny-llama, whose "
        "byte-level tokenizer makes demo rows of 430-540 tokens)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--override", action="append", metavar="KEY=VALUE", help="extra Hydra override, repeatable"
    )


def settle_run_options(p: argparse.ArgumentParser, opts: argparse.Namespace, min_rows: int) -> None:
    """Check the shared options and fill in what depends on others (rows, max_length)."""
    if opts.steps < 1 or opts.warmup < 0 or opts.batch_size < 1:
        p.error("--steps must be >= 1, --warmup >= 0, --batch-size >= 1")
    if getattr(opts, "rows", None) is None:
        # one epoch must cover every step (packing needs more rows per batch)
        need = (opts.warmup + opts.steps) * opts.batch_size * (4 if opts.packing else 1)
        opts.rows = max(min_rows, need + 8 * opts.batch_size)
    if opts.max_length is None and opts.model == "tiny-llama":
        opts.max_length = 1024


def real_tokens(batch: Mapping[str, Any], pad_token_id: int | None) -> int:
    """Non-padding tokens of a training batch, counted as ftlight counts them."""
    return int(count_real_tokens(batch, pad_token_id))


class StepTimer:
    """Per-step wall time and real tokens; every system calls ``begin`` / ``end`` once a step.

    ``step_s`` runs from the end of the previous step to the end of this one, so it holds
    everything a training run spends per step (data loading, hooks, logging, optimizer).
    ``inner_s`` runs from ``begin`` to ``end`` only (the framework's own step hooks).
    """

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.steps: list[dict[str, float]] = []
        self.losses: dict[int, float] = {}
        self.t_first_step: float | None = None
        self._begin: float | None = None
        self._prev_end: float | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def begin(self) -> None:
        """The step starts (the batch is already in hand)."""
        now = self._now()
        self._begin = now
        if self.t_first_step is None:
            self.t_first_step = now
        if self._prev_end is None:
            self._prev_end = now

    def end(self, tokens: int, loss: float | None = None) -> None:
        """The optimizer step of this step is done."""
        now = self._now()
        begin = self._begin if self._begin is not None else now
        prev = self._prev_end if self._prev_end is not None else begin
        self.steps.append({"tokens": int(tokens), "step_s": now - prev, "inner_s": now - begin})
        if loss is not None:
            self.losses[len(self.steps) - 1] = float(loss)
        self._prev_end = now
        self._begin = None

    def summary(self) -> dict[str, Any]:
        """Figures over the timed steps (those after the warmup)."""
        timed = self.steps[self.warmup :]
        if not timed:
            return {"timed_steps": 0}
        rates = [s["tokens"] / s["step_s"] for s in timed if s["step_s"] > 0]
        seconds = sum(s["step_s"] for s in timed)
        tokens = sum(s["tokens"] for s in timed)
        losses = [self.losses[i] for i in sorted(self.losses) if i >= self.warmup]
        return {
            "timed_steps": len(timed),
            "timed_tokens": tokens,
            "timed_seconds": seconds,
            "tokens_per_s_median": statistics.median(rates),
            "tokens_per_s_min": min(rates),
            "tokens_per_s_max": max(rates),
            "tokens_per_s_aggregate": tokens / seconds if seconds > 0 else 0.0,
            "step_s_median": statistics.median(s["step_s"] for s in timed),
            "inner_s_median": statistics.median(s["inner_s"] for s in timed),
            "tokens_per_step_median": statistics.median(s["tokens"] for s in timed),
            "loss_first_timed": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
        }


def pick_device(name: str) -> torch.device:
    """``auto``: the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def rss_mb() -> dict[str, float]:
    """Current and peak resident memory of this process (MB); peak from getrusage."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    current = 0.0
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 2**10
    return {"rss_mb": current, "peak_rss_mb": peak_mb}


def hwm_mb() -> float | None:
    """Peak RSS since the last ``reset_hwm`` (Linux ``VmHWM``), or None off Linux."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**10
    return None


def reset_hwm() -> bool:
    """Reset the peak-RSS mark (``echo 5 > /proc/self/clear_refs``); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_figures(device: torch.device) -> dict[str, float]:
    """Peak RSS always; CUDA's allocator peak as well on a GPU."""
    out = rss_mb()
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load, GPU and library versions: what a reader needs to compare runs."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "allocator": _allocator(),
    }
    for name in ("transformers", "peft", "lightning", "accelerate", "bitsandbytes", "trl"):
        info[name] = _version(name)
    return info


def _allocator() -> str:
    """The malloc every system's process runs on: the library preloaded, or the C library's."""
    plan = preload_command()
    env = plan[1] if plan is not None else os.environ
    return env.get("FTLIGHT_ALLOCATOR_ACTIVE") or env.get("LD_PRELOAD") or "system malloc"


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def run_child(cmd: Sequence[str], timeout: float, log_path: Path) -> dict[str, Any]:
    """Run one benchmark child; return its JSON result, or an ``error`` naming the failure.

    The child's stderr (progress bars, warnings) goes to ``log_path``.
    """
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    plan = preload_command(env)  # the malloc ftlight-train would run on (FTLIGHT_ALLOCATOR)
    if plan is not None:
        env = plan[1]
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout, env=env
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s (log: {log_path})"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
    return {
        "error": f"exit code {proc.returncode}, no result (log: {log_path})",
        "log_tail": "\n".join(tail),
    }


def emit(result: Mapping[str, Any]) -> None:
    """Print a child's result as the one line the parent reads."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)
