"""Callbacks: real-token throughput, MFU, peak memory and the loss history of a run."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from ftlight.data.encode import IGNORE_INDEX
from ftlight.measure.hardware import peak_flops
from ftlight.measure.mfu import flops_per_token

REMEASURE_AFTER_S = 30.0
"""Timed training at least this long measures the matmul peak again at its end."""


class ThroughputMonitor(L.Callback):
    """Counts real (non-padding) tokens without a host sync per step; logs tokens/s and MFU.

    The first ``warmup_steps`` optimizer steps of each attempt are left out of the run's
    figures. Checkpoints carry the loss history and what was measured so far
    (``state_dict``), so a run resumed from one reports the whole run: its ``summary`` and
    ``loss_history`` add this attempt to the attempts before, and its warm-up counts from the
    step it resumed at.
    """

    def __init__(self, log_every_n_steps: int = 5, warmup_steps: int = 2) -> None:
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.warmup_steps = warmup_steps
        self.losses: list[tuple[int, torch.Tensor]] = []
        self.val_losses: list[tuple[int, float]] = []
        self._tokens = torch.zeros((), dtype=torch.long)
        self._t0: float | None = None
        self._window_t0: float | None = None
        self._timed_start_tokens = 0
        self._window_tokens_start = 0
        self._timed: tuple[int, float] | None = None  # this attempt's, frozen at its end
        self._start_step = 0
        self._flops_per_token = 0.0
        self._device = torch.device("cpu")
        self._dtype = torch.float32  # the matmul precision of the run's steps (its MFU peak)
        #: what the attempts before this one measured (from the checkpoint resumed from)
        self.previous: dict[str, float] = dict(_NOTHING_MEASURED)
        self.summary: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        """The loss history and the figures of the run so far, this attempt's included."""
        tokens, seconds = self._timed_so_far()
        return {
            "losses": self.loss_history(),
            "val_losses": list(self.val_losses),
            "real_tokens": self.previous["real_tokens"] + int(self._tokens),
            "timed_tokens": self.previous["timed_tokens"] + tokens,
            "timed_seconds": self.previous["timed_seconds"] + seconds,
            "peak_memory_mb": max(self.previous["peak_memory_mb"], peak_memory_mb(self._device)),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the run a checkpoint holds: its loss history and figures so far."""
        self.losses = [(int(s), torch.tensor(float(v))) for s, v in state_dict.get("losses", [])]
        self.val_losses = [(int(s), float(v)) for s, v in state_dict.get("val_losses", [])]
        self.previous = {k: state_dict.get(k, v) for k, v in _NOTHING_MEASURED.items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Work out FLOPs per token for this model and strategy, and measure the device's
        matmul peak now, before the first step: later, compilation workers or data loading
        could share the device and lower it (raising MFU). The warm-up starts here."""
        info = pl_module.strategy.describe(pl_module.model)
        self._flops_per_token = flops_per_token(info["total"], info["trainable"])
        self._device = pl_module.device
        self._start_step = trainer.global_step
        self._dtype = compute_dtype(str(getattr(trainer, "precision", "32-true")))
        peak_flops(
            pl_module.device, self._dtype
        )  # measured once per process and device, then cached
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Accumulate tokens (a device tensor) and the loss; sync only every few steps."""
        ntok = real_tokens(batch)
        self._tokens = self._tokens.to(ntok.device) + ntok
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append((trainer.global_step, loss.detach()))
        step = trainer.global_step
        timed_from = self._start_step + self.warmup_steps
        if self._t0 is None:
            if step >= timed_from:
                self._sync(pl_module)
                self._t0 = self._window_t0 = time.perf_counter()
                self._timed_start_tokens = int(self._tokens)
                self._window_tokens_start = self._timed_start_tokens
            return
        if step % self.log_every_n_steps == 0 and step > timed_from:
            self._sync(pl_module)
            now = time.perf_counter()
            total = int(self._tokens)
            rate = (total - self._window_tokens_start) / max(now - self._window_t0, 1e-9)
            self._window_t0, self._window_tokens_start = now, total
            pl_module.log("train/tokens_per_s", rate, prog_bar=True, on_step=True)
            if self._flops_per_token:
                pl_module.log(
                    "train/mfu",
                    rate * self._flops_per_token / peak_flops(pl_module.device, self._dtype),
                )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarise the timed part of training: the whole run's, attempts before included."""
        self._sync(pl_module)
        self._timed = self._timed_so_far()
        tokens = self._timed[0] + int(self.previous["timed_tokens"])
        seconds = self._timed[1] + float(self.previous["timed_seconds"])
        rate = tokens / seconds if seconds > 0 else 0.0
        # on a long run, a second measurement minutes after the first; the higher one counts
        # (it costs a fraction of a second: not worth it for short runs, whose MFU says little)
        peak = peak_flops(
            pl_module.device, self._dtype, remeasure=self._timed[1] >= REMEASURE_AFTER_S
        )
        self.summary = {
            "real_tokens": int(self.previous["real_tokens"]) + int(self._tokens),
            "real_tokens_per_s": rate,
            "mfu": rate * self._flops_per_token / peak if rate else 0.0,
            "peak_memory_mb": max(
                float(self.previous["peak_memory_mb"]), peak_memory_mb(pl_module.device)
            ),
            "timed_seconds": seconds,
        }

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the validation loss at this step."""
        value = trainer.callback_metrics.get("val/loss")
        if value is not None:
            self.val_losses.append((trainer.global_step, float(value)))

    def loss_history(self) -> list[tuple[int, float]]:
        """(optimizer step, micro-batch training loss), as plain floats."""
        return [(s, float(v)) for s, v in self.losses]

    def _timed_so_far(self) -> tuple[int, float]:
        """This attempt's real tokens and seconds after its warm-up, up to now (or its end)."""
        if self._timed is not None:
            return self._timed
        if self._t0 is None:
            return 0, 0.0
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return int(self._tokens) - self._timed_start_tokens, time.perf_counter() - self._t0

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)


_NOTHING_MEASURED: dict[str, float] = {
    "real_tokens": 0,
    "timed_tokens": 0,
    "timed_seconds": 0.0,
    "peak_memory_mb": 0.0,
}


def real_tokens(batch: Mapping[str, Any], pad_token_id: int | None = None) -> torch.Tensor:
    """Non-padding tokens of a training batch, as a device tensor (no host sync).

    ftlight's packed batches carry their count (``num_tokens``); padded ones an
    ``attention_mask``. Packed rows from elsewhere carry neither: there each row's last
    sequence (``position_ids`` restart at 0) is left out when it is all pad ids with ignored
    labels, the tail ``PackCollator`` adds. The pad id alone cannot tell: it is often the EOS
    id, which real rows contain.
    """
    if "num_tokens" in batch:
        return batch["num_tokens"]
    mask = batch.get("attention_mask")
    if mask is not None:
        return mask.sum()
    ids = batch["input_ids"]
    positions = batch.get("position_ids")
    if pad_token_id is None:
        return torch.tensor(ids.numel())
    if positions is None or ids.dim() != 2:
        return (ids != pad_token_id).sum()
    labels = batch.get("labels")
    total = 0
    for row in range(ids.shape[0]):
        starts = (positions[row] == 0).nonzero().flatten()
        last = int(starts[-1]) if starts.numel() else 0
        tail_is_pad = (
            last > 0
            and bool((ids[row, last:] == pad_token_id).all())
            and (labels is None or bool((labels[row, last:] == IGNORE_INDEX).all()))
        )
        total += last if tail_is_pad else ids.shape[1]
    return torch.tensor(total)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a run's matrix products take under Lightning's ``precision`` setting: MFU
    is measured against that dtype's peak (fp32's on a CPU that trains in fp32)."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32
