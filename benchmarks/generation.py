"""Evaluation's generation against plain ``transformers`` ``generate`` on the same prompts.

    python benchmarks/generation.py                                # base model + fresh LoRA
    python benchmarks/generation.py --adapter runs/<date>/<time>/adapter   # a trained adapter
    python benchmarks/generation.py --precision fp32 --repeats 2 --json gen.json

The prompts are the demo's held-out tickets (``data.val_size``, 50 by default) in
evaluation batches (``data.eval_batch_size``); every system decodes greedily up to the
evaluation's token budget (``max_new_tokens: auto``) and stops each row at its end token.

Systems:
- ``ftlight``: what evaluation runs, ``greedy_decode`` (the shared prompt prefix encoded
  once, finished rows dropped) on the model with LoRA merged (``merged_lora``);
- ``hf_generate``: ``model.generate(do_sample=False)`` on the PEFT model as it is (adapters
  unmerged), which is what evaluation ran before;
- ``hf_generate_merged``: ``model.generate`` with LoRA merged (how much of the gain is the
  merge).

It prints, per system, the answer tokens (each row up to its end token), the seconds, the
tokens per second and the ratio to ``hf_generate``, and whether every system produced the
same tokens. llama.cpp's Python bindings are not compared: ``llama-cpp-python`` has no
binary wheel on PyPI, only a source build.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import machine_info

SYSTEMS = ("ftlight", "hf_generate", "hf_generate_merged")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a model= config name")
    p.add_argument("--adapter", type=Path, help="a run's adapter/ folder (default: fresh LoRA)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--repeats", type=int, default=1, help="round robin; each keeps its fastest")
    p.add_argument("--rows", type=int, default=50, help="held-out tickets (data.val_size)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="data.eval_batch_size (default: the demo's)"
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", type=Path, help="also write the results here")
    opts = p.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    systems = [s for s in opts.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")

    model, task, batches, autocast = _setup(opts)
    print(json.dumps(machine_info()))
    print(
        f"prompts: {sum(len(b['references']) for b in batches)} in {len(batches)} batches; "
        f"max_new_tokens={task.max_new_tokens}; precision={opts.precision}"
    )
    best: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    for _ in range(opts.repeats):
        for system in systems:
            result, outs = _time(system, model, task, batches, autocast)
            if system not in best or result["seconds"] < best[system]["seconds"]:
                best[system] = result
            outputs[system] = outs
    base = best.get("hf_generate", {}).get("tokens_per_s")
    print(f"{'system':<20}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'vs hf_generate':>16}")
    for system, r in best.items():
        ratio = r["tokens_per_s"] / base if base else float("nan")
        r["ratio_to_hf_generate"] = ratio
        print(
            f"{system:<20}{r['tokens']:>8}{r['seconds']:>10.1f}{r['tokens_per_s']:>10.1f}"
            f"{ratio:>15.2f}x"
        )
    first = next(iter(outputs.values()))
    same = all(
        all(torch.equal(a, b) for a, b in zip(first, outs, strict=True))
        for outs in outputs.values()
    )
    print(f"identical answers across systems: {same}")
    report = {
        "machine": machine_info(),
        "options": {k: str(v) for k, v in vars(opts).items()},
        "results": best,
        "identical": same,
    }
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2))
    return report


def _setup(opts: argparse.Namespace) -> tuple[Any, Any, list[dict[str, Any]], Any]:
    """The run's model (strategy applied, adapter loaded), task and evaluation batches."""
    import tempfile

    from ftlight.build import build_run
    from ftlight.config import best_precision, register
    from ftlight.testing.helpers import compose_config

    register()
    precision = {"bf16": "bf16-mixed", "fp32": "32-true"}.get(opts.precision) or best_precision()
    opts.precision = precision
    overrides = [
        f"model={opts.model}",
        f"trainer.precision={precision}",
        f"data.val_size={opts.rows}",
        *([f"data.eval_batch_size={opts.batch_size}"] if opts.batch_size else []),
        "eval.general=null",
        "logger=none",
    ]
    cfg = compose_config(overrides, Path(tempfile.mkdtemp(prefix="ftlight-gen-")))
    run = build_run(cfg)
    run.module.configure_model()
    model = run.module.model
    if opts.adapter:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(opts.adapter / "adapter_model.safetensors"))
    model.eval()
    autocast = (
        torch.autocast("cpu", torch.bfloat16)
        if precision.startswith("bf16")
        else contextlib.nullcontext()
    )
    return model, run.module.task, list(run.data.val_dataloader()), autocast


def _time(system: str, model: Any, task: Any, batches: list[dict[str, Any]], autocast: Any):
    from ftlight.speed.decode import greedy_decode
    from ftlight.speed.merge import merged_lora
    from ftlight.tasks.causal_lm import _answer_tokens

    tok = task.tokenizer
    eos = sorted({tok.eos_token_id, *_ids(model.generation_config.eos_token_id)} - {None})
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    merged = merged_lora(model) if system != "hf_generate" else contextlib.nullcontext()
    outs: list[torch.Tensor] = []
    with torch.inference_mode(), autocast, merged:
        start = time.perf_counter()
        for b in batches:
            ids, mask = b["gen_input_ids"], b["gen_attention_mask"]
            if system == "ftlight":
                new = greedy_decode(model, ids, mask, task.max_new_tokens, eos, pad)
            else:
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=False,
                    max_new_tokens=task.max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=pad,
                )
                new = out[:, ids.shape[1] :]
            outs.append(new)
        seconds = time.perf_counter() - start
    tokens = sum(_answer_tokens(o, eos, pad) for o in outs)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}, outs


def _ids(value: Any) -> list[int]:
    return value if isinstance(value, list) else [value]


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
