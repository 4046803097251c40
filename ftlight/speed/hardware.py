"""What the hardware can do fast."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

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
    import torch

    from ftlight.speed.mfu import peak_flops

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
