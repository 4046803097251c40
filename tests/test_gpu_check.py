"""The GPU check (``benchmarks/gpu_check.py``) runs end to end in its dry run on the CPU, so
that the one call a GPU machine gets does not fail on a script that rotted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_passes_its_dry_run(tmp_path: Path, ftlight_cache: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert set(steps) == {"tests", "job", "qlora", "plain", "throughput"}
    assert all(step["status"] == "ok" for step in steps.values())
    for job in ("job", "qlora", "plain"):
        assert steps[job]["metrics"]["after"], job  # each job scored its model after training
    # the same batches with every speed switch off: the same losses (fp32 on CPU)
    assert steps["plain"]["loss_max_abs_difference"] < 1e-3
    assert {"ftlight", "hf_trainer"} <= set(json.dumps(steps["throughput"]["figures"]).split('"'))
