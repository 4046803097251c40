"""What the hardware can do fast."""

from __future__ import annotations

import functools
import os
from pathlib import Path

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
