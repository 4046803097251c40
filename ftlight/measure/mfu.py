"""FLOP accounting for MFU: model FLOPs per token (the device's measured peak is
``ftlight.measure.hardware.peak_flops``)."""

from __future__ import annotations


def flops_per_token(total_params: int, trainable_params: int) -> float:
    """Training FLOPs per token: forward 2N, input gradients 2N, weight gradients 2N_trainable.

    Full fine-tuning gives the usual 6N; a frozen body with adapters about 4N. Attention's
    sequence-length term is left out (small at these lengths), so MFU is slightly understated.
    """
    return 4.0 * total_params + 2.0 * trainable_params
