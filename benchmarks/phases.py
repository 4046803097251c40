r"""Seconds and peak resident memory of each phase of a run, for each strategy.

    python benchmarks/phases.py                          # full, head, lora, qlora; 30 steps each
    python benchmarks/phases.py --strategies lora --steps 175 --override eval.few_shot=0

Each strategy runs ``ftlight-train`` (the default job: SmolLM2-135M on the demo tickets) in its
own process with ``trainer.max_steps=--steps`` and any ``--override``; the run logs every phase
(model fetch, evaluations, training, export) with its duration and peak resident memory and
keeps them in ``metrics.json`` under ``phases``. This script prints them side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import machine_info

STRATEGIES = ("full", "head", "lora", "qlora")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--steps", type=int, default=30, help="trainer.max_steps of each run")
    p.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    return p.parse_args(argv)


def run_strategy(strategy: str, opts: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One ``ftlight-train`` run; its ``phases`` (or the error) and wall time."""
    run_dir = root / strategy
    script = Path(sys.executable).with_name("ftlight-train")
    cmd = [
        str(script) if script.is_file() else "ftlight-train",
        f"strategy={strategy}",
        f"trainer.max_steps={opts.steps}",
        f"run_dir={run_dir}",
        *opts.override,
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=opts.timeout)
    wall = time.perf_counter() - start
    metrics = run_dir / "metrics.json"
    if done.returncode != 0 or not metrics.is_file():
        tail = (done.stderr or done.stdout)[-2000:]
        return {"strategy": strategy, "error": f"exit {done.returncode}: {tail}", "wall_s": wall}
    phases = json.loads(metrics.read_text()).get("phases", {})
    return {"strategy": strategy, "phases": phases, "wall_s": wall}


def table(results: list[dict[str, Any]]) -> str:
    """Phases as rows, strategies as columns: ``seconds / peak GB``."""
    names: list[str] = []
    for r in results:
        names += [n for n in r.get("phases", {}) if n not in names]
    head = "| phase | " + " | ".join(r["strategy"] for r in results) + " |"
    lines = [head, "|" + " --- |" * (len(results) + 1)]
    for name in names:
        cells = []
        for r in results:
            phase = r.get("phases", {}).get(name)
            cells.append(
                f"{phase['seconds']:.1f} s / {phase['peak_rss_mb'] / 1024:.2f} GB"
                if phase and phase.get("peak_rss_mb") is not None
                else (f"{phase['seconds']:.1f} s" if phase else "-")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    peaks = [
        max((p.get("peak_rss_mb") or 0 for p in r.get("phases", {}).values()), default=0)
        for r in results
    ]
    lines.append("| **run peak** | " + " | ".join(f"{p / 1024:.2f} GB" for p in peaks) + " |")
    lines.append("| wall | " + " | ".join(f"{r['wall_s']:.0f} s" for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    info = machine_info()
    print(f"# ftlight phases benchmark: {opts.steps} steps, overrides {opts.override}")
    print(f"machine: {info}")
    results = []
    with tempfile.TemporaryDirectory(prefix="ftlight-phases-") as tmp:
        for strategy in opts.strategies.split(","):
            print(f"[{strategy}] running ...", flush=True)
            result = run_strategy(strategy.strip(), opts, Path(tmp))
            if "error" in result:
                print(f"[{strategy}] failed: {result['error']}", flush=True)
            results.append(result)
    print()
    print(table([r for r in results if "phases" in r]))
    if opts.json:
        opts.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
