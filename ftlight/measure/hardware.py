"""What the hardware can do fast: native bf16, and its measured dense matmul peak."""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger("ftlight")

#: bf16 autocast is chosen on a CPU only when its bf16 matmuls measure this much faster than fp32
BF16_MIN_SPEEDUP = 1.2

#: oneDNN's instruction-set ceiling (``ONEDNN_MAX_CPU_ISA``) below which bf16 has no native path
_NO_BF16_ISA = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX) and oneDNN may use
    them (``ONEDNN_MAX_CPU_ISA`` set to ``AVX2``, for example, runs the CPU as one without)."""
    ceiling = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))
    if ceiling.strip().upper() in _NO_BF16_ISA:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


@functools.cache
def cpu_bf16_pays() -> bool:
    """Whether bf16 autocast is the faster precision on this CPU: it has native bf16
    instructions and its measured bf16 matmul peak is at least ``BF16_MIN_SPEEDUP`` times its
    fp32 peak. A CPU can have the instructions and still multiply bf16 slower than fp32 (a
    Xeon with avx512_bf16 and no AMX did, and trained slower in bf16 too: benchmarks/README.md).
    Measured once per process (about a second) and logged."""
    if not cpu_has_fast_bf16():
        return False
    cpu = torch.device("cpu")
    bf16, fp32 = peak_flops(cpu, torch.bfloat16), peak_flops(cpu, torch.float32)
    pays = bf16 >= BF16_MIN_SPEEDUP * fp32
    log.info(
        "precision: %s (this CPU's matmul peak measured at %.0f GFLOP/s in bf16, %.0f in fp32; "
        "trainer.precision=... to choose)",
        "bf16-mixed" if pays else "32-true, bf16 is not faster here",
        bf16 / 1e9,
        fp32 / 1e9,
    )
    return pays


_BEST: dict[tuple[str, int | None, torch.dtype], float] = {}
"""The highest peak measured so far in this process, per device and dtype."""


def _measured_peak(device_type: str, index: int | None, dtype: torch.dtype) -> float:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    n = 2048 if device_type == "cpu" else 8192
    # a generator of its own: measuring must not move the run's random stream (dropout masks,
    # shuffling), or a run would differ with the moment its peak was first measured
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    reps = 6 if device_type == "cpu" else 20
    (a @ b).sum().item()
    if device_type == "cpu":
        # the fastest of several single products: a busy machine slows some of them, and the
        # peak is what the hardware can do, so interference must not lower it (raising MFU)
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return 2.0 * n**3 / best
    start = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    c.sum().item()
    seconds = time.perf_counter() - start
    return 2.0 * n**3 * reps / seconds


def peak_flops(
    device: torch.device, dtype: torch.dtype | None = None, remeasure: bool = False
) -> float:
    """Dense matmul FLOP/s this device reaches (bf16 by default).

    Measured on the first call per process, device and dtype; ``remeasure=True`` measures
    again and keeps the higher figure, so one measurement taken while other work shared the
    device (which would lower the peak and raise MFU) does not stand alone.
    """
    if dtype is None:
        fast = device.type == "cuda" or cpu_has_fast_bf16()
        dtype = torch.bfloat16 if fast else torch.float32
    key = (device.type, device.index, dtype)
    if remeasure or key not in _BEST:
        _BEST[key] = max(_BEST.get(key, 0.0), _measured_peak(*key))
    return _BEST[key]
