"""Exports: ``model/`` loads with ``transformers`` and computes what the trained model computed;
``adapter/`` loads with peft over the base model and computes the same."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

STRATEGIES = ("full", "head", "lora", "qlora")
TASKS = ("causal_lm", "classification")
MATRIX = [(s, t) for s in STRATEGIES for t in TASKS]
AUTO = {"causal_lm": AutoModelForCausalLM, "classification": AutoModelForSequenceClassification}
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits.float()


def _load(run, folder: str) -> torch.nn.Module:
    return AUTO[run.task].from_pretrained(run.run_dir / folder)


@pytest.mark.parametrize(("strategy", "task"), MATRIX)
def test_model_folder_gives_the_trained_logits(trained, strategy: str, task: str) -> None:
    """Same input, same logits as the in-memory model at the end of training.

    QLoRA runs here compute in float32, so the merged float model (exactly dequantised NF4
    weights plus the adapters' delta) matches to float rounding too.
    """
    run = trained(strategy, task)
    model = _load(run, "model")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    torch.testing.assert_close(_logits(model, run.probe.inputs), run.probe.logits)
    if task == "causal_lm":  # the training changed what the model computes
        base = AUTO[task].from_pretrained(_source_path(run))
        assert not torch.allclose(_logits(base, run.probe.inputs), run.probe.logits, atol=1e-3)


def _source_path(run) -> str:
    """The tiny base model folder the run started from."""
    from hydra.utils import instantiate

    return instantiate(run.cfg.model).resolve()


def _head_kwargs(run) -> dict:
    """``num_labels`` and the label maps, for loading a classification base."""
    if run.task != "classification":
        return {}
    return run.result.module.task.model_kwargs(run.result.data.labels, run.result.tokenizer)


@pytest.mark.parametrize(("strategy", "task"), [(s, t) for s, t in MATRIX if s == "lora"])
def test_lora_adapter_over_base_equals_model_folder(trained, strategy: str, task: str) -> None:
    run = trained(strategy, task)
    adapter = run.run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == _source_path(run)
    assert config["r"] == 8
    base = AUTO[task].from_pretrained(config["base_model_name_or_path"], **_head_kwargs(run))
    with_adapter = PeftModel.from_pretrained(base, adapter)
    inputs = run.probe.inputs
    torch.testing.assert_close(_logits(with_adapter, inputs), _logits(_load(run, "model"), inputs))
    torch.testing.assert_close(_logits(with_adapter, inputs), run.probe.logits)


@pytest.mark.parametrize("task", TASKS)
def test_qlora_adapter_over_4bit_base_equals_trained_model(trained, task: str) -> None:
    """The adapter was trained over NF4 weights: over the same 4-bit base it reproduces the
    run's logits exactly."""
    import bitsandbytes as bnb

    run = trained("qlora", task)
    strategy = run.result.module.strategy
    kwargs = {**strategy.load_kwargs(run.result.module.task), **_head_kwargs(run)}
    base = AUTO[task].from_pretrained(_source_path(run), **kwargs)
    with_adapter = PeftModel.from_pretrained(base, run.run_dir / "adapter")
    strategy.prepare_for_eval(with_adapter)  # as the run does before any eval-mode forward
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in with_adapter.modules())
    torch.testing.assert_close(_logits(with_adapter, run.probe.inputs), run.probe.logits)


@pytest.mark.parametrize("task", TASKS)
def test_qlora_model_folder_is_plain_float(trained, task: str) -> None:
    import bitsandbytes as bnb

    run = trained("qlora", task)
    config = json.loads((run.run_dir / "model" / "config.json").read_text())
    assert "quantization_config" not in config
    model = _load(run, "model")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert getattr(model, "hf_quantizer", None) is None
    assert not list((run.run_dir / "model").glob("*.bin"))  # safetensors only


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_classification_labels_in_export(trained, strategy: str) -> None:
    run = trained(strategy, "classification")
    with open(FIXTURES / "reviews_train.csv", newline="") as f:
        names = sorted({row["label"] for row in csv.DictReader(f)})
    assert names == ["negative", "neutral", "positive"]
    assert run.result.data.labels.names == names
    config = AutoConfig.from_pretrained(run.run_dir / "model")
    assert config.id2label == dict(enumerate(names))
    assert config.label2id == {name: i for i, name in enumerate(names)}
    assert config.num_labels == 3
    meta = json.loads((run.run_dir / "model" / "ftlight.json").read_text())
    assert meta["labels"] == names


@pytest.mark.parametrize(("strategy", "task"), MATRIX)
def test_export_holds_tokenizer_and_metadata(trained, strategy: str, task: str) -> None:
    run = trained(strategy, task)
    folder = run.run_dir / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "The cat is red."
    assert tokenizer(text)["input_ids"] == run.result.tokenizer(text)["input_ids"]
    meta = json.loads((folder / "ftlight.json").read_text())
    assert (meta["strategy"], meta["task"]) == (strategy, task)
    assert meta["params"] == json.loads((run.run_dir / "metrics.json").read_text())["params"]
    assert (folder / "README.md").is_file()


def test_head_export_keeps_the_lm_head_untied(trained) -> None:
    """The head strategy trained a copy of the tied embedding; the export must not re-tie it."""
    run = trained("head", "causal_lm")
    model = _load(run, "model")
    assert model.config.get_text_config().tie_word_embeddings is False
    head, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head.data_ptr() != embedding.data_ptr()
    assert not torch.equal(head, embedding)
    torch.testing.assert_close(embedding, run.probe.start["model.embed_tokens.weight"])


def test_a_bf16_mixed_run_exports_its_full_precision_base(tmp_path: Path) -> None:
    """Under bf16-mixed the frozen weights train in bf16 (``speed.frozen_bf16``); the export
    reloads the base in float32 in the trained model's place (the run's module then holds what
    was exported, never both at once): ``model/`` is the original base plus the adapters'
    delta, as peft merges them over the base folder."""
    from ftlight.testing import QUICK_FIT, compose_config
    from ftlight.train import train

    cfg = compose_config(
        ["strategy=lora", *QUICK_FIT, "trainer.max_steps=2", "trainer.precision=bf16-mixed"],
        tmp_path,
        "tiny-llama",
    )
    result = train(cfg)
    assert result.module.installed.frozen_cast > 0  # the bf16 path ran
    held = dict(result.module.model.named_parameters())
    assert {p.dtype for p in held.values()} == {torch.float32}  # the reloaded model, merged
    from hydra.utils import instantiate

    base = AutoModelForCausalLM.from_pretrained(instantiate(cfg.model).resolve())
    merged = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    want = merged.state_dict()
    assert exported.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(exported[name], value, rtol=0, atol=0, msg=name)
    lora = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert lora["r"] == 8
