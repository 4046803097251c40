"""Data that could mislead a run, through the real command line: each is refused with the row
and the fix (exit status 2, no traceback), or trained on and reported in the log and
``metrics.json``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftlight.testing import BASE, QUICK_RUN, SETUPS

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
CALL = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}


def _chat(*turns: dict) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "Weather?"}, *turns]}) + "\n"


REPLY = {"role": "assistant", "content": "It rains."}
TOOL_ROW = _chat(
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "rain"},
    REPLY,
)
HALF_ROW = _chat({"role": "assistant", "content": "Let me see.", "weight": 0.5}, REPLY)
# an unquoted export: the quote opening row 3's text runs on over the next rows
STRAY_QUOTE = 'text\tlabel\nlovely\tpositive\n"great, he said\tpositive\nawful\tnegative\n'
STRAY_QUOTE += 'so "bad"\tnegative\nfine\tpositive\n'

# name -> (set-up, overrides, files, what stderr must say)
CASES = {
    "stray-quote": (
        "tiny-bert",
        ["data.train_path={tmp}/export.tsv"],
        {"export.tsv": STRAY_QUOTE},
        [
            "export.tsv row 2 (line 3): a field starts with a quote",
            "ran on over 3 lines (3 to 5)",
            'double the quote ("""...")',
        ],
    ),
    "label-names-repeat": (
        "tiny-bert",
        ["data.label_names=[negative,positive,negative]"],
        {},
        ["repeats 'negative' (items 1 and 3)", "Remove the repeat"],
    ),
    "tool-call-without-tool-support": (
        "tiny-llama",
        ["data.format=chat", "data.train_path={tmp}/chat.jsonl", "data.val_path=null"],
        {"chat.jsonl": TOOL_ROW * 4},
        ["chat.jsonl row ", ": message 2 is a tool call", "has no tool-call support"],
    ),
    "turn-weight-half": (
        "tiny-llama",
        ["data.format=chat", "data.train_path={tmp}/chat.jsonl", "data.val_path=null"],
        {"chat.jsonl": HALF_ROW * 4},
        ["chat.jsonl row 1: message 2 has weight 0.5", "Set it to 0 or 1"],
    ),
    "looping-template": (
        "tiny-llama",
        ["model=hf", "model.name_or_path={looping}"],
        {},
        ["the chat template of '", "did not finish rendering", "within the limit of 5 s"],
    ),
}


def _quick(setup: str) -> list[str]:
    """``QUICK_RUN`` for the set-up (a classifier generates nothing, so has no token limit)."""
    return [o for o in QUICK_RUN if setup != "tiny-bert" or not o.startswith("task.")]


def _env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTLIGHT_CACHE": str(cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _run(module: str, args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def looping(tiny_chat_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat Llama with a chat template that loops 10^10 times before its text."""
    folder = tmp_path_factory.mktemp("looping") / "model"
    shutil.copytree(tiny_chat_llama, folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(LOOP + jinja.read_text())
    else:
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["chat_template"] = LOOP + config["chat_template"]
        config_path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", list(CASES))
def test_misleading_data_is_refused_on_the_command_line(
    name: str, tmp_path: Path, ftlight_cache: Path, looping: Path
) -> None:
    setup, overrides, files, says = CASES[name]
    for file, text in files.items():
        (tmp_path / file).write_text(text, encoding="utf-8")
    values = {"tmp": str(tmp_path), "looping": str(looping)}
    args = [*BASE, *SETUPS[setup], *_quick(setup), f"hydra.run.dir={tmp_path / 'run'}"]
    args += [o.format(**values) for o in overrides]
    proc = _run("ftlight", args, tmp_path, ftlight_cache)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    for text in says:
        assert text in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_generate_with_a_looping_template_stops_at_the_limit(
    looping: Path, tmp_path: Path, ftlight_cache: Path
) -> None:
    proc = _run("ftlight.cli.generate", [str(looping), "Hello"], tmp_path, ftlight_cache)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"the chat template of '{looping}' did not finish rendering" in proc.stderr
    assert "within the limit of 5 s" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_copies_and_label_spellings_are_reported_in_the_log_and_metrics(
    tmp_path: Path, ftlight_cache: Path
) -> None:
    train = "text\tlabel\nlovely\tpositive\nawful\tnegative\ngreat\tpositive\u200b\n"
    train += "bad\tnegative\nnice\tpositive\n"
    val = "text\tlabel\nawful\tnegative\nfresh\tpositive\nnice\tpositive\n"
    (tmp_path / "train.tsv").write_text(train, encoding="utf-8")
    (tmp_path / "val.tsv").write_text(val, encoding="utf-8")
    run = tmp_path / "run"
    args = [*BASE, *SETUPS["tiny-bert"], *_quick("tiny-bert"), f"hydra.run.dir={run}"]
    args += [f"data.train_path={tmp_path / 'train.tsv'}", f"data.val_path={tmp_path / 'val.tsv'}"]
    proc = _run("ftlight", args, tmp_path, ftlight_cache)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert (
        "labels 'positive' (train.tsv row 1), 'positive\\u200b' (train.tsv row 3) are one "
        "class, 'positive'"
    ) in log
    assert "2 of 3 validation rows are copies of training rows" in log
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data_overlap"] == {
        "count": 2,
        "validation_rows": 3,
        "first": ["val.tsv row 1 = train.tsv row 2", "val.tsv row 3 = train.tsv row 5"],
    }
