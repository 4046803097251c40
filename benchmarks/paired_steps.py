"""Two ways of running a training step, timed step by step on the same batches.

    python benchmarks/paired_steps.py --compare lora_forward --precision fp32 --steps 12
    python benchmarks/paired_steps.py --compare grouped_kv --precision fp32 --steps 14
    python benchmarks/paired_steps.py --compare recompute_activation --precision fp32 --steps 14
    python benchmarks/paired_steps.py --compare head_loss --precision fp32 --steps 14
    python benchmarks/paired_steps.py --model tiny-llama --steps 3

``--compare``:
- ``lora_forward``: the ``lora`` strategy's fused forward (the adapter's scaled product added
  inside the matrix product, ``ftlight_lora.fused``) against peft's own;
- ``grouped_kv``: grouped key/value heads handed to PyTorch's attention as they are
  (``ftlight.speed.attention.grouped_kv``) against transformers' per-query-head copies;
- ``recompute_activation``: gated MLPs that recompute ``act(gate(x))`` in backward
  (``ftlight.speed.gated``) against autograd keeping it;
- ``head_loss``: the head's projection and cross-entropy a block of positions at a time, with
  the gradients computed in forward (``ftlight.speed.head_loss``) against the plain head and
  ``cross_entropy``.

This builds the default job's model and training batches once, then times each training step
(forward with only the labelled positions projected, backward, AdamW) twice in a row on the
same batch, once each way, alternating which goes first. It prints the median step of each
and the median of the per-batch ratios (ftlight's way over the other), which a busy machine
shifts less than either median alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import machine_info

COMPARISONS = ("lora_forward", "grouped_kv", "recompute_activation", "head_loss")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a model= config name")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")
    p.add_argument("--steps", type=int, default=10, help="training batches, each timed twice")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compare", choices=COMPARISONS, default="lora_forward")
    opts = p.parse_args(argv)

    from ftlight.build import build_run
    from ftlight.config import register
    from ftlight.testing.helpers import compose_config

    register()
    precision = {"bf16": "bf16-mixed", "fp32": "32-true"}[opts.precision]
    overrides = [f"model={opts.model}", f"trainer.precision={precision}", "logger=none"]
    if opts.model == "tiny-llama":
        overrides.append("data.max_length=1024")  # its byte-level tokenizer makes long rows
    cfg = compose_config(overrides, Path(tempfile.mkdtemp(prefix="ftlight-paired-")))
    run = build_run(cfg)
    run.module.configure_model()
    model, task = run.module.model, run.module.task
    model.train()
    switch = _switch(opts.compare, model, task)
    batches = iter(run.data.train_dataloader())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=opts.precision == "bf16")

    def step(batch: dict[str, Any]) -> float:
        start = time.perf_counter()
        with autocast:
            loss = task.training_loss(
                model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(opts.warmup + opts.steps):
        batch = next(batches)
        for on in (True, False) if i % 2 else (False, True):
            switch(on)
            seconds = step(batch)
            if i >= opts.warmup:
                times[on].append(seconds)
    switch(None)
    ratios = [a / b for a, b in zip(times[True], times[False], strict=True)]
    report = {
        "machine": machine_info(),
        "compare": opts.compare,
        "ftlight_s_per_step": statistics.median(times[True]),
        "other_s_per_step": statistics.median(times[False]),
        "median_ratio": statistics.median(ratios),
    }
    print(json.dumps(report["machine"]))
    print(
        f"{opts.compare}, {opts.steps} batches: ftlight's way "
        f"{report['ftlight_s_per_step']:.3f} s/step, the other "
        f"{report['other_s_per_step']:.3f} s/step, median ratio {report['median_ratio']:.3f}"
    )
    return report


def _switch(compare: str, model: Any, task: Any) -> Callable[[bool | None], None]:
    """A function turning ftlight's way on (True) or off (False) for the next steps, or
    putting back what was there before the benchmark (None)."""
    if compare == "head_loss":
        from ftlight.speed.head_loss import plain_head

        if plain_head(model) is None:
            raise SystemExit("the model's head is not a plain linear layer")

        def in_loss(on: bool | None) -> None:
            task.calls.head_in_loss = None if on is None else on

        return in_loss
    if compare == "grouped_kv":
        from ftlight.speed.attention import GQA_SWITCH

        before = os.environ.get(GQA_SWITCH)

        def grouped(on: bool | None) -> None:
            if on is not None:
                os.environ[GQA_SWITCH] = "1" if on else "0"
            elif before is None:
                os.environ.pop(GQA_SWITCH, None)
            else:
                os.environ[GQA_SWITCH] = before

        return grouped
    if compare == "recompute_activation":
        from ftlight.speed.gated import _forward as gated_forward

        patched = {
            m: f
            for m in model.modules()
            if getattr(f := m.__dict__.get("forward"), "func", None) is gated_forward
        }
        if not patched:
            raise SystemExit("the model has no gated MLPs that recompute their activation")
    else:
        from peft.tuners.lora import Linear as LoraLinear

        patched = {
            m: m.__dict__["forward"]
            for m in model.modules()
            if type(m) is LoraLinear and "forward" in m.__dict__
        }
        if not patched:
            raise SystemExit("the model has no fused LoRA layers: is strategy=lora the default?")

    def use_patched(on: bool | None) -> None:
        for module, forward in patched.items():
            if on is not False:
                module.forward = forward
            else:
                module.__dict__.pop("forward", None)

    return use_patched


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
