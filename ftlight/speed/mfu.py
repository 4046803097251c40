"""FLOP accounting for MFU: model FLOPs per token and the device's measured matmul peak."""

from __future__ import annotations

import time

import torch

from ftlight.speed.hardware import cpu_has_fast_bf16


def flops_per_token(total_params: int, trainable_params: int) -> float:
    """Training FLOPs per token: forward 2N, input gradients 2N, weight gradients 2N_trainable.

    Full fine-tuning gives the usual 6N; a frozen body with adapters about 4N. Attention's
    sequence-length term is left out (small at these lengths), so MFU is slightly understated.
    """
    return 4.0 * total_params + 2.0 * trainable_params


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
