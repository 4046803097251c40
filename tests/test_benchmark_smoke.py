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


PROFILE_SCRIPT = SCRIPT.with_name("profile_step.py")


def _profile_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import profile_step
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return profile_step


def test_profile_summary_charges_self_time_to_categories() -> None:
    profile_step = _profile_module()

    class Event:
        def __init__(self, key: str, self_us: float, count: int, flops: float = 0.0) -> None:
            self.key, self.self_cpu_time_total, self.count, self.flops = key, self_us, count, flops

    events = [
        Event("aten::mm", 600_000, 40, flops=120e9),  # 0.6 s for 120 GFLOP: 200 GFLOP/s
        Event("aten::addmm", 200_000, 10, flops=40e9),
        Event("aten::_scaled_dot_product_flash_attention_for_cpu", 100_000, 4),
        Event("aten::_foreach_mul_", 50_000, 2),
        Event("aten::copy_", 150_000, 100),
        Event("aten::silu", 100_000, 8),
        Event("ProfilerStep#1", 9_000_000, 1),  # not an operator: ignored
    ]
    summary = profile_step.summarize(events, wall_s=1.5, steps=2, peak_flops=400e9)
    cats = summary["categories"]
    assert cats["matmul"]["ms_per_step"] == pytest.approx(400.0)
    assert cats["matmul"]["gflop_per_step"] == pytest.approx(80.0)
    assert cats["matmul"]["gflop_per_s"] == pytest.approx(200.0)
    assert cats["matmul"]["of_peak"] == pytest.approx(0.5)
    assert cats["attention"]["ms_per_step"] == pytest.approx(50.0)
    assert cats["optimizer"]["calls_per_step"] == pytest.approx(1.0)
    assert cats["copies and casts"]["ms_per_step"] == pytest.approx(75.0)
    assert cats["other operators"]["ms_per_step"] == pytest.approx(50.0)
    # 1.2 s of the 1.5 s are operators; the rest is Python, hooks and data loading
    assert cats["outside operators"]["ms_per_step"] == pytest.approx(150.0)
    assert sum(c["share"] for c in cats.values()) == pytest.approx(1.0)
    assert list(cats)[0] == "matmul"  # sorted by time
    assert summary["top_operators"][0]["name"] == "aten::mm"
    assert "| matmul | 400.0 | 53.3% | 25 | 80.0 | 200 | 50% |" in profile_step.format_summary(
        summary, 400e9
    )


def test_profile_step_runs_on_the_tiny_llama(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    cmd = [sys.executable, str(PROFILE_SCRIPT), "--model", "tiny-llama", "--warmup", "1"]
    cmd += ["--steps", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    cats = report["categories"]
    # the step is mostly matrix products, and the profiler counted their FLOPs
    assert cats["matmul"]["gflop_per_step"] > 0
    assert 0 < cats["matmul"]["of_peak"] < 1.5
    assert {"attention", "optimizer", "outside operators"} <= set(cats)
    assert sum(c["share"] for c in cats.values()) == pytest.approx(1.0, abs=0.01)
    assert "| matmul |" in proc.stdout


def test_profile_summary_reads_device_time_on_a_gpu() -> None:
    profile_step = _profile_module()

    class Event:
        key, count, flops = "aten::mm", 4, 8e12
        self_cpu_time_total = 1_000  # launching the kernels: 1 ms
        self_device_time_total = 20_000  # running them: 20 ms

    summary = profile_step.summarize(
        [Event()], wall_s=0.05, steps=1, peak_flops=1e15, time_attr="self_device_time_total"
    )
    cats = summary["categories"]
    assert cats["matmul"]["ms_per_step"] == pytest.approx(20.0)
    assert cats["matmul"]["gflop_per_s"] == pytest.approx(400_000.0)
    assert cats["outside operators"]["ms_per_step"] == pytest.approx(30.0)  # device idle


def test_paired_accuracy_trains_both_systems_on_the_same_rows(tmp_path: Path) -> None:
    """ftlight and the Trainer, one seed on the tiny BERT: the same start (the same eval loss
    after two steps within float noise), each score and the difference in the JSON."""
    out = tmp_path / "paired.json"
    script = SCRIPT.with_name("paired_accuracy.py")
    cmd = [sys.executable, str(script), "--model", "tiny-bert", "--rows", "32", "--steps", "2"]
    cmd += ["--seeds", "0", "--val-rows", "16", "--precision", "fp32", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    ours, theirs = report["runs"]["ftlight"]["0"], report["runs"]["hf_trainer"]["0"]
    assert ours["steps"] == theirs["steps"] == 2
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], abs=1e-3)
    figures = report["figures"]
    gap = figures["ftlight"]["mean"] - figures["hf_trainer"]["mean"]
    assert figures["difference"]["mean"] == pytest.approx(gap)
