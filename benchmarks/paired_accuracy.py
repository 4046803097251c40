r"""Accuracy of full fine-tuning through ftlight against a plain ``transformers`` ``Trainer``.

    nice -n 10 python benchmarks/paired_accuracy.py --rows 120 --steps 24 --lr 3e-5 \
        --seeds 0,1,2 --precision auto --json out.json
    python benchmarks/paired_accuracy.py --model tiny-bert --rows 32 --steps 2 --seeds 0

Both systems train the same model (``model=``), on the same training rows and held-out rows
of the demo classification task (``experiment=demo-classify``), for the same optimizer steps,
batch size and peak learning rate, each seed in its own process:

- ``ftlight``: ``python -m ftlight`` with ftlight's defaults (schedule, warm-up, batch
  order, the automatic precision under ``--precision auto``); the score is ``metrics.json``'s
  ``after.accuracy``;
- ``hf_trainer``: the model loaded with ``AutoModelForSequenceClassification``, the rows
  tokenised by its tokenizer, ``DataCollatorWithPadding`` and ``transformers.Trainer`` with
  its own defaults (linear decay, no warm-up, max_grad_norm 1.0, AdamW); the score is the
  argmax of ``Trainer.predict``'s logits.

``--override`` adds a Hydra override to the ftlight side only, ``--hf-arg`` a
``TrainingArguments`` value to the Trainer side only: that is how one suspect at a time is
switched over. It prints each system's accuracy per seed, mean +- sample standard deviation,
and the per-seed difference (ftlight - Trainer).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import emit, machine_info, run_child

SYSTEM_NAMES = ("ftlight", "hf_trainer")
PRECISIONS = {"auto": None, "fp32": "32-true", "bf16": "bf16-mixed"}
"""``--precision`` -> ftlight's ``trainer.precision`` (auto: ftlight's own choice)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--only`` and ``--seed`` are how the parent starts a child)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="minilm-l6", help="a model= config name")
    p.add_argument("--rows", type=int, default=120, help="training rows (data.train_size)")
    p.add_argument("--val-rows", type=int, default=400, help="held-out rows scored")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate of both")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run each")
    p.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="auto",
        help="auto: each system's default (ftlight's automatic choice, the Trainer's fp32); "
        "fp32 | bf16: both",
    )
    p.add_argument("--systems", default=",".join(SYSTEM_NAMES))
    p.add_argument(
        "--override", action="append", metavar="KEY=VALUE", help="Hydra override, ftlight only"
    )
    p.add_argument(
        "--hf-arg",
        action="append",
        metavar="KEY=VALUE",
        help="TrainingArguments value, Trainer only",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads in each process")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--only", choices=SYSTEM_NAMES, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if min(opts.rows, opts.val_rows, opts.steps, opts.batch_size) < 1 or opts.lr <= 0:
        p.error("--rows, --val-rows, --steps and --batch-size must be >= 1, --lr > 0")
    opts.seed_list = [int(s) for s in opts.seeds.split(",") if s.strip()]
    opts.system_list = [s.strip() for s in opts.systems.split(",") if s.strip()]
    unknown = sorted(set(opts.system_list) - set(SYSTEM_NAMES))
    if unknown or not opts.seed_list:
        p.error(f"unknown systems {unknown} (choose from {', '.join(SYSTEM_NAMES)}) or no seeds")
    return opts


# -- the shared configuration ---------------------------------------------------------------
def overrides(opts: argparse.Namespace, seed: int) -> list[str]:
    """Hydra overrides of the ftlight run; the Trainer reads its model and rows from them."""
    out = [
        "experiment=demo-classify",
        f"model={opts.model}",
        "strategy=full",
        f"data.train_size={opts.rows}",
        f"data.val_size={opts.val_rows}",
        f"data.batch_size={opts.batch_size}",
        f"optimizer.lr={opts.lr}",
        f"trainer.max_steps={opts.steps}",
        "trainer.max_epochs=-1",  # max_steps alone decides the length, as for the Trainer
        "trainer.check_val_every_n_epoch=100000",  # score once, after training
        "trainer.enable_checkpointing=false",
        "callbacks.checkpoint=null",
        "eval.before=false",
        "eval.export=false",
        "eval.plots=false",
        "eval.general=null",
        "logger=none",
        f"seed={seed}",
    ]
    if PRECISIONS[opts.precision]:
        out.append(f"trainer.precision={PRECISIONS[opts.precision]}")
    return out + list(opts.override or [])


def compose(opts: argparse.Namespace, seed: int, run_dir: str) -> Any:
    """The composed ftlight config of one seed's run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import ftlight.config

    ftlight.config.register()
    with initialize_config_dir(config_dir=ftlight.config.CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=[*overrides(opts, seed), f"run_dir={run_dir}"])


def examples(cfg: Any) -> dict[str, list[tuple[str, str | None, str]]]:
    """(text, text pair, label) of the training and held-out rows, as ftlight reads them,
    before any tokenisation."""
    from hydra.utils import instantiate

    from ftlight.data.formats import get_format

    task, data = instantiate(cfg.task), instantiate(cfg.data)
    raw = data.source.records(task)
    name = data.format_name
    if name == "auto":
        name = data.source.format_for(task) or task.default_format
    fmt = get_format(name, **data.fields)
    out = {}
    for split in ("train", "validation"):
        source, records = raw[split]
        parsed = [fmt.parse(rec, f"{source} row {i + 1}") for i, rec in enumerate(records)]
        out[split] = [(ex.text, ex.text_pair, str(ex.label).strip()) for ex in parsed]
    return out


# -- 1. ftlight, through its command line ----------------------------------------------------
def run_ftlight(opts: argparse.Namespace, seed: int, log_path: Path) -> dict[str, Any]:
    """``python -m ftlight`` in its own process; the scores from its metrics.json."""
    with tempfile.TemporaryDirectory(prefix="paired-ftlight-") as run_dir:
        cmd = [sys.executable, "-m", "ftlight", *overrides(opts, seed)]
        cmd.append(f"hydra.run.dir={run_dir}")
        if opts.threads:
            cmd = ["env", f"OMP_NUM_THREADS={opts.threads}", *cmd]
        started = time.perf_counter()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(
                    cmd, stdout=log, stderr=subprocess.STDOUT, timeout=opts.timeout, env=env
                )
            except subprocess.TimeoutExpired:
                return {"error": f"timed out after {opts.timeout:.0f} s (log: {log_path})"}
        metrics = Path(run_dir) / "metrics.json"
        if proc.returncode or not metrics.is_file():
            tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
            return {
                "error": f"exit code {proc.returncode} (log: {log_path})",
                "log_tail": "\n".join(tail),
            }
        summary = json.loads(metrics.read_text())
    return {
        "accuracy": summary["after"]["accuracy"],
        "f1_macro": summary["after"].get("f1_macro"),
        "eval_loss": summary["after"].get("loss"),
        "final_loss": summary["train"]["final_loss"],
        "steps": summary["train"]["steps"],
        "wall_s": time.perf_counter() - started,
    }


# -- 2. the plain transformers Trainer -------------------------------------------------------
def run_hf_trainer(opts: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The same model folder and rows under ``transformers.Trainer`` and its defaults."""
    import numpy as np
    import torch
    import transformers
    from hydra.utils import instantiate
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    if opts.threads:
        torch.set_num_threads(opts.threads)
    transformers.utils.logging.set_verbosity_error()
    started = time.perf_counter()
    cfg = compose(opts, seed, tempfile.gettempdir())
    path = instantiate(cfg.model).resolve()
    rows = examples(cfg)
    names = sorted({label for _, _, label in rows["train"]})
    ids = {name: i for i, name in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(path)
    max_length = int(cfg.data.max_length)

    def encode(split: str) -> list[dict[str, Any]]:
        out = []
        for text, pair, label in rows[split]:
            enc = tokenizer(text, pair, truncation=True, max_length=max_length)
            out.append({**enc, "labels": ids[label]})
        return out

    train_rows, val_rows = encode("train"), encode("validation")
    transformers.set_seed(seed)  # the new head's initial weights
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id=ids,
        dtype=torch.float32,
    )
    extra = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in opts.hf_arg or [])}
    with tempfile.TemporaryDirectory(prefix="paired-hf-") as out_dir:
        args = TrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=opts.batch_size,
            per_device_eval_batch_size=int(cfg.data.eval_batch_size),
            max_steps=opts.steps,
            learning_rate=opts.lr,
            bf16=opts.precision == "bf16",
            use_cpu=not torch.cuda.is_available(),
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            dataloader_num_workers=0,
            seed=seed,
            **extra,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_rows,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        trainer.train()
        pred = trainer.predict(val_rows)
    logits, labels = np.asarray(pred.predictions), np.asarray(pred.label_ids)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "accuracy": float((logits.argmax(-1) == labels).mean()),
        "eval_loss": float(pred.metrics["test_loss"]),
        "final_loss": losses[-1] if losses else None,
        "steps": int(trainer.state.global_step),
        "schedule": str(args.lr_scheduler_type),
        "warmup": float(args.warmup_steps or getattr(args, "warmup_ratio", 0) or 0),
        "weight_decay": float(args.weight_decay),
        "max_grad_norm": float(args.max_grad_norm),
        "wall_s": time.perf_counter() - started,
    }


# -- the parent: both systems, every seed ------------------------------------------------------
def child_command(opts: argparse.Namespace, system: str, seed: int) -> list[str]:
    """This script with the same options, for one system and seed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", system, "--seed", str(seed)]
    cmd += ["--model", opts.model, "--rows", str(opts.rows), "--val-rows", str(opts.val_rows)]
    cmd += ["--steps", str(opts.steps), "--batch-size", str(opts.batch_size)]
    cmd += ["--lr", repr(opts.lr), "--precision", opts.precision]
    if opts.threads:
        cmd += ["--threads", str(opts.threads)]
    for item in opts.override or []:
        cmd += ["--override", item]
    for item in opts.hf_arg or []:
        cmd += ["--hf-arg", item]
    return cmd


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarise(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Accuracy per system over the seeds, and the per-seed difference ftlight - Trainer."""
    out: dict[str, Any] = {}
    for system, by_seed in runs.items():
        ok = [r["accuracy"] for r in by_seed.values() if "accuracy" in r]
        if ok:
            out[system] = spread(ok)
    if {"ftlight", "hf_trainer"} <= set(runs):
        pairs = [
            runs["ftlight"][s]["accuracy"] - runs["hf_trainer"][s]["accuracy"]
            for s in runs["ftlight"]
            if "accuracy" in runs["ftlight"][s] and "accuracy" in runs["hf_trainer"].get(s, {})
        ]
        if pairs:
            out["difference"] = spread(pairs)
    return out


def parent_main(opts: argparse.Namespace) -> int:
    """Run every system for every seed in its own process, then print and save the figures."""
    machine = machine_info()
    flags = cpu_flags()
    print(f"# paired accuracy: {opts.model}, strategy=full, precision {opts.precision}")
    print(f"machine: {machine['cpu']} | flags {flags} | load avg {machine['load_avg']}")
    print(
        f"versions: torch {machine['torch']}, transformers {machine['transformers']}, "
        f"lightning {machine['lightning']}"
    )
    print(
        f"settings: {opts.rows} training rows, {opts.val_rows} held out, {opts.steps} steps of "
        f"{opts.batch_size}, lr {opts.lr}, seeds {opts.seed_list}, ftlight overrides "
        f"{opts.override or []}, Trainer args {opts.hf_arg or []}\n",
        flush=True,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="ftlight-paired-accuracy-"))
    runs: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in opts.system_list}
    for seed in opts.seed_list:  # seed by seed: a burst of load hits both systems alike
        for system in opts.system_list:
            log = log_dir / f"{system}-{seed}.log"
            if system == "ftlight":
                res = run_ftlight(opts, seed, log)
            else:
                res = run_child(child_command(opts, system, seed), opts.timeout, log)
            runs[system][seed] = res
            if "error" in res:
                print(f"[{system} seed {seed}] FAILED: {res['error']}\n{res.get('log_tail', '')}")
            else:
                print(
                    f"[{system} seed {seed}] accuracy {res['accuracy']:.4f}, eval loss "
                    f"{res['eval_loss']:.4f}, last train loss {res['final_loss']}, "
                    f"{res['steps']} steps, {res['wall_s']:.0f} s",
                    flush=True,
                )
    figures = summarise(runs)
    print()
    for name, s in figures.items():
        print(
            f"{name}: {100 * s['mean']:.2f} +- {100 * s['std']:.2f} points "
            f"(min {100 * s['min']:.2f}, max {100 * s['max']:.2f}) over {len(opts.seed_list)} seeds"
        )
    if opts.json:
        payload = {
            "machine": {**machine, "cpu_flags": flags},
            "settings": {k: v for k, v in vars(opts).items() if k not in ("json", "only", "seed")},
            "ftlight_overrides": overrides(opts, opts.seed_list[0]),
            "runs": {s: {str(k): v for k, v in r.items()} for s, r in runs.items()},
            "figures": figures,
        }
        opts.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {opts.json}")
    failed = any("error" in r for by_seed in runs.values() for r in by_seed.values())
    return 1 if failed else 0


def cpu_flags() -> list[str]:
    """Which of the matmul-relevant flags the CPU reports (bf16 decides the automatic choice)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    present = set(text.split())
    return [f for f in wanted if f in present]


def main(argv: list[str] | None = None) -> int:
    """Parent (both systems, every seed) or child (``--only``: one system, one seed)."""
    opts = parse_args(argv)
    if opts.only == "hf_trainer":
        import warnings

        warnings.filterwarnings("ignore")
        emit(run_hf_trainer(opts, opts.seed))
        return 0
    if opts.only:
        raise SystemExit("ftlight runs through its own command line, not as a child")
    return parent_main(opts)


if __name__ == "__main__":
    sys.exit(main())
