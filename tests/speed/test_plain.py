"""``speed=plain`` is the reference: the speed parts change how fast a run goes, not what it
computes. On every architecture of the zoo (``ftlight.testing.zoo``), a run with every part on
(``speed=auto``) and one with every part off (``speed=plain``) give the same training losses
step by step, the same greedy answers token for token, the same metrics before and after, and
the same exported weights, in fp32 within float summation order. Dropout is set to zero: with
it, the shared opening (``speed.share_prefix``) draws one mask for all rows of a batch, a
documented difference (``ftlight.speed.prefix``).

The default suite runs a few architectures and each part switched off alone on the tiny
Llama; ``pytest -m slow tests/speed/test_plain.py`` runs the whole zoo and the real models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ftlight.speed.plan import PARTS
from ftlight.testing import NoDropout, Probe, compose_config
from ftlight.testing.zoo import CAUSAL, CLASSIFIERS, zoo_setups
from ftlight.train import train

STEPS = [
    "trainer.max_steps=5",
    "trainer.max_epochs=-1",
    "trainer.precision=32-true",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
    # AdamW divides by sqrt(v) + eps: at 1e-8 a gradient near zero (a LoRA A matrix while its
    # B is still near zero) takes a step of the learning rate whatever its rounding, so the two
    # paths' rounding would show as lr-sized weight differences; 1e-5 keeps such steps small
    "optimizer.eps=1e-5",
]
#: fp32: the parts reorder sums (a split projection, a folded adapter, a shared opening)
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-4


def _run(setup: str, speed: list[str], tmp_path: Path, extra: list[str]) -> dict[str, Any]:
    cfg = compose_config([*STEPS, *extra, *speed], tmp_path, setup)
    probe = Probe()
    train(cfg, callbacks=[NoDropout(), probe])
    return _collect(tmp_path, probe)


def _collect(tmp_path: Path, probe: Probe) -> dict[str, Any]:
    """What a finished run in ``tmp_path`` computed: losses, scores, answers, exported weights."""
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    answers = {}
    for phase in ("before", "after"):
        file = tmp_path / "predictions" / f"{phase}.jsonl"
        if file.is_file():
            answers[phase] = [
                json.loads(line).get("answer") for line in file.read_text().splitlines()
            ]
    exported = sorted(tmp_path.glob("*/*.safetensors"))
    weights = {}
    for file in exported:
        weights.update({f"{file.parent.name}/{k}": v for k, v in load_file(file).items()})
    return {
        "losses": probe.losses,
        "metrics": metrics,
        "answers": answers,
        "weights": weights,
        "speed": metrics["speed"],
    }


def _same(auto: dict[str, Any], plain: dict[str, Any], weight_atol: float = WEIGHT_ATOL) -> None:
    assert len(auto["losses"]) == len(plain["losses"]) > 0
    torch.testing.assert_close(
        torch.tensor(auto["losses"]), torch.tensor(plain["losses"]), rtol=LOSS_RTOL, atol=1e-6
    )
    assert auto["answers"] == plain["answers"], "greedy answers differ"
    for phase in ("before", "after"):
        a, p = auto["metrics"][phase], plain["metrics"][phase]
        assert set(a) == set(p)
        for key in a:
            if key.endswith(("loss", "perplexity")):
                assert a[key] == pytest.approx(p[key], rel=LOSS_RTOL), (phase, key)
            elif not key.startswith(("generated", "tokens_per", "seconds")):
                assert a[key] == pytest.approx(p[key], abs=1e-6), (phase, key)
    assert set(auto["weights"]) == set(plain["weights"]) != set()
    for key, value in auto["weights"].items():
        torch.testing.assert_close(
            value.float(),
            plain["weights"][key].float(),
            atol=weight_atol,
            rtol=1e-3,
            msg=lambda m, k=key: f"{k}: {m}",
        )


def _compare(name: str, strategy: str, tmp_path: Path) -> tuple[dict, dict]:
    (setup,) = zoo_setups([name])
    extra = [f"strategy={strategy}"]
    auto = _run(setup, ["speed=auto"], tmp_path / "auto", extra)
    plain = _run(setup, ["speed=plain"], tmp_path / "plain", extra)
    _same(auto, plain)
    # the kernel caches' capacity is the process's, set by the auto run before this one
    parts = {k: v for k, v in plain["speed"].items() if k != "kernel_cache"}
    assert set(parts.values()) <= {"off", "0 gated MLPs", "0 linears", "n/a"} | {
        "torch's choice",
        "model.generate",
    }
    return auto, plain


FAST = [("llama", "lora"), ("gpt2", "full"), ("qwen2-classifier", "lora")]


@pytest.mark.parametrize(("name", "strategy"), FAST, ids=[f"{n}-{s}" for n, s in FAST])
def test_auto_and_plain_agree(name: str, strategy: str, tmp_path: Path) -> None:
    auto, _ = _compare(name, strategy, tmp_path)
    if name == "llama":  # the speed parts did run on this one
        assert auto["speed"]["sliced_loss"] == auto["speed"]["head_loss"] == "on"
        assert auto["speed"]["decode"] == "cached greedy"
        assert auto["speed"]["lora_fused"] == auto["speed"]["lora_fold"] == "on"


@pytest.mark.parametrize("part", [p for p in PARTS if p != "malloc"])
def test_each_part_switches_off_alone(part: str, tmp_path: Path) -> None:
    """``speed.<part>=false`` alone: the run is the plain run's, and the part reports off."""
    (setup,) = zoo_setups(["llama"])
    extra = ["strategy=lora"]
    plain = _run(setup, ["speed=plain"], tmp_path / "plain", extra)
    alone = _run(setup, [f"speed.{part}=false"], tmp_path / "alone", extra)
    _same(alone, plain)
    shown = {"share_prefix": "share_prefix", "shared_opening": "shared_opening_in_eval"}
    if part in ("frozen_bf16", "recompute_activation"):
        return  # counts of what the part touched (none in fp32 / on this model)
    state = alone["speed"][shown.get(part, part)]
    assert state in ("off", "model.generate"), (part, state)


MATRIX = [(n, "lora") for n in CAUSAL + CLASSIFIERS] + [(n, "full") for n in CAUSAL]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strategy"), MATRIX, ids=[f"{n}-{s}" for n, s in MATRIX])
def test_zoo_auto_and_plain_agree(name: str, strategy: str, tmp_path: Path) -> None:
    _compare(name, strategy, tmp_path)


REAL = {
    "smollm2-lora": [
        "strategy=lora",
        "data.train_size=32",
        "data.val_size=8",
        "trainer.max_steps=6",
        "eval.few_shot=0",
    ],
    "minilm-full": [
        "experiment=demo-classify",
        "strategy=full",
        "data.train_size=64",
        "data.val_size=32",
        "trainer.max_steps=6",
        "optimizer.lr=1e-4",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_models_auto_and_plain_agree(name: str, tmp_path: Path) -> None:
    """The same comparison on SmolLM2-135M (LoRA, greedy answers scored) and MiniLM-L6 (full
    fine-tuning as a classifier), fp32."""
    from hydra import compose, initialize_config_dir

    from ftlight.config import CONF_DIR

    runs = {}
    for speed in ("auto", "plain"):
        folder = tmp_path / speed
        overrides = [
            *REAL[name],
            "trainer.precision=32-true",
            "optimizer.eps=1e-5",
            "logger=none",
            "callbacks.progress=null",
            "eval.plots=false",
            f"speed={speed}",
            f"run_dir={folder}",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        probe = Probe()
        train(cfg, callbacks=[NoDropout(), probe])
        runs[speed] = _collect(folder, probe)
    # a real model's gradients are summed over more terms: a weight's six AdamW steps (of 2e-3
    # for LoRA) may round apart by a few percent of one step
    _same(runs["auto"], runs["plain"], weight_atol=5e-4)
