"""The log line naming which speed parts a run's model took, once, at its first step."""

from __future__ import annotations

import logging

import pytest

from ftlight import testing
from ftlight.speed.report import speed_line, speed_parts


@pytest.mark.parametrize(
    ("setup", "model", "decode"),
    [("tiny-llama", "LlamaForCausalLM", "cached greedy"), ("tiny-bert", "BertFor", "n/a")],
)
def test_the_line_names_the_model_and_each_part(setup, model, decode, tmp_path, caplog) -> None:
    cfg = testing.compose_config(
        ["strategy=lora", *testing.QUICK_FIT, "trainer.max_steps=2"], tmp_path, setup
    )
    with caplog.at_level(logging.INFO, logger="ftlight"):
        run, _ = testing.fit(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("speed parts")]
    assert len(lines) == 1, "once a run, not once a step"
    assert lines[0] == speed_line(run.module)
    assert f"speed parts on {model}" in lines[0]  # the base model's class, not peft's wrapper
    parts = speed_parts(run.module)
    assert parts["decode"] == decode
    assert set(parts) == {
        "sliced_loss",
        "head_loss",
        "recompute_activation",
        "frozen_bf16",
        "attention_kernel",
        "share_prefix",
        "shared_opening_in_eval",
        "decode",
    }
    if setup == "tiny-bert":  # causal-LM parts do not apply to a classifier
        assert parts["share_prefix"] == parts["shared_opening_in_eval"] == "n/a"
