"""Every strategy learns on the real PyPI models: the score after training beats the untrained
one on the same held-out split (short runs; tiny random models only prove the wiring)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ftlight.config import CONF_DIR, register
from ftlight.errors import ConfigError
from ftlight.train import train

pytestmark = pytest.mark.slow
register()

# the 3-shot baseline is a separate measurement (tests/test_fewshot.py), not what these check
QUIET = [
    "callbacks.progress=null",
    "logger=none",
    "eval.plots=false",
    "eval.export=false",
    "eval.few_shot=0",
]
# Full fine-tuning moves every weight of a pretrained body: a LoRA / head rate would wreck it.
FULL_RATE = {"full": "optimizer.lr=1e-4", "llrd": "optimizer.lr=2e-4"}


def _run(tmp_path: Path, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*QUIET, *overrides, f"run_dir={tmp_path}"])
    train(cfg)
    return json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize("strategy", ["full", "head", "lora", "qlora", "bitfit", "llrd"])
def test_minilm_classifier_learns_the_categories(tmp_path: Path, strategy: str) -> None:
    """experiment=demo-classify, shortened (240 tickets, 3 epochs of 15 steps), per strategy."""
    metrics = _run(
        tmp_path,
        [
            "experiment=demo-classify",
            f"strategy={strategy}",
            "data.train_size=240",
            "data.val_size=60",
            "trainer.max_epochs=3",
            *([FULL_RATE[strategy]] if strategy in FULL_RATE else []),
        ],
    )
    before, after = metrics["before"], metrics["after"]
    assert after["accuracy"] > before["accuracy"] + 0.3, (before, after)
    assert after["f1_macro"] > before["f1_macro"] + 0.3, (before, after)


@pytest.mark.parametrize("strategy", ["full", "head", "qlora", "llrd"])
def test_smollm2_learns_the_ticket_records(tmp_path: Path, strategy: str) -> None:
    """The default job, shortened (64 tickets, 16 steps of 4, no generation), per strategy: the
    answers' token loss and next-token accuracy on held-out tickets beat the untrained model's.
    (LoRA, the default, is covered with generation by test_real_models.py.)"""
    metrics = _run(
        tmp_path,
        [
            f"strategy={strategy}",
            "data.train_size=64",
            "data.val_size=8",
            "trainer.max_steps=16",
            "task.generate=false",
            *([FULL_RATE[strategy]] if strategy in FULL_RATE else []),
        ],
    )
    before, after = metrics["before"], metrics["after"]
    assert after["loss"] < 0.7 * before["loss"], (before, after)
    assert after["token_accuracy"] > before["token_accuracy"] + 0.05, (before, after)


def test_bitfit_refuses_smollm2_which_has_no_biases(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="strategy=bitfit .*LlamaForCausalLM has none"):
        _run(tmp_path, ["strategy=bitfit", "data.train_size=8", "data.val_size=4"])
