"""``FineTuneModule``: the LightningModule that trains any HF model under a strategy plugin."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from ftlight.errors import ConfigError
from ftlight.resume import rank_rng_states, restore_rng_state, rng_state_of_rank
from ftlight.speed.attention import attention_kernel, check_kernel, grouped_kv, step_kernel
from ftlight.speed.calls import model_calls
from ftlight.speed.install import Installed, install_model_parts
from ftlight.speed.kernel_cache import bound_kernel_caches
from ftlight.speed.plan import SpeedPlan
from ftlight.speed.report import speed_line
from ftlight.strategies.base import Strategy
from ftlight.tasks.base import Task
from ftlight.validate.sanity import parameter_sums, stop_if_not_finite

log = logging.getLogger("ftlight")

#: the batch keys the model takes (the rest is for metrics and generation)
MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "token_type_ids", "position_ids")


class FineTuneModule(L.LightningModule):
    """Forward, steps, metrics and checkpoint contents; the strategy decides what trains.

    ``optimizer`` is a partial taking the parameters; ``scheduler`` a partial taking the
    optimizer and the total number of optimizer steps. ``speed`` says which speed parts run
    (``ftlight.speed.plan``; default: all of them): the model-changing ones are installed once
    the strategy has applied (``ftlight.speed.install``), ``attention_kernel`` and
    ``grouped_kv`` wrap each step, the strategy gets the plan for its own parts and the task
    the calls it makes (``ftlight.speed.calls.model_calls``).
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        task: Task,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        frozen_dtype: torch.dtype | None = None,
        speed: SpeedPlan | None = None,
        fingerprint: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        #: the run's model and data (``ftlight.validate.check_run``), stored in checkpoints
        self.fingerprint = dict(fingerprint or {})
        self.speed = speed = speed or SpeedPlan()
        self.kernel_setting = check_kernel(speed.attention_kernel)
        bound_kernel_caches(speed.kernel_cache)  # train() set it first; a module built alone
        if self.kernel_setting == "auto" and speed.compile:
            self.kernel_setting = "torch"  # compiled blocks are traced under PyTorch's choice
        self._step_kernel: str | None = None  # this step's choice, kept for its backward
        #: the autocast dtype (None: no autocast), frozen linears' dtype under speed.frozen_bf16
        self.frozen_dtype = frozen_dtype
        #: what the model-changing speed parts took (linears cast, gated MLPs recomputing)
        self.installed = Installed()
        self.model = model
        self.strategy = strategy
        self.task = task
        strategy.speed = speed  # its own parts (LoRA's forward and fold)
        task.calls = model_calls(speed)  # how its passes call the model (losses, decoding)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.generate_in_eval = False
        self._merged = contextlib.ExitStack()
        self.strict_loading = False  # checkpoints hold only the strategy's trainable state
        self._applied = False
        self.sharded = False
        self.val_metrics = nn.ModuleDict()
        self.last_eval: dict[str, float] = {}
        #: each trainable parameter's sums right after the strategy applied (before a resume
        #: loads trained weights): the run checks at the end that training moved them
        self.start_sums: dict[str, torch.Tensor] = {}
        self._resume_rng: dict[str, Any] | None = None  # this rank's, set by on_load_checkpoint

    # -- model set-up ---------------------------------------------------------------------
    def configure_model(self) -> None:
        """Apply the strategy once, before any sharding; then shard if FSDP2 is in use."""
        if not self._applied:
            self.model = self.strategy.apply(self.model, self.task)
            self._applied = True
            self.start_sums = parameter_sums(self.model)
            mesh = getattr(self, "device_mesh", None) if self._trainer is not None else None
            self.installed = install_model_parts(
                self.speed,
                self.model,
                self.strategy.shard_units(self.model),
                self.frozen_dtype,
                sharded=mesh is not None,
            )
            info = self.strategy.describe(self.model)
            log.info(
                "strategy=%s: %s trainable of %s parameters (%.2f%%)",
                self.strategy.name,
                f"{info['trainable']:,}",
                f"{info['total']:,}",
                100.0 * info["trainable"] / max(info["total"], 1),
            )
        mesh = getattr(self, "device_mesh", None) if self._trainer is not None else None
        if mesh is not None and "data_parallel" in mesh.mesh_dim_names and not self.sharded:
            self.sharded = True  # validate() then fit() both call configure_model
            dp = mesh["data_parallel"]
            for block in self.strategy.shard_units(self.model):
                fully_shard(block, mesh=dp)
            fully_shard(self.model, mesh=dp)
        # a checkpointed block recomputes without the cache; a compiled one would retrace
        rework = self.speed.activation_checkpointing or self.speed.compile
        self.task.calls.whole_rows(training=rework or self.sharded, evaluation=self.sharded)

    def on_fit_start(self) -> None:
        """Train mode for every layer: ``from_pretrained`` returns models in eval mode, and
        Lightning keeps each module's mode, so dropout would otherwise stay off in training."""
        self.model.train()

    @contextlib.contextmanager
    def scoring(self, generate: bool = True) -> Iterator[dict[str, float]]:
        """One evaluation pass: fresh metrics (generation-based ones when ``generate``); the
        yielded dict holds the pass's scores once the block ends, and the model is back in
        train mode (validate() leaves it in eval mode; fit() expects train mode)."""
        scores: dict[str, float] = {}
        self.generate_in_eval = generate
        self.reset_metrics()
        try:
            yield scores
            scores.update(self.last_eval)
        finally:
            self.generate_in_eval = False
            self._merged.close()  # also when the pass failed half-way
            self.train()
            self.val_metrics.clear()

    def reset_metrics(self) -> None:
        """Fresh metrics for the next evaluation pass (the task may have learnt its fields)."""
        self.val_metrics = nn.ModuleDict(self.task.metrics()).to(self.device)

    # -- steps ----------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Any:
        """Run the wrapped model on the model inputs of a batch."""
        return self.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One micro-batch: the task's loss, logged without a host sync; a NaN or infinite
        loss stops the run."""
        self._step_kernel = step_kernel(self.kernel_setting, self.model, batch.get("input_ids"))
        with (
            attention_kernel(self._step_kernel),
            grouped_kv(self.device.type, self.speed.grouped_kv),
        ):
            loss = self.task.training_loss(
                self.model, {k: batch[k] for k in MODEL_INPUTS if k in batch}
            )
        stop_if_not_finite(self._trainer, loss, batch_idx)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        if not getattr(self, "_speed_logged", False):  # what the first step chose, once a run
            self._speed_logged = True
            log.info("%s", speed_line(self))
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward under the step's attention kernel (activation checkpointing recomputes
        the forward here, and must take the same kernel)."""
        with (
            attention_kernel(self._step_kernel),
            grouped_kv(self.device.type, self.speed.grouped_kv),
        ):
            super().backward(loss, *args, **kwargs)

    def on_validation_model_eval(self) -> None:
        """Eval mode, then let the strategy fix up layers that must not switch (4-bit on CPU)."""
        super().on_validation_model_eval()
        self.strategy.prepare_for_eval(self.model)

    def on_test_model_eval(self) -> None:
        """As for validation."""
        super().on_test_model_eval()
        self.strategy.prepare_for_eval(self.model)

    def on_validation_epoch_start(self) -> None:
        """Start a clean metric pass, the model in the strategy's evaluation view (LoRA: the
        adapters folded into their weights, put back bit for bit at the end)."""
        if not len(self.val_metrics):
            self.reset_metrics()
        if not self.sharded:  # sharded weights stay as they are
            self._merged.enter_context(self.strategy.evaluation_view(self.model))

    def on_validation_epoch_end(self) -> None:
        """Log every metric as ``val/<name>``; put unmerged adapters back."""
        self._merged.close()
        values = self.task.compute_metrics(self._metrics())
        for key, value in values.items():
            # metric objects already reduced across ranks in compute()
            self.log(f"val/{key}", value, prog_bar=key == "loss")
        self.last_eval = values

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss and task metrics; generation-based scores during before/after evaluation."""
        # compiled blocks are for training: evaluation shapes (generation's one-token steps
        # with a cache) would only pay for more compilation
        eager = torch.compiler.set_stance("force_eager") if self.speed.compile else nullcontext()
        with eager, grouped_kv(self.device.type, self.speed.grouped_kv):
            inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
            gen_model = self.model if self.generate_in_eval else None
            out = self.task.evaluation_outputs(self.model, inputs, gen_model is not None)
            self.task.update_metrics(self._metrics(), batch, out, model=gen_model)

    test_step = validation_step
    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    def _metrics(self) -> dict[str, Any]:
        return dict(self.val_metrics.items())

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """Optimizer over exactly the strategy's trainable parameters (+ scheduler per step)."""
        groups: list[dict[str, Any]] = []
        for group in self.strategy.optimizer_groups(self.model):
            scale = float(group.get("lr_scale", 1.0))
            decay, no_decay = [], []
            for name, p in group["params"]:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
            # matrices decay at the optimizer's rate (optimizer.weight_decay); biases and
            # norms never decay
            if decay:
                groups.append({"params": decay, "lr_scale": scale})
            if no_decay:
                groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": scale})
        if not groups:
            raise ConfigError(f"strategy={self.strategy.name} left no trainable parameters")
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:  # before the scheduler reads the base rates
            group["lr"] = group["lr"] * group["lr_scale"]
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only what the strategy says must be saved (adapters + head for PEFT), with
        every rank's random state."""
        state = self.strategy.trainable_state_dict(self.model)
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in state.items()}
        ranks = rank_rng_states(self.device)
        checkpoint["ftlight"] = {
            "strategy": self.strategy.name,
            "task": self.task.name,
            "rng_ranks": ranks,
            "rng": ranks[0]["torch"],  # what checkpoints held before per-rank states
            **self.fingerprint,
        }
        if "cuda" in ranks[0]:
            checkpoint["ftlight"]["cuda_rng"] = ranks[0]["cuda"]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint matches this run, load its trainable state, restore the RNG."""
        meta = checkpoint.get("ftlight", {})
        if meta and meta.get("strategy") != self.strategy.name:
            raise ConfigError(
                f"checkpoint was written with strategy={meta.get('strategy')} but this run uses "
                f"strategy={self.strategy.name}; resume with the same strategy"
            )
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
        self.strategy.load_trainable_state_dict(self.model, state)
        # Put back where training continues, not now: Lightning draws from the RNG while it
        # sets up the fit (dataloader iterators), which would shift every later dropout mask.
        self._resume_rng = rng_state_of_rank(meta)

    def on_train_epoch_start(self) -> None:
        """Resuming at an epoch boundary: restore the checkpoint's RNG state here."""
        self._restore_rng()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Resuming mid-epoch (no epoch start comes first): restore it before the next batch."""
        self._restore_rng()

    def _restore_rng(self) -> None:
        if self._resume_rng is not None:
            restore_rng_state(self._resume_rng, self.device)
            self._resume_rng = None
