"""The four training systems the throughput benchmark times, on one model, data and config.

Each ``run_<system>(opts)`` runs in its own process, trains ``warmup + steps`` optimizer steps
and returns a ``StepTimer`` plus facts about the run. All of them read the same composed
ftlight config: same model source, tokenizer, encoded rows, LoRA config, learning rate.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
from bench_common import StepTimer, real_tokens
from omegaconf import DictConfig

from ftlight.build import Parts, build_parts, load_model
from ftlight.module import MODEL_INPUTS


@dataclass
class Outcome:
    """What one system hands back besides its timer."""

    timer: StepTimer
    params: dict[str, int]
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# -- the shared configuration ---------------------------------------------------------------
def overrides(opts: argparse.Namespace, device: torch.device, run_dir: str) -> list[str]:
    """Hydra overrides that turn ftlight's default run into the benchmark run."""
    precision = "bf16-mixed" if opts.precision == "bf16" else "32-true"
    out = [
        f"model={opts.model}",
        "data=demo",
        "strategy=lora",
        "strategy.dropout=0",
        f"data.batch_size={opts.batch_size}",
        f"data.train_size={opts.rows}",
        f"data.packing={str(opts.packing).lower()}",
        f"trainer.max_steps={opts.warmup + opts.steps}",
        f"trainer.precision={precision}",
        "trainer.limit_val_batches=0",
        "trainer.enable_checkpointing=false",
        # constant rate: the schedule costs nothing per step, and equal rates let the
        # systems' losses be compared step by step
        "scheduler=constant",
        "scheduler.warmup_ratio=0",
        "eval.before=false",
        "eval.after=false",
        "logger=none",
        "callbacks.checkpoint=null",
        f"run_dir={run_dir}",
    ]
    if opts.max_length:
        out.append(f"data.max_length={opts.max_length}")
    if device.type == "cuda":
        out.insert(0, "trainer=gpu")
    return out + list(opts.override or [])


def compose(opts: argparse.Namespace, device: torch.device, run_dir: str) -> DictConfig:
    """The composed ftlight config of this benchmark run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import ftlight.config

    ftlight.config.register()
    with initialize_config_dir(config_dir=ftlight.config.CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=overrides(opts, device, run_dir))


def config_fingerprint(cfg: DictConfig) -> str:
    """A short hash of the composed config (minus run_dir): every system must show the same.

    Guards against conf/ changing between the systems' runs (they compose one after another).
    """
    import hashlib

    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("run_dir", None)
    return hashlib.sha256(repr(plain).encode()).hexdigest()[:12]


def check_enough_batches(n_batches: int, needed: int) -> None:
    """One epoch must hold every step, so that all systems see the same batches."""
    if n_batches < needed:
        raise SystemExit(
            f"the data gives {n_batches} batches per epoch but the run needs {needed} "
            "(warmup + steps): raise --rows"
        )


def seed(cfg: DictConfig) -> None:
    """Fetch/build the model into ftlight's cache, then seed like ``ftlight.train.train``.

    Building a tiny model reseeds torch's global generator (``ftlight.models.tiny``), so a
    process that finds the cache empty would otherwise start LoRA from other random weights
    than one that finds it full.
    """
    import lightning as L
    from hydra.utils import instantiate

    instantiate(cfg.model).resolve()
    L.seed_everything(cfg.seed, workers=True, verbose=False)


# -- 1. ftlight ------------------------------------------------------------------------------
def run_ftlight(opts: argparse.Namespace, device: torch.device) -> Outcome:
    """``build_run(cfg)`` then ``trainer.fit``, timed by a callback."""
    import lightning as L

    from ftlight.build import build_run

    class LightningStepTimer(L.Callback):
        """Times each training batch; counts its real tokens."""

        def __init__(self, timer: StepTimer, pad_token_id: int) -> None:
            self.timer, self.pad_token_id = timer, pad_token_id

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
            self.timer.begin()

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
        ) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.timer.end(self._tokens(batch), None if loss is None else float(loss))

        def _tokens(self, batch: Any) -> int:
            return real_tokens(batch, self.pad_token_id)

    with tempfile.TemporaryDirectory(prefix="bench-ftlight-") as run_dir:
        cfg = compose(opts, device, run_dir)
        seed(cfg)
        run = build_run(cfg)
        check_enough_batches(len(run.data.train_dataloader()), opts.warmup + opts.steps)
        timer = StepTimer(opts.warmup, device)
        run.trainer.callbacks.append(LightningStepTimer(timer, run.tokenizer.pad_token_id))
        run.trainer.fit(run.module, datamodule=run.data)
        params = run.strategy.describe(run.module.model)
        monitor = {}
        for cb in run.trainer.callbacks:
            if hasattr(cb, "summary") and hasattr(cb, "loss_history"):
                monitor = dict(cb.summary)
    return Outcome(
        timer,
        {"total": int(params["total"]), "trainable": int(params["trainable"])},
        extra={
            "ftlight_throughput_monitor": monitor,
            "precision": str(cfg.trainer.precision),
            "lr": run.trainer.optimizers[0].param_groups[0]["lr"],
            "config_sha": config_fingerprint(cfg),
        },
    )


# -- 2. a hand-written loop --------------------------------------------------------------------
def run_loop(opts: argparse.Namespace, device: torch.device) -> Outcome:
    """The same batches, model, LoRA and AdamW in a plain PyTorch loop."""
    from hydra.utils import instantiate

    cfg = compose(opts, device, tempfile.gettempdir())
    seed(cfg)
    parts = build_parts(cfg)
    model = parts.strategy.apply(load_model(parts), parts.task).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optimizer)(params)
    clip = cfg.trainer.gradient_clip_val
    bf16 = opts.precision == "bf16"
    loader = parts.data.train_dataloader()
    needed = opts.warmup + opts.steps
    check_enough_batches(len(loader), needed)
    pad_id = parts.tokenizer.pad_token_id
    timer = StepTimer(opts.warmup, device)
    for _, batch in zip(range(needed), loader, strict=False):
        timer.begin()
        inputs = {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUTS if k in batch}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**inputs, use_cache=False)
        out.loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.end(real_tokens(batch, pad_id), out.loss.item())
    info = parts.strategy.describe(model)
    return Outcome(
        timer,
        {"total": int(info["total"]), "trainable": int(info["trainable"])},
        extra={"lr": optimizer.param_groups[0]["lr"], "config_sha": config_fingerprint(cfg)},
    )


# -- 3 and 4. the Hugging Face trainers ----------------------------------------------------------
def _fixed_order(trainer_cls: type, pad_id: int, timer: StepTimer) -> type:
    """``trainer_cls`` that counts each batch's real tokens and can draw ftlight's batches.

    Set ``bench_batches`` (lists of row indices) on an instance to replace its sampler by
    ftlight's batch order; its collator, loop and optimizer stay its own. Left None, the
    trainer keeps its own sampler.
    """
    from torch.utils.data import DataLoader

    class Counted(trainer_cls):  # type: ignore[misc, valid-type]
        bench_batches: list[list[int]] | None = None

        def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            timer.pending_tokens = real_tokens(inputs, pad_id)
            return super().training_step(model, inputs, *args, **kwargs)

        def get_train_dataloader(self) -> DataLoader:
            if self.bench_batches is None:
                return super().get_train_dataloader()
            import datasets

            dataset, collator = self.train_dataset, self.data_collator
            if isinstance(dataset, datasets.Dataset):
                dataset = self._remove_unused_columns(dataset, description="Training")
            else:
                collator = self._get_collator_with_removed_columns(collator, description="Training")
            loader = DataLoader(dataset, batch_sampler=self.bench_batches, collate_fn=collator)
            return self.accelerator.prepare(loader)

    Counted.__name__ = f"Benchmark{trainer_cls.__name__}"
    return Counted


def _timing_callback(timer: StepTimer) -> Any:
    from transformers import TrainerCallback

    class HFStepTimer(TrainerCallback):
        """on_step_begin / on_step_end around each optimizer step; the loss from on_log."""

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timer.begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timer.end(getattr(timer, "pending_tokens", 0))

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                timer.losses[state.global_step - 1] = float(logs["loss"])

    return HFStepTimer()


def _hf_args(opts: argparse.Namespace, cfg: DictConfig, device: torch.device, out_dir: str) -> dict:
    """TrainingArguments shared by the HF Trainer and TRL: same batch, steps, rate, clipping."""
    opt = cfg.optimizer
    return dict(
        output_dir=out_dir,
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=1,
        max_steps=opts.warmup + opts.steps,
        learning_rate=float(opt.lr),
        adam_beta1=float(opt.betas[0]),
        adam_beta2=float(opt.betas[1]),
        adam_epsilon=float(opt.eps),
        weight_decay=float(opt.weight_decay),
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=float(cfg.trainer.gradient_clip_val or 0.0),
        bf16=opts.precision == "bf16",
        use_cpu=device.type == "cpu",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        seed=int(cfg.seed),
    )


def run_hf_trainer(opts: argparse.Namespace, device: torch.device) -> Outcome:
    """``transformers.Trainer`` + peft over ftlight's encoded rows and collator."""
    from transformers import Trainer, TrainingArguments

    cfg = compose(opts, device, tempfile.gettempdir())
    seed(cfg)
    parts = build_parts(cfg)
    model = parts.strategy.apply(load_model(parts), parts.task)
    # the Trainer calls model(**batch): packed batches are only masked per sequence without a
    # KV cache (ftlight.data.collate), and a training forward has no use for one anyway
    model.config.use_cache = False
    loader = parts.data.train_dataloader()  # ftlight's rows (or packs), collator and order
    batches = [list(b) for b in loader.batch_sampler]
    check_enough_batches(len(batches), opts.warmup + opts.steps)
    timer = StepTimer(opts.warmup, device)
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as out_dir:
        # packs are lists of rows, so the Trainer must not drop "unused" keys from features
        args = TrainingArguments(
            **_hf_args(opts, cfg, device, out_dir), remove_unused_columns=False
        )
        cls = _fixed_order(Trainer, parts.tokenizer.pad_token_id, timer)
        trainer = cls(
            model=model,
            args=args,
            train_dataset=loader.dataset,
            data_collator=loader.collate_fn,
            callbacks=[_timing_callback(timer)],
        )
        trainer.bench_batches = batches
        trainer.train()
    info = parts.strategy.describe(model)
    return Outcome(
        timer,
        {"total": int(info["total"]), "trainable": int(info["trainable"])},
        notes=[
            f"collator {type(loader.collate_fn).__name__} (ftlight); batches in ftlight's order"
        ],
        extra={
            "optim": str(args.optim),
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "config_sha": config_fingerprint(cfg),
        },
    )


def trl_rows(parts: Parts) -> list[dict[str, Any]]:
    """The training examples as conversational prompt/completion rows, in ftlight's order."""
    from ftlight.data.formats import get_format

    data = parts.data
    fmt = get_format(data.format_name, **data.fields)
    raw = data.load_records()
    source, records = raw["train"]
    examples = [fmt.parse(rec, f"{source} row {i + 1}") for i, rec in enumerate(records)]
    if "validation" not in raw:
        examples, _ = data._hold_out(examples)
    rows = []
    for ex in examples:
        messages = list(ex.messages)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        rows.append({"prompt": messages[:last], "completion": messages[last : last + 1]})
    return rows


def run_trl(opts: argparse.Namespace, device: torch.device) -> Outcome:
    """``trl.SFTTrainer`` with its own tokenisation and default collator, same LoRA config."""
    import datasets
    import trl
    from trl import SFTConfig, SFTTrainer

    cfg = compose(opts, device, tempfile.gettempdir())
    seed(cfg)
    parts = build_parts(cfg)
    model = load_model(parts)
    lora_config = parts.strategy.lora_config(model, parts.task)
    rows = trl_rows(parts)
    notes = [f"trl {trl.__version__}, default collator, gradient_checkpointing off (trl: on)"]
    timer = StepTimer(opts.warmup, device)
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out_dir:
        args = SFTConfig(
            **_hf_args(opts, cfg, device, out_dir),
            gradient_checkpointing=False,
            max_length=parts.data.max_length,
            packing=bool(opts.packing),
        )
        cls = _fixed_order(SFTTrainer, parts.tokenizer.pad_token_id, timer)
        trainer = cls(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=parts.tokenizer,
            peft_config=lora_config,
            callbacks=[_timing_callback(timer)],
        )
        # trl tokenises (and may drop) rows itself: ftlight's batch order only fits while
        # both hold the same rows in the same order
        n_trl, n_ftlight = len(trainer.train_dataset), len(parts.data.encoded["train"])
        if opts.packing:
            notes.append("trl packs with its own packer and sampler: batches differ")
        elif n_trl == len(rows) == n_ftlight:
            trainer.bench_batches = [list(b) for b in parts.data.train_dataloader().batch_sampler]
            check_enough_batches(len(trainer.bench_batches), opts.warmup + opts.steps)
            notes.append("batches in ftlight's order (rows tokenised by trl)")
        else:
            notes.append(f"rows differ (trl {n_trl}, ftlight {n_ftlight}): trl's own sampler")
        trainer.train()
    info = parts.strategy.describe(trainer.model)
    return Outcome(
        timer,
        {"total": int(info["total"]), "trainable": int(info["trainable"])},
        notes=notes,
        extra={
            "trl": trl.__version__,
            "optim": str(args.optim),
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "config_sha": config_fingerprint(cfg),
        },
    )


SYSTEMS = {
    "ftlight": run_ftlight,
    "loop": run_loop,
    "hf_trainer": run_hf_trainer,
    "trl": run_trl,
}
"""System name -> the function that trains it in this process."""
