"""Every pass stays within the model's position limit: the zoo's learned-position families
(GPT-2, OPT, GPTBigCode: a table of 128 positions) run the default evaluation (generation with
``task.max_new_tokens=auto``, three-shot prompts, general-text windows) with the default
``data.max_length`` without indexing past the table; what cannot fit is refused before any
weights load, naming the limit and the setting to change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftlight.testing.zoo import LEARNED_LIMIT, zoo_overrides

LEARNED_CAUSAL = ("gpt2", "opt", "gpt-bigcode")
QUICK = [
    "strategy=lora",
    "trainer.max_steps=2",
    "trainer.max_epochs=-1",
    "trainer.precision=32-true",
    "logger=none",
    "eval.plots=false",
    "eval.export=false",
]


def _train(tmp_path: Path, name: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    cache = tmp_path / "cache"
    command = [
        *(sys.executable, "-m", "ftlight"),
        *zoo_overrides(name, cache / "zoo"),
        *QUICK,
        f"run_dir={tmp_path / 'run'}",
        *overrides,
    ]
    env = {"FTLIGHT_CACHE": str(cache), "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _long_rows(path: Path) -> Path:
    """Rows whose prompts alone are past the table (one token per byte)."""
    row = {"instruction": "Repeat the colour. " * 12, "input": "red " * 20, "output": "red"}
    path.write_text((json.dumps(row) + "\n") * 4)
    return path


@pytest.mark.parametrize("name", LEARNED_CAUSAL)
def test_the_default_evaluation_fits_a_learned_table(name: str, tmp_path: Path) -> None:
    """Generation budget cut to fit, few-shot prompts and general-text windows sized by the
    limit; the run finishes and scores every pass."""
    done = _train(
        tmp_path,
        name,
        "task.max_new_tokens=auto",
        "eval.few_shot=3",
        "eval.general=builtin",
        "data.max_length=1024",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IndexError" not in done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["before"] and metrics["after"] and metrics["few_shot"]
    for phase in ("before", "after"):  # perplexity on general text, in windows that fit
        assert metrics[phase]["general/perplexity"] > 0


def test_rows_past_the_table_are_refused_before_loading(tmp_path: Path) -> None:
    rows = _long_rows(tmp_path / "long.jsonl")
    done = _train(tmp_path, "gpt2", f"data.train_path={rows}", "data.max_length=1024")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"longer than the model's {LEARNED_LIMIT} positions" in done.stderr
    assert f"data.max_length={LEARNED_LIMIT}" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_fixed_generation_budget_past_the_table_is_refused(tmp_path: Path) -> None:
    done = _train(tmp_path, "gpt2", "task.max_new_tokens=500")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"generation would pass the model's {LEARNED_LIMIT} positions" in done.stderr
    assert "task.max_new_tokens=" in done.stderr and "(or auto, which fits it)" in done.stderr
