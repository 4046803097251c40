"""Evaluation's generation against plain ``transformers`` ``generate`` on the same prompts.

    python benchmarks/generation.py                                # base model + fresh LoRA
    python benchmarks/generation.py --adapter runs/<date>/<time>/adapter   # a trained adapter
    python benchmarks/generation.py --precision fp32 --repeats 2 --json gen.json

The prompts are the demo's held-out tickets (``data.val_size``, 50 by default) in
evaluation batches (``data.eval_batch_size``); every system decodes greedily up to the
evaluation's token budget (``max_new_tokens: auto``) and stops each row at its end token.

Systems:
- ``ftlight``: what evaluation runs, ``greedy_decode`` (continuing from the scoring pass,
  finished rows dropped, the cache appended in place) under ``merged_lora`` (untrained
  adapters skipped, trained ones folded into the weights in place);
- ``hf_generate``: ``model.generate(do_sample=False)`` on the PEFT model as it is (adapters
  unmerged), which is what evaluation ran before;
- ``hf_generate_merged``: ``model.generate`` under the same ``merged_lora`` (how much of the
  gain is the merge).

Each system runs what an evaluation pass runs: the scoring (loss) pass over prompt and
reference, then generation. ftlight's decoding continues from the scoring pass's keys and
values (every prompt is the start of its scored row), so it does not encode the prompts
again; ``generate`` encodes them itself. It prints, per system, the answer tokens (each row
up to its end token), the generation's seconds, tokens per second and ratio to
``hf_generate``, the scoring pass's seconds and the two together (the evaluation pass), and
whether every system produced the same tokens. It also times every decoding step (a forward of
one new token per row): ``steps`` counts them, and ``ms/step, all rows`` is the median step
while every row of a batch is still answering, the cost of a step at equal width, whatever
the answers' lengths (a trained adapter computed beside its layers, for instance, shows
there). Each pass also prints how long ``merged_lora`` took to fold the adapters in and to
put the weights back (not part of the pass's seconds; the first fold of a process is the
slowest, as it makes the model file's mapped pages private). llama.cpp's Python bindings are
not compared: ``llama-cpp-python`` has no binary wheel on PyPI, only a source build.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
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
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="data.max_length (default: the demo's; 1024 for tiny-llama, whose byte-level "
        "tokenizer makes long rows)",
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
            print(
                f"[{system}] evaluation pass {result['evaluation_seconds']:.1f} s; LoRA folded "
                f"in {result['fold_seconds']:.2f} s, put back in {result['unfold_seconds']:.2f} s"
            )
            if system not in best or result["seconds"] < best[system]["seconds"]:
                best[system] = result
            outputs[system] = outs
    base = best.get("hf_generate", {}).get("tokens_per_s")
    print(
        f"{'system':<20}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'vs hf_generate':>16}"
        f"{'scoring s':>11}{'evaluation s':>14}{'steps':>7}{'ms/step, all rows':>19}"
    )
    for system, r in best.items():
        ratio = r["tokens_per_s"] / base if base else float("nan")
        r["ratio_to_hf_generate"] = ratio
        print(
            f"{system:<20}{r['tokens']:>8}{r['seconds']:>10.1f}{r['tokens_per_s']:>10.1f}"
            f"{ratio:>15.2f}x{r['scoring_seconds']:>11.1f}{r['evaluation_seconds']:>14.1f}"
            f"{r['decode_steps']:>7}{r['full_step_ms']:>19.1f}"
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
        *([f"data.max_length={length}"] if (length := _max_length(opts)) else []),
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
    """One evaluation pass of ``system``: the scoring (loss) pass every evaluation runs, then
    generation; ftlight's decoding continues from the scoring pass's keys and values."""
    from ftlight.speed.attention import grouped_kv
    from ftlight.speed.decode import greedy_decode
    from ftlight.tasks.causal_lm import _answer_tokens
    from ftlight_lora.merge import merged_lora

    tok = task.tokenizer
    eos = sorted({tok.eos_token_id, *_ids(model.generation_config.eos_token_id)} - {None})
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    merged = contextlib.nullcontext() if system == "hf_generate" else merged_lora(model)
    outs: list[torch.Tensor] = []
    scoring = generating = 0.0
    ours = system.startswith("ftlight")
    # evaluation passes grouped key/value heads to PyTorch's attention on a CPU (``grouped_kv``)
    grouped = grouped_kv(next(model.parameters()).device.type) if ours else contextlib.nullcontext()
    steps: list[tuple[int, int, float]] = []  # (rows of the batch, rows stepped, seconds)
    timer = _StepTimer(model, steps)
    with torch.inference_mode(), autocast, contextlib.ExitStack() as merging:
        began = time.perf_counter()
        merging.enter_context(merged)
        folding = time.perf_counter() - began
        with grouped, timer:
            for b in batches:
                timer.rows = len(b["input_ids"])
                start = time.perf_counter()
                inputs = {k: b[k] for k in ("input_ids", "attention_mask", "labels")}
                scored = task.evaluation_outputs(model, inputs, generating=ours)
                middle = time.perf_counter()
                ids, mask = b["gen_input_ids"], b["gen_attention_mask"]
                if ours:
                    prompted = scored.prompts and scored.prompts.prompted(
                        scored.predictions, b["input_ids"], ids, mask
                    )
                    new = greedy_decode(
                        model, ids, mask, task.max_new_tokens, eos, pad, prompted=prompted
                    )
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
                scoring += middle - start
                generating += time.perf_counter() - middle
        began = time.perf_counter()
        merging.close()
        unfolding = time.perf_counter() - began
    tokens = sum(_answer_tokens(o, eos, pad) for o in outs)
    full = [seconds for rows, stepped, seconds in steps if stepped == rows]
    result = {
        "tokens": tokens,
        "seconds": generating,
        "tokens_per_s": tokens / generating,
        "scoring_seconds": scoring,
        "evaluation_seconds": scoring + generating,
        "fold_seconds": folding,
        "unfold_seconds": unfolding,
        "decode_steps": len(steps),
        "full_step_ms": 1000 * statistics.median(full) if full else float("nan"),
    }
    return result, outs


class _StepTimer:
    """Times each decoding step (one new token per row) of the model's decoder stack: hooks on
    the inner transformer, which both ``greedy_decode`` and ``generate`` call for every step."""

    def __init__(self, model: Any, steps: list[tuple[int, int, float]]) -> None:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.target = inner.base_model  # the decoder stack under the LM head
        self.steps, self.rows, self.started = steps, 0, None

    def __enter__(self) -> _StepTimer:
        self.hooks = [
            self.target.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.target.register_forward_hook(self._post, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self.hooks:
            hook.remove()

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.dim() == 2 and ids.shape[1] == 1:
            self.started = (ids.shape[0], time.perf_counter())

    def _post(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self.started is not None:
            stepped, start = self.started
            self.steps.append((self.rows, stepped, time.perf_counter() - start))
            self.started = None


def _max_length(opts: argparse.Namespace) -> int | None:
    if opts.max_length:
        return opts.max_length
    return 1024 if opts.model == "tiny-llama" else None


def _ids(value: Any) -> list[int]:
    return value if isinstance(value, list) else [value]


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
