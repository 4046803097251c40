"""Perplexity on general text (``eval.general``): the forgetting figure before and after."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from ftlight.build import build_run
from ftlight.errors import ConfigError
from ftlight.evaluation.general import GeneralText
from ftlight.models.tiny import build_tiny_tokenizer
from ftlight.tasks import CausalLMTask, ClassificationTask
from ftlight.train import train

TEXT = "The river ran past the old mill, and the miller listened to it every night. " * 3


def test_the_builtin_sample_is_general_prose() -> None:
    general = GeneralText.from_setting("builtin")
    assert general.source == "built-in sample"
    assert 3000 < len(general.text) < 10000  # a few KB
    assert "river" in general.text and "order" not in general.text  # not support tickets


@pytest.mark.parametrize("off", [None, False, "null"])
def test_it_can_be_off(off) -> None:
    assert GeneralText.from_setting(off).text is None


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eval.general='nope.txt': no such file \(looked in"):
        GeneralText.from_setting("nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        GeneralText.from_setting(str(tmp_path / "empty.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        GeneralText.from_setting(str(tmp_path / "latin1.txt"))


def test_text_is_cut_into_labelled_windows() -> None:
    tok = build_tiny_tokenizer("llama")  # one token per byte
    rows = CausalLMTask().text_rows("abcdefghij", tok, window=4)
    assert [tok.decode(r["input_ids"]) for r in rows] == ["abcd", "efgh", "ij"]
    assert all(r["labels"] == r["input_ids"] for r in rows)
    assert ClassificationTask().text_rows("abcdefghij", tok, window=4) == []


def test_perplexity_is_the_models_own(compose, tmp_path: Path) -> None:
    """general/loss is the mean next-token loss over every window, as computed by hand."""
    (tmp_path / "general.txt").write_text(TEXT)
    run = build_run(compose(["strategy=full", "data.max_length=128"], tmp_path, "causal_lm"))
    scores = GeneralText.from_setting(str(tmp_path / "general.txt")).scores(run)
    ids = run.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    model = run.module.model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), 128):  # windows of data.max_length tokens
            window = torch.tensor([ids[start : start + 128]])
            logits = model(input_ids=window).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum")
            count += window.shape[1] - 1
    assert scores["general/loss"] == pytest.approx(float(total) / count, rel=1e-5)
    assert scores["general/perplexity"] == pytest.approx(math.exp(scores["general/loss"]))


def test_a_run_records_it_before_and_after(compose, tmp_path: Path) -> None:
    (tmp_path / "general.txt").write_text(TEXT)
    cfg = compose(
        [f"eval.general={tmp_path / 'general.txt'}", "trainer.max_steps=2", "eval.export=false"],
        tmp_path,
        "causal_lm",
    )
    result = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for phase in ("before", "after"):
        assert {"general/loss", "general/perplexity"} <= set(metrics[phase])
    assert metrics["after"]["general/loss"] != metrics["before"]["general/loss"]
    assert metrics["train"]["seconds"] > 0
    # the general text is not the task's evaluation: the validation history keeps only
    # the task's loss before and after training
    monitor = next(cb for cb in result.trainer.callbacks if hasattr(cb, "val_losses"))
    assert [loss for _, loss in monitor.val_losses] == pytest.approx(
        [metrics["before"]["loss"], metrics["after"]["loss"]]
    )


def test_encoders_skip_it_with_a_note(compose, tmp_path: Path, caplog) -> None:
    run = build_run(compose([], tmp_path, "classification"))
    general = GeneralText.from_setting("builtin")
    with caplog.at_level(logging.INFO, logger="ftlight"):
        assert general.scores(run) == {} and general.scores(run) == {}
    assert caplog.text.count("eval.general: skipped for task=classification") == 1
