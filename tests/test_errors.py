"""Mistakes found while Hydra composes the config, and how ``ftlight-train`` reports an error.

The matrix of every other mistake (each reported before any weights load) is
``test_bad_inputs.py``."""

from __future__ import annotations

import logging
import sys

import pytest
from hydra.errors import MissingConfigException

from ftlight.errors import ConfigError
from ftlight.strategies.registry import get_strategy_class


def test_unknown_model_config_lists_the_models(compose, tmp_path) -> None:
    with pytest.raises(MissingConfigException) as info:
        compose(["model=nope"], tmp_path)
    assert info.value.options == ["hf", "minilm-l6", "smollm2-135m", "tiny-bert", "tiny-llama"]


def test_unknown_strategy_lists_the_strategies(compose, tmp_path) -> None:
    with pytest.raises(MissingConfigException) as info:
        compose(["strategy=nope"], tmp_path)
    assert {"full", "head", "lora", "qlora"} <= set(info.value.options)  # and any other plugin
    with pytest.raises(ConfigError, match="'nope'; installed strategies: ") as err:
        get_strategy_class("nope")
    assert all(name in str(err.value) for name in ("full", "head", "lora", "qlora"))


def test_command_line_reports_errors_without_traceback(
    monkeypatch, tmp_path, fixtures, caplog, capsys
) -> None:
    """``ftlight-train`` logs the message, prints it on stderr and exits with status 2 (run in
    this process)."""
    from ftlight.cli.train import main

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
    assert capsys.readouterr().err == f"ftlight-train: {errors[0]}\n"
