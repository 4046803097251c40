"""Every strategy on every architecture of the zoo (``ftlight.testing.zoo``): the run trains,
evaluates before and after, exports, and the export reloads with plain ``transformers``
(``model/``) or ``peft`` over the base (``adapter/``) and computes the trained model's logits.
Where a strategy cannot apply, the refusal is a message before any weights load.

The default suite runs a few pairs (learned positions, an encoder, an LLM as a classifier);
``pytest -m slow tests/test_zoo.py`` runs the whole matrix.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from ftlight.errors import ConfigError
from ftlight.testing import compose_config, train_with_probe
from ftlight.testing.conformance import assert_export_matches
from ftlight.testing.helpers import TrainedRun
from ftlight.testing.zoo import ZOO, zoo_setups

STRATEGIES = ("full", "head", "lora", "qlora", "bitfit", "llrd")
STEPS = [
    "trainer.max_steps=4",
    "trainer.max_epochs=-1",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
]
#: per strategy: extra settings, and the export's tolerance against the trained logits
EXTRA = {"qlora": ["strategy.compute_dtype=float32"]}
ATOL = {"qlora": 1e-4}

#: the pairs refused before any weights load, and what the refusal says
REFUSED = {
    **{
        (name, "bitfit"): "strategy=bitfit trains bias terms"
        for name in (
            "llama",
            "mistral",
            "qwen3",
            "gemma2",
            "gemma3",
            "phi3",
            "olmo2",
            "granite",
            "smollm3",
            "modernbert",
            "llama-classifier",
        )
    },
    ("falcon", "qlora"): "strategy=qlora",
}

#: learned positions and Conv1D layers, the two encoders qlora once crashed on, an LLM as a
#: classifier, and two refusals
FAST = [
    ("gpt2", "qlora"),
    ("opt", "lora"),
    ("deberta-v2", "qlora"),
    ("modernbert", "qlora"),
    ("qwen2-classifier", "lora"),
    ("falcon", "qlora"),
    ("llama", "bitfit"),
]
MATRIX = [(name, strategy) for name in ZOO for strategy in STRATEGIES]


def _run(name: str, strategy: str, tmp_path: Path) -> None:
    (setup,) = zoo_setups([name])
    overrides = [f"strategy={strategy}", *EXTRA.get(strategy, []), *STEPS]
    cfg = compose_config(overrides, tmp_path, setup)
    if (name, strategy) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[name, strategy]):
            train_with_probe(cfg)
        assert not (tmp_path / "checkpoints").exists()
        assert not (tmp_path / "model").exists()
        return
    result, probe = train_with_probe(cfg)
    run = TrainedRun(strategy, name, cfg, result, probe)
    assert probe.trainable, "nothing trained"
    moved = {n for n in probe.start if not torch.equal(probe.start[n], probe.end[n])}
    assert moved == probe.trainable, "frozen weights moved, or trainable ones did not"
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert set(metrics["before"]) == set(metrics["after"]) != set()
    assert_export_matches(run, ATOL.get(strategy, 1e-5))


def test_every_refusal_names_a_pair_of_the_matrix() -> None:
    assert set(REFUSED) <= set(MATRIX)
    assert len(ZOO) >= 20


@pytest.mark.parametrize(("name", "strategy"), FAST, ids=[f"{n}-{s}" for n, s in FAST])
def test_zoo_subset(name: str, strategy: str, tmp_path: Path) -> None:
    _run(name, strategy, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strategy"), MATRIX, ids=[f"{n}-{s}" for n, s in MATRIX])
def test_zoo_matrix(name: str, strategy: str, tmp_path: Path) -> None:
    start = time.perf_counter()
    _run(name, strategy, tmp_path)
    print(f"{name} {strategy}: {time.perf_counter() - start:.1f} s")
