"""ftlight-generate and ftlight-eval on a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import ftlight.train  # noqa: F401  (registers the search path and resolvers)
from ftlight.cli.eval import evaluate_model
from ftlight.cli.generate import Generator, main
from ftlight.config import CONF_DIR
from ftlight.errors import ModelError
from ftlight.train import train

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DATA = [
    "data=local",
    f"data.train_path={FIXTURES / 'alpaca_train.jsonl'}",
    f"data.val_path={FIXTURES / 'alpaca_val.jsonl'}",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    overrides = [
        "model=tiny-llama",
        *DATA,
        "strategy=lora",
        "trainer.max_steps=4",
        "trainer.max_epochs=-1",
        "trainer.precision=32-true",
        "task.max_new_tokens=6",
        "callbacks.progress=null",
        "logger=none",
        "eval.plots=false",
        f"run_dir={out}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        train(compose("config", overrides=overrides))
    return out


def test_generate_uses_the_shared_instruction(run_dir: Path, capsys) -> None:
    gen = Generator(run_dir, device="cpu")
    # every fixture row shares one instruction: the export records it for bare inputs
    assert gen.meta["instruction"] == "Name the colour in the sentence."
    assert gen.with_instruction("The cat is red.") == (
        "Name the colour in the sentence.\n\nThe cat is red."
    )
    reply = gen.answer([{"role": "user", "content": "The cat is red."}], max_new_tokens=4)
    assert isinstance(reply, str)
    main([str(run_dir), "The dog is blue.", "--max-new-tokens", "3"])
    assert capsys.readouterr().out.endswith("\n")


def test_generate_refuses_a_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="holds no exported model"):
        Generator(tmp_path)


def test_generate_refuses_a_classifier(tmp_path: Path) -> None:
    """A folder holding a model that does not generate text (here a tiny BERT classifier)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8, num_labels=2,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="BertForSequenceClassification, which does not gener"):
        Generator(tmp_path, device="cpu")


def test_eval_reproduces_the_after_metrics(run_dir: Path) -> None:
    after = json.loads((run_dir / "metrics.json").read_text())["after"]
    metrics = evaluate_model(
        str(run_dir),
        [*DATA, "trainer.precision=32-true", "task.max_new_tokens=6", "callbacks.progress=null"],
    )
    assert metrics["loss"] == pytest.approx(after["loss"], rel=1e-5)
    assert metrics["exact_match"] == after["exact_match"]
