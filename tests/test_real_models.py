"""The built-in real models end to end (fetched from PyPI once, then cached): short runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import ftlight.train  # noqa: F401  (registers the search path and resolvers)
from ftlight.config import CONF_DIR
from ftlight.train import train

pytestmark = pytest.mark.slow

# the 3-shot baseline is a separate measurement (tests/test_fewshot.py), not what these check
QUIET = ["callbacks.progress=null", "logger=none", "eval.plots=false", "eval.few_shot=0"]


def _cfg(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*QUIET, *overrides, f"run_dir={tmp_path}"])


def test_smollm2_lora_demo_pipeline(tmp_path: Path) -> None:
    """The default job, shortened: SmolLM2 + LoRA on demo tickets, bf16, a few steps."""
    cfg = _cfg(
        tmp_path,
        [
            "data.train_size=48",
            "data.val_size=8",
            "data.batch_size=4",
            "trainer.max_steps=12",
            "task.max_new_tokens=48",
            "trainer.precision=bf16-mixed",
        ],
    )
    result = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # LoRA r=8 on the 7 linear layers of SmolLM2's 30 blocks (hidden 576, MLP 1536, 3 kv heads
    # of 64): q,o 8*(576+576); k,v 8*(576+192); gate,up,down 8*(576+1536) -> 81,408 per block
    assert metrics["params"]["trainable"] == 30 * 81_408
    assert metrics["params"]["total"] == 134_515_008 + 30 * 81_408
    assert metrics["after"]["loss"] < metrics["before"]["loss"]
    assert {"json/valid_json", "json/exact_match", "exact_match"} <= set(metrics["after"])
    assert metrics["throughput"]["real_tokens_per_s"] > 0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    base = AutoModelForCausalLM.from_pretrained(cfg_model_dir())
    adapter = PeftModel.from_pretrained(base, tmp_path / "adapter")
    ids = result.tokenizer("Hello, my order #A12345 never arrived", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, rtol=1e-4, atol=1e-4)


def cfg_model_dir() -> str:
    """The cached SmolLM2 folder (fetched by the run above)."""
    from ftlight.models.sources import PyPIModel

    return PyPIModel("smollm2-135m").resolve()


def test_minilm_classification_learns_categories(tmp_path: Path) -> None:
    """experiment=demo-classify, shortened: accuracy rises well above the untrained head."""
    cfg = _cfg(
        tmp_path,
        [
            "experiment=demo-classify",
            "data.train_size=240",
            "data.val_size=60",
            "trainer.max_epochs=3",
        ],
    )
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # all-MiniLM-L6-v2: 22,713,216 encoder parameters + a 6-way head (384*6+6) after LoRA
    assert metrics["params"]["total"] > 22_713_216
    assert metrics["after"]["accuracy"] > metrics["before"]["accuracy"] + 0.3
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert sorted(model.config.label2id) == sorted(
        ["account", "billing", "product_question", "returns", "shipping", "technical"]
    )
