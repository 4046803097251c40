"""Peak memory of full fine-tuning, LoRA and QLoRA on a 1B-class Llama with random weights.

    python benchmarks/memory.py                 # TinyLlama shape: 22 layers, about 1.1 B params
    python benchmarks/memory.py --layers 8      # smaller, same width

The model (random weights, bf16 safetensors, about 2.2 GB at 22 layers) is written once under
$FTLIGHT_CACHE/bench (or /tmp/ftlight-bench). Each strategy then runs in its own process: load
the folder the way ftlight does (``HFModel.load`` with the strategy's ``load_kwargs``; QLoRA
quantises to 4-bit NF4 there), apply the strategy, train a few steps of random token ids in
bf16 autocast, and report resident memory (or CUDA allocator peaks on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    emit,
    hwm_mb,
    machine_info,
    pick_device,
    reset_hwm,
    rss_mb,
    run_child,
)

STRATEGIES = ("full", "lora", "qlora")
SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
"""TinyLlama-1.1B's shape; ``--layers`` sets num_hidden_layers (22 there)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--only`` is how the parent starts a child)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=22, help="decoder layers (22: about 1.1 B)")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--steps", type=int, default=2, help="training steps per strategy")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="model.dtype the base loads in (ftlight's default: float32)",
    )
    p.add_argument("--dir", type=Path, default=None, help="model folder (default: see above)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--force", action="store_true", help="run even if the estimate exceeds RAM")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per strategy")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--only", choices=(*STRATEGIES, "build"), help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.dir is None:
        root = Path(os.environ.get("FTLIGHT_CACHE") or tempfile.gettempdir())
        opts.dir = root / "ftlight-bench" / f"llama-random-L{opts.layers}"
    opts.strategy_list = [s.strip() for s in opts.strategies.split(",") if s.strip()]
    unknown = sorted(set(opts.strategy_list) - set(STRATEGIES))
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    return opts


def llama_config(layers: int) -> Any:
    """The benchmark model's config."""
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=layers, **SHAPE)


def build_model(opts: argparse.Namespace) -> dict[str, Any]:
    """Write the random-weight model once (bf16 safetensors), atomically."""
    from transformers import LlamaForCausalLM

    from ftlight.files import atomic_dir

    torch.manual_seed(0)
    start = time.perf_counter()
    model = LlamaForCausalLM._from_config(llama_config(opts.layers), dtype=torch.bfloat16)
    atomic_dir(opts.dir, lambda tmp: model.save_pretrained(tmp))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - start,
    }


def parameter_counts(layers: int) -> dict[str, int]:
    """Total parameters and those in the decoder's linear layers (what QLoRA quantises)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(layers))
    total = sum(p.numel() for p in model.parameters())
    linear = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"
    )
    return {"total": total, "linear": linear}


def estimate_gb(strategy: str, opts: argparse.Namespace) -> float:
    """A rough peak (GB): weights, gradients, AdamW state, bf16 weight copies, activations.

    Under bf16 autocast a float32 layer's weight is cast to a bf16 copy that stays alive for
    backward (2 bytes per linear weight); 4-bit layers were seen to cost about as much on CPU.
    For ``full`` the peak is the optimizer step instead, after those copies are gone.
    """
    counts = parameter_counts(opts.layers)
    width = 4 if opts.dtype == "float32" else 2
    total, linear = counts["total"], counts["linear"]
    copies = linear * 2 if strategy == "qlora" or (strategy == "lora" and width == 4) else 0
    if strategy == "full":  # weights + gradients + two AdamW moments, all in the weight dtype
        weights = total * width * 4
    elif strategy == "lora":
        weights = total * width
    else:  # NF4 linear layers; the rest upcast to float32 by prepare_model_for_kbit_training
        weights = linear * 0.5 + (total - linear) * 4
    tokens = opts.batch_size * opts.seq_len
    activations = tokens * (SHAPE["hidden_size"] * opts.layers * 40 + SHAPE["vocab_size"] * 12)
    return (weights + copies + activations) / 1e9 + 1.0


def mem_available_gb() -> float | None:
    """MemAvailable from /proc/meminfo, or None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        return None
    return None


def _compose(strategy: str) -> Any:
    from hydra import compose, initialize_config_dir

    import ftlight.config

    ftlight.config.register()
    with initialize_config_dir(config_dir=ftlight.config.CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[f"strategy={strategy}", "run_dir=/tmp"])


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    """Load, apply the strategy, train ``--steps`` steps; memory after each phase."""
    import transformers
    from hydra.utils import instantiate

    from ftlight.models.sources import HFModel

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = pick_device(opts.device)
    cfg = _compose(opts.only)
    strategy, task = instantiate(cfg.strategy), instantiate(cfg.task)
    torch.manual_seed(0)
    out: dict[str, Any] = {"strategy": opts.only, "device": str(device)}

    start = time.perf_counter()
    source = HFModel(name_or_path=str(opts.dir), dtype=opts.dtype)
    model = source.load(task.auto_class(), **strategy.load_kwargs(task))
    out["load_s"] = time.perf_counter() - start
    out["after_load"] = rss_mb()
    out["load_peak_mb"] = hwm_mb() or out["after_load"]["peak_rss_mb"]
    out["hwm_reset"] = reset_hwm()

    quantized = bool(getattr(model, "is_loaded_in_4bit", False))
    model = strategy.apply(model, task)
    if device.type == "cuda" and not quantized:
        model = model.to(device)  # a 4-bit model is placed by its device_map
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        out["cuda_after_load_mb"] = torch.cuda.memory_allocated(device) / 2**20
    model.train()
    info = strategy.describe(model)
    out["params"] = {"total": int(info["total"]), "trainable": int(info["trainable"])}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optimizer)(trainable)
    vocab = model.config.vocab_size
    steps = []
    for _ in range(opts.steps):
        t0 = time.perf_counter()
        ids = torch.randint(0, vocab, (opts.batch_size, opts.seq_len), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append({"loss": float(loss), "seconds": time.perf_counter() - t0})
    out["steps"] = steps
    out["train_peak_mb"] = (hwm_mb() if out["hwm_reset"] else None) or rss_mb()["peak_rss_mb"]
    out["peak_rss_mb"] = rss_mb()["peak_rss_mb"]
    if device.type == "cuda":
        out["cuda_train_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def child_command(opts: argparse.Namespace, only: str) -> list[str]:
    """This script with the same options, for one strategy (or the build)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", only]
    cmd += ["--layers", str(opts.layers), "--steps", str(opts.steps)]
    cmd += ["--seq-len", str(opts.seq_len), "--batch-size", str(opts.batch_size)]
    cmd += ["--dtype", opts.dtype, "--dir", str(opts.dir), "--device", opts.device]
    return cmd


def table(results: dict[str, dict[str, Any]], gpu: bool) -> str:
    """A Markdown table, one row per strategy."""
    cols = (
        "| strategy | trainable / total params | RSS after load MB | load peak MB "
        "| train peak MB | whole-process peak RSS MB | s/step | estimate GB |"
    )
    if gpu:
        cols += " CUDA after load MB | CUDA train peak MB |"
    n = cols.count("|") - 1
    lines = [cols, "|" + "---|" * n]
    for name, r in results.items():
        if "error" in r or "skipped" in r:
            lines.append(f"| {name} | {r.get('skipped') or r.get('error')} |" + " |" * (n - 2))
            continue
        p = r["params"]
        secs = sorted(s["seconds"] for s in r["steps"])
        row = (
            f"| {name} | {p['trainable'] / 1e6:,.1f} M / {p['total'] / 1e6:,.0f} M "
            f"| {r['after_load']['rss_mb']:,.0f} | {r['load_peak_mb']:,.0f} "
            f"| {r['train_peak_mb']:,.0f} | {r['peak_rss_mb']:,.0f} "
            f"| {secs[len(secs) // 2]:.1f} | {r['estimate_gb']:.1f} |"
        )
        if gpu:
            row += f" {r['cuda_after_load_mb']:,.0f} | {r['cuda_train_peak_mb']:,.0f} |"
        lines.append(row)
    return "\n".join(lines)


def parent_main(opts: argparse.Namespace) -> int:
    """Build the model if needed, then measure each strategy in its own process."""
    device = pick_device(opts.device)
    machine = machine_info()
    counts = parameter_counts(opts.layers)
    log_dir = Path(tempfile.mkdtemp(prefix="ftlight-memory-logs-"))
    print(
        f"# ftlight memory benchmark: random Llama, {opts.layers} layers, "
        f"{counts['total'] / 1e9:.2f} B params, base in {opts.dtype}, batch {opts.batch_size} "
        f"x {opts.seq_len} tokens, {opts.steps} steps, bf16 autocast, device {device}"
    )
    print(f"machine: {machine['cpu']} | {machine['cores']} cores | GPU {machine['gpu']}")
    if not (opts.dir / "config.json").is_file():
        print(f"building the model in {opts.dir} ...", flush=True)
        res = run_child(child_command(opts, "build"), opts.timeout, log_dir / "build.log")
        if "error" in res:
            print(f"build failed: {res['error']}\n{res.get('log_tail', '')}")
            return 1
        print(f"built {res['params'] / 1e9:.2f} B params in {res['seconds']:.0f} s")
    results: dict[str, dict[str, Any]] = {}
    for strategy in opts.strategy_list:
        estimate = estimate_gb(strategy, opts)
        available = mem_available_gb()
        if device.type == "cpu" and available and estimate > 0.9 * available and not opts.force:
            results[strategy] = {
                "skipped": f"needs about {estimate:.0f} GB, {available:.0f} GB available "
                "(use --layers N, --dtype bfloat16 or --force)",
                "estimate_gb": estimate,
            }
            print(f"[{strategy}] skipped: {results[strategy]['skipped']}", flush=True)
            continue
        print(f"[{strategy}] running (estimate {estimate:.1f} GB) ...", flush=True)
        res = run_child(child_command(opts, strategy), opts.timeout, log_dir / f"{strategy}.log")
        res["estimate_gb"] = estimate
        results[strategy] = res
        if "error" in res:
            print(f"[{strategy}] FAILED: {res['error']}\n{res.get('log_tail', '')}", flush=True)
        else:
            print(
                f"[{strategy}] train peak {res['train_peak_mb']:,.0f} MB, losses "
                f"{[round(s['loss'], 3) for s in res['steps']]}",
                flush=True,
            )
    print("\n" + table(results, device.type == "cuda"))
    print(
        "\nload peak: VmHWM after from_pretrained; train peak: VmHWM reset after loading, then "
        "strategy + steps; whole-process: getrusage max RSS (load included)."
    )
    if opts.json:
        payload = {
            "machine": machine,
            "settings": {k: v for k, v in vars(opts).items() if k not in ("json", "only")},
            "params": counts,
            "results": results,
        }
        opts.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {opts.json}")
    return 0 if all("error" not in r for r in results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """Parent (all strategies) or child (``--only``)."""
    opts = parse_args(argv)
    if opts.only == "build":
        emit(build_model(opts))
    elif opts.only:
        emit(measure(opts))
    else:
        return parent_main(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
