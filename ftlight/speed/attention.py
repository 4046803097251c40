"""Which scaled-dot-product attention kernel a training step runs on.

PyTorch picks its fused "flash" kernel for ``scaled_dot_product_attention`` on CPUs. For
short bf16 rows its plain "math" kernel (two batched matrix products around a softmax) is
faster there, while flash wins on long rows and in fp32 (the measurements are in the README's
performance section). ``auto`` therefore takes the math kernel
for bf16 steps on a CPU whose padded length is at most ``MATH_MAX_LENGTH`` and whose
attention scores stay small (the math kernel keeps them for the backward pass), and leaves
every other step to PyTorch.

Models with fewer key/value heads than query heads (grouped-query attention: Llama 3,
SmolLM2, Qwen, Mistral) are handed to PyTorch with their grouped heads on a CPU
(``grouped_kv``). transformers otherwise copies each key/value head once per query head
(``repeat_kv``) whenever a step carries an attention mask, as every padded batch does: a
copy in forward, a sum in backward, and the copies kept for the backward pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.torch_version import TorchVersion

from ftlight.errors import ConfigError

KERNELS = ("auto", "torch", "math", "flash")
"""``attention_kernel`` settings: ``torch`` is PyTorch's own choice for every step."""

MATH_MAX_LENGTH = 256
"""Longest padded row (tokens) for which ``auto`` takes the math kernel."""

MATH_MAX_SCORES = 2**24
"""Most attention scores (batch x heads x length^2) per layer for which ``auto`` takes it."""

GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"
"""transformers' switch for passing grouped key/value heads to PyTorch's attention as they are."""

_OLD_TORCH = TorchVersion(torch.__version__) < (2, 5)  # no ``enable_gqa`` before 2.5


def check_kernel(setting: str) -> str:
    """``setting`` if it names a kernel choice, else a ``ConfigError`` listing them."""
    if setting not in KERNELS:
        raise ConfigError(
            f"speed.attention_kernel={setting!r} is not a choice; use one of {', '.join(KERNELS)} "
            "(auto: the faster kernel for each step on this device)"
        )
    return setting


def choose_kernel(
    setting: str,
    device_type: str,
    compute_dtype: torch.dtype,
    batch: int,
    length: int,
    heads: int | None,
) -> str | None:
    """``"math"``, ``"flash"`` or ``None`` (PyTorch chooses) for one training step."""
    check_kernel(setting)
    if setting in ("math", "flash"):
        return setting
    if setting == "torch" or device_type != "cpu" or compute_dtype != torch.bfloat16:
        return None
    if length > MATH_MAX_LENGTH or batch * (heads or 1) * length * length > MATH_MAX_SCORES:
        return None
    return "math"


def step_kernel(setting: str, model: Any, input_ids: Any) -> str | None:
    """``choose_kernel`` for a training step of ``model`` on ``input_ids`` (a ``(rows,
    length)`` tensor; anything else: PyTorch chooses), in the step's compute dtype."""
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2:
        return None
    device = input_ids.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = getattr(model, "dtype", torch.float32)
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None) or 1
    rows, length = input_ids.shape
    return choose_kernel(setting, device, dtype, rows, length, heads)


@contextlib.contextmanager
def attention_kernel(kernel: str | None) -> Iterator[None]:
    """Run the block with only ``kernel`` enabled for ``scaled_dot_product_attention``."""
    if kernel is None:
        yield
        return
    backend = SDPBackend.MATH if kernel == "math" else SDPBackend.FLASH_ATTENTION
    with sdpa_kernel([backend]):
        yield


@contextlib.contextmanager
def grouped_kv(device_type: str, enabled: bool = True) -> Iterator[None]:
    """On a CPU, run the block with transformers' SDPA attention passing grouped key/value
    heads to ``scaled_dot_product_attention`` (``enable_gqa``) even under an attention mask.

    Elsewhere the block runs as it is: on CUDA a mask with ``enable_gqa`` falls back to the
    math kernel, which is why transformers expands the heads there. A value the user set for
    ``TRANSFORMERS_SDPA_FORCE_GQA`` is left alone; ``enabled=False`` (``speed.grouped_kv``) leaves
    every block as it is.
    """
    if not enabled or device_type != "cpu" or GQA_SWITCH in os.environ or _OLD_TORCH:
        yield
        return
    os.environ[GQA_SWITCH] = "1"
    try:
        yield
    finally:
        os.environ.pop(GQA_SWITCH, None)
