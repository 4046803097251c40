"""FLOPs per token and the measured matmul peak that MFU divides by."""

from __future__ import annotations

import math
import time

import pytest
import torch

import ftlight.measure.hardware as perf
from ftlight.measure.mfu import flops_per_token


def test_flops_per_token_counts_weight_gradients_only_for_trainable_parameters() -> None:
    assert flops_per_token(100, 100) == 600  # full fine-tuning: 6N
    assert flops_per_token(100, 0) == 400  # frozen: forward and input gradients
    assert flops_per_token(136_957_248, 2_442_240) == 4 * 136_957_248 + 2 * 2_442_240


def test_peak_is_measured_once_and_a_remeasurement_keeps_the_higher(monkeypatch) -> None:
    readings = iter([300e9, 250e9, 350e9])
    calls = []

    def fake(device_type, index, dtype):
        calls.append((device_type, index, dtype))
        return next(readings)

    monkeypatch.setattr(perf, "_measured_peak", fake)
    monkeypatch.setattr(perf, "_BEST", {})
    cpu = torch.device("cpu")
    assert perf.peak_flops(cpu, torch.float32) == 300e9
    assert perf.peak_flops(cpu, torch.float32) == 300e9  # cached
    assert len(calls) == 1
    # a busy machine measures lower: the earlier, higher figure stands
    assert perf.peak_flops(cpu, torch.float32, remeasure=True) == 300e9
    assert perf.peak_flops(cpu, torch.float32, remeasure=True) == 350e9
    assert calls == [("cpu", None, torch.float32)] * 3


def test_measured_cpu_peak_is_a_plausible_matmul_rate() -> None:
    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    seconds = min(_timed(lambda: a @ b) for _ in range(5))
    direct = 2 * n**3 / seconds
    peak = perf._measured_peak("cpu", None, torch.float32)
    assert math.isfinite(peak) and peak > 1e9
    # the 2048-square product is about as efficient as a 512-square one: the wide margin is for
    # other processes sharing the cores (a busy machine), not for the hardware
    assert peak > 0.25 * direct


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_peak_flops_picks_a_dtype_and_caches_per_dtype(monkeypatch, dtype) -> None:
    seen = []
    monkeypatch.setattr(perf, "_measured_peak", lambda t, i, d: seen.append(d) or 1e12)
    monkeypatch.setattr(perf, "_BEST", {})
    perf.peak_flops(torch.device("cpu"), dtype)
    from ftlight.measure.hardware import cpu_has_fast_bf16

    expected = dtype or (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    assert seen == [expected]


def test_measuring_the_peak_leaves_the_runs_random_stream_alone() -> None:
    """The peak is measured on random matrices at the first training step: drawn from the
    global generator, they would shift every dropout mask after it."""
    torch.manual_seed(0)
    state = torch.get_rng_state()
    perf._measured_peak("cpu", None, torch.float32)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_cpu_capped_below_bf16_counts_as_one_without(monkeypatch) -> None:
    from ftlight.measure.hardware import cpu_has_fast_bf16

    cpu_has_fast_bf16.cache_clear()
    try:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        assert cpu_has_fast_bf16() is False  # the default precision is then fp32
    finally:
        cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("bf16-mixed", torch.bfloat16),
        ("bf16-true", torch.bfloat16),
        ("16-mixed", torch.float16),
        ("32-true", torch.float32),
        ("64-true", torch.float32),
    ],
)
def test_mfu_is_measured_against_the_runs_own_precision(precision: str, dtype) -> None:
    from ftlight.measure.throughput import compute_dtype

    assert compute_dtype(precision) == dtype


@pytest.mark.parametrize(
    ("flags", "bf16", "fp32", "chosen"),
    [
        (True, 400e9, 200e9, "bf16-mixed"),  # bf16 twice as fast: autocast pays
        (True, 160e9, 300e9, "32-true"),  # instructions present, multiplies slower
        (True, 220e9, 200e9, "32-true"),  # within the margin: not worth the casts
        (False, 400e9, 200e9, "32-true"),  # no native bf16: not even measured
    ],
)
def test_cpu_precision_follows_the_measured_matmul_peaks(
    monkeypatch, flags: bool, bf16: float, fp32: float, chosen: str
) -> None:
    from ftlight.config import best_precision
    from ftlight.measure import hardware

    measured = []

    def peak(device, dtype=None, remeasure=False):
        measured.append(dtype)
        return bf16 if dtype == torch.bfloat16 else fp32

    monkeypatch.setattr(perf, "peak_flops", peak)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: flags)
    hardware.cpu_bf16_pays.cache_clear()
    try:
        assert best_precision("cpu") == chosen
        assert bool(measured) == flags
    finally:
        hardware.cpu_bf16_pays.cache_clear()
