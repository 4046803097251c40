"""The log line naming which speed parts a run's model took, once, at its first step."""

from __future__ import annotations

import logging

import pytest

from ftlight import testing
from ftlight.speed import kernel_cache
from ftlight.speed.report import speed_line, speed_parts


@pytest.mark.parametrize(
    ("setup", "model", "decode"),
    [("tiny-llama", "LlamaForCausalLM", "cached greedy"), ("tiny-bert", "BertFor", "n/a")],
)
def test_the_line_names_the_model_and_each_part(
    setup, model, decode, tmp_path, caplog, monkeypatch
) -> None:
    for name in kernel_cache.VARIABLES:  # as a fresh process has them
        monkeypatch.delenv(name, raising=False)
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
    assert parts["kernel_cache"] == "256 kernels"  # speed.kernel_cache, set by the run
    assert set(parts) == {
        "sliced_loss",
        "head_loss",
        "recompute_activation",
        "frozen_bf16",
        "grouped_kv",
        "attention_kernel",
        "kernel_cache",
        "share_prefix",
        "shared_opening_in_eval",
        "decode",
        "lora_fold",
        "lora_fused",
    }
    assert parts["lora_fold"] == parts["lora_fused"] == "on"
    if setup == "tiny-bert":  # causal-LM parts do not apply to a classifier
        assert parts["share_prefix"] == parts["shared_opening_in_eval"] == "n/a"


def test_plain_says_every_part_is_off(tmp_path, caplog, monkeypatch) -> None:
    """``speed=plain``: the line shows each part off, whatever the model could take."""
    for name in kernel_cache.VARIABLES:  # as a fresh process has them
        monkeypatch.delenv(name, raising=False)
    cfg = testing.compose_config(
        ["strategy=lora", "speed=plain", *testing.QUICK_FIT, "trainer.max_steps=2"],
        tmp_path,
        "tiny-llama",
    )
    run, _ = testing.fit(cfg)
    parts = speed_parts(run.module)
    assert parts == {
        "sliced_loss": "off",
        "head_loss": "off",
        "recompute_activation": "0 gated MLPs",
        "frozen_bf16": "0 linears",
        "grouped_kv": "off",
        "attention_kernel": "torch's choice",
        "kernel_cache": "1024 kernels (the libraries' default)",
        "share_prefix": "off",
        "shared_opening_in_eval": "off",
        "decode": "model.generate",
        "lora_fold": "off",
        "lora_fused": "off",
    }
