"""The throughput benchmark runs end to end on the tiny Llama and compares like with like."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def test_throughput_benchmark_ftlight_and_loop(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--model",
        "tiny-llama",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--systems",
        "ftlight,loop",
        "--rows",
        "64",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    for system in ("ftlight", "loop"):
        summary = results[system]["summary"]
        assert summary["timed_steps"] == 3
        assert summary["tokens_per_s_aggregate"] > 0
        assert summary["tokens_per_s_median"] > 0
        assert results[system]["params"]["trainable"] > 0
    # both trained on the same batches from the same start: same tokens, same losses
    ftlight, loop = results["ftlight"], results["loop"]
    assert ftlight["config_sha"] == loop["config_sha"], "conf/ changed between the two runs"
    assert [s["tokens"] for s in ftlight["steps"]] == [s["tokens"] for s in loop["steps"]]
    assert ftlight["params"] == loop["params"]
    for step, loss in ftlight["losses"].items():
        assert loop["losses"][step] == pytest.approx(loss, rel=1e-4)
    assert "| ftlight |" in proc.stdout and "| loop |" in proc.stdout
