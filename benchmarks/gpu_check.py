r"""ftlight on one NVIDIA GPU, in one call of at most about 8 minutes, with no network.

    bash benchmarks/gpu_wheels.sh                                  # here: the wheels it needs
    python benchmarks/gpu_check.py --wheels benchmarks/gpu_wheels --out OUT   # on the GPU
    python benchmarks/gpu_check.py --dry-run --out OUT             # anywhere: CPU, tiny sizes

A GPU machine of the kind this is written for has torch, lightning, transformers, peft,
accelerate, safetensors and tokenizers installed and nothing else; ``--wheels`` installs the
rest (hydra-core, omegaconf, antlr4, bitsandbytes) and ftlight with its four built-in
strategies, without an index. Then, each step in its own process with its own time limit:

1. ``pytest -m gpu``: training in bf16 on CUDA, QLoRA's CUDA kernels, a resume on the GPU;
2. a job shaped like the default run (SmolLM2-135M's shape with random weights, the demo
   tickets, LoRA, bf16) through ``python -m ftlight``: its time, memory and scores;
3. the same job with ``strategy=qlora``;
4. the same job with every speed switch off, against the job of step 2: the training losses;
5. ``benchmarks/throughput.py``: ftlight against the HF Trainer on Llama-3.2-1B's shape with
   random weights (tokens/s, peak CUDA memory, MFU).

``--dry-run`` runs every step on the CPU with tiny sizes and two steps, so that the script keeps
working where no GPU is (the test suite runs it). Every figure goes to ``OUT/gpu_check.json``
and the console; each step's output to ``OUT/<step>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "bitsandbytes")
STRATEGIES = ("full", "head", "lora", "qlora")

#: SmolLM2-135M's shape (the default run's model), random weights
SMOLLM2_SHAPE = [
    "model=tiny-llama",
    "model.hidden_size=576",
    "model.num_layers=30",
    "model.num_heads=9",
    "model.num_kv_heads=3",
    "model.intermediate_size=1536",
    "model.max_positions=2048",
]
#: Llama-3.2-1B's shape, random weights (ftlight's tiny tokenizer: a small vocabulary)
LLAMA_1B_SHAPE = [
    "model.hidden_size=2048",
    "model.num_layers=16",
    "model.num_heads=32",
    "model.num_kv_heads=8",
    "model.intermediate_size=8192",
    "model.max_positions=2048",
]
#: every speed part ftlight has, off (the reference path)
PLAIN = ["speed=plain"]


def _job(gpu: bool, steps: int, run_dir: Path, *extra: str) -> list[str]:
    """A ``python -m ftlight`` command shaped like the default run."""
    device = ["trainer=gpu", "trainer.precision=bf16-mixed"] if gpu else ["trainer=cpu"]
    shape = SMOLLM2_SHAPE if gpu else ["model=tiny-llama"]
    return [
        sys.executable,
        "-m",
        "ftlight",
        *shape,
        *device,
        "data=demo",
        "data.max_length=640",  # the tiny byte-level tokenizer makes demo rows of ~500 tokens
        f"data.train_size={max(64, steps * 4)}",
        "data.val_size=16",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "task.max_new_tokens=32",
        "eval.few_shot=0",
        "eval.plots=false",
        "logger=csv",
        "trainer.log_every_n_steps=1",  # every step's loss, for the plain path's comparison
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _run(name: str, cmd: list[str], out: Path, timeout: float, env: dict[str, str]) -> dict:
    """Run one step; its log goes to ``out/<name>.log``."""
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = round(time.perf_counter() - started, 1)
    status = "ok" if code == 0 else f"failed ({code})"
    print(f"[gpu_check] {name}: {status} in {seconds} s", flush=True)
    return {"status": status, "seconds": seconds}


def _metrics(run_dir: Path) -> dict[str, Any]:
    """What a job's ``metrics.json`` says about speed, memory and scores."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return {}
    m = json.loads(path.read_text())
    keep = ("loss", "exact_match", "json/valid_json")
    return {
        "before": {k: v for k, v in m.get("before", {}).items() if k in keep},
        "after": {k: v for k, v in m.get("after", {}).items() if k in keep},
        "throughput": m.get("throughput"),
        "train_seconds": m.get("train", {}).get("seconds"),
        "precision": m.get("train", {}).get("precision"),
    }


def _losses(run_dir: Path) -> list[float]:
    """The training losses a job logged (``logs/metrics.csv``), in step order."""
    import csv

    path = run_dir / "logs" / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def install(wheels: Path, out: Path, env: dict[str, str]) -> dict:
    """The missing packages from ``wheels`` (no index), then ftlight and its strategies."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels)]
    first = _run("install_wheels", [*pip, *WHEELS], out, 300, env)
    editable = ["-e", "."] + [x for s in STRATEGIES for x in ("-e", f"plugins/{s}")]
    second = _run(
        "install_ftlight", [*pip, "--no-deps", "--no-build-isolation", *editable], out, 300, env
    )
    return {"wheels": first, "ftlight": second}


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit status 1 if any step failed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the logs and the figures")
    p.add_argument("--wheels", type=Path, default=None, help="install these wheels first")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, two steps")
    p.add_argument("--steps", type=int, default=60, help="training steps of each job")
    opts = p.parse_args(argv)
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gpu = not opts.dry_run
    steps = 2 if opts.dry_run else opts.steps
    env = {**os.environ, "FTLIGHT_ALLOCATOR": "system", "TOKENIZERS_PARALLELISM": "false"}
    if opts.dry_run:
        env["FTLIGHT_GPU_TESTS_ON_CPU"] = "1"
    report: dict[str, Any] = {"dry_run": opts.dry_run, "steps": {}}
    if opts.wheels is not None:
        report["install"] = install(opts.wheels.resolve(), out, env)
    budget = {"tests": 150, "job": 120, "qlora": 90, "plain": 90, "throughput": 150}
    done = report["steps"]

    done["tests"] = _run(
        "tests",
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            "tests/test_gpu.py",
        ],
        out,
        budget["tests"],
        env,
    )
    jobs = {"job": [], "qlora": ["strategy=qlora"], "plain": PLAIN}
    for name, extra in jobs.items():
        run_dir = out / "runs" / name
        done[name] = _run(name, _job(gpu, steps, run_dir, *extra), out, budget[name], env)
        done[name]["metrics"] = _metrics(run_dir)
    auto, plain = _losses(out / "runs" / "job"), _losses(out / "runs" / "plain")
    if auto and plain:
        n = min(len(auto), len(plain))
        diffs = [abs(a - b) for a, b in zip(auto[:n], plain[:n], strict=True)]
        done["plain"]["loss_max_abs_difference"] = max(diffs)
        done["plain"]["losses"] = {"fast": auto[:n], "plain": plain[:n]}

    bench = [
        sys.executable,
        "benchmarks/throughput.py",
        "--systems",
        "ftlight,hf_trainer",
        "--json",
        str(out / "throughput.json"),
    ]
    if gpu:
        bench += ["--device", "cuda", "--model", "tiny-llama", "--steps", "10", "--warmup", "3"]
        bench += [x for o in LLAMA_1B_SHAPE for x in ("--override", o)]
    else:
        bench += ["--device", "cpu", "--model", "tiny-llama", "--steps", "1", "--warmup", "1"]
        bench += ["--precision", "fp32"]
    done["throughput"] = _run("throughput", bench, out, budget["throughput"], env)
    if (out / "throughput.json").exists():
        done["throughput"]["figures"] = json.loads((out / "throughput.json").read_text())

    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    failed = [k for k, v in done.items() if v["status"] != "ok"]
    print(f"[gpu_check] {'all steps passed' if not failed else 'failed: ' + ', '.join(failed)}")
    print(f"[gpu_check] figures: {out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
