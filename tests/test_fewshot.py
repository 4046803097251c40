"""Few-shot prompting of the base model (``eval.few_shot``): the prompt layout, the rows it
scores, and the ``few_shot`` block a run records."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ftlight.build import build_run
from ftlight.data.encode import IGNORE_INDEX
from ftlight.data.formats import SFTExample
from ftlight.errors import ConfigError
from ftlight.evaluation.fewshot import (
    AUTO_SHOTS,
    _find_examples,
    check_k,
    few_shot_row,
    few_shot_scores,
    with_examples,
)
from ftlight.models.tiny import build_tiny_tokenizer
from ftlight.tasks import CausalLMTask
from ftlight.train import train

SHOTS = [
    SFTExample([{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "blue"}]),
    SFTExample(
        [
            {"role": "system", "content": "Shot system, dropped."},
            {"role": "user", "content": "Grass?"},
            {"role": "assistant", "content": "green"},
        ]
    ),
]
QUESTION = SFTExample(
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Snow?"},
        {"role": "assistant", "content": "white"},
    ]
)


def _labelled(row: dict) -> list[int]:
    return [t for t in row["labels"] if t != IGNORE_INDEX]


def test_examples_come_before_the_question_as_chat_turns() -> None:
    tok = build_tiny_tokenizer("llama")  # ChatML template
    row, n = few_shot_row(CausalLMTask(), tok, QUESTION, SHOTS, limit=None)
    assert n == 2
    assert tok.decode(row["prompt_ids"]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nSky?<|im_end|>\n<|im_start|>assistant\nblue<|im_end|>\n"
        "<|im_start|>user\nGrass?<|im_end|>\n<|im_start|>assistant\ngreen<|im_end|>\n"
        "<|im_start|>user\nSnow?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert row["reference"] == "white"
    # only the question's answer is scored: the examples' answers carry no loss
    assert tok.decode(_labelled(row)) == "white<|im_end|>"
    assert row["input_ids"][: len(row["prompt_ids"])] == row["prompt_ids"]


def test_examples_come_before_the_question_in_the_plain_layout() -> None:
    tok = build_tiny_tokenizer("llama", chat_template=False)
    row, _ = few_shot_row(CausalLMTask(), tok, QUESTION, SHOTS[:1], limit=None)
    assert tok.decode(row["prompt_ids"]) == (
        "Be brief.\n\n### Instruction:\nSky?\n\n### Response:\nblue<|endoftext|>"
        "### Instruction:\nSnow?\n\n### Response:\n"
    )
    assert tok.decode(_labelled(row)) == "white<|endoftext|>"


def test_examples_that_do_not_fit_are_left_out() -> None:
    tok = build_tiny_tokenizer("llama")
    task = CausalLMTask()
    full, _ = few_shot_row(task, tok, QUESTION, SHOTS, limit=None)
    one, _ = few_shot_row(task, tok, QUESTION, SHOTS[:1], limit=None)
    row, n = few_shot_row(task, tok, QUESTION, SHOTS, limit=len(full["input_ids"]) - 1)
    assert (n, row["input_ids"]) == (1, one["input_ids"])
    _, n = few_shot_row(task, tok, QUESTION, SHOTS, limit=5)
    assert n == 0  # the question alone, even over the limit: it is scored zero-shot too


def test_system_message_stays_first() -> None:
    roles = [m["role"] for m in with_examples(QUESTION, SHOTS).messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("bad", [-1, "three", True, 2.5])
def test_k_must_be_a_whole_number(bad) -> None:
    with pytest.raises(ConfigError, match=f"eval.few_shot={bad!r}: expected a whole number"):
        check_k(bad)
    assert check_k(None) == 0 and check_k(3) == 3 and check_k("auto") == "auto"


@pytest.mark.parametrize("val_path", ["given", "held out"])
def test_rows_are_found_again_in_their_split(compose, tmp_path: Path, val_path: str) -> None:
    """Every evaluation row is found again (from its file, or held out of the training file),
    and with no examples it is exactly the row the zero-shot evaluation scores."""
    extra = [] if val_path == "given" else ["data.val_path=null", "data.val_fraction=0.25"]
    run = build_run(compose(extra, tmp_path, "causal_lm"))
    shots, examples = _find_examples(run.data, run.task, run.tokenizer, "validation", 3)
    assert len(shots) == 3 and None not in examples
    for example, row in zip(examples, run.data.encoded["validation"], strict=True):
        again, _ = few_shot_row(run.task, run.tokenizer, example, [], None)
        assert again == row
    if val_path == "given":
        return  # alpaca_val.jsonl repeats rows of alpaca_train.jsonl
    held_out = {tuple(r["input_ids"]) for r in run.data.encoded["validation"]}
    for shot in shots:  # examples come from what remains for training
        ids = run.task.encode(shot, run.tokenizer, run.data.max_length)[0]["input_ids"]
        assert tuple(ids) not in held_out


def test_a_run_records_the_few_shot_block(compose, tmp_path: Path, capsys) -> None:
    cfg = compose(
        ["eval.few_shot=2", "trainer.max_steps=1", "eval.export=false", "eval.general=null"],
        tmp_path,
        "causal_lm",
    )
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    block = metrics["few_shot"]
    assert {k: block[k] for k in ("k", "layout", "split", "rows")} == {
        "k": 2,
        "layout": "chat turns",
        "split": "validation",
        "rows": 8,  # every row of alpaca_val.jsonl
    }
    assert block["scores"].keys() == metrics["before"].keys() >= {"loss", "exact_match"}
    table = capsys.readouterr().out
    assert "before      2-shot       after" in table


def test_encoders_skip_it_with_a_note(compose, tmp_path: Path, caplog) -> None:
    run = build_run(compose([], tmp_path, "classification"))
    with caplog.at_level(logging.INFO, logger="ftlight"):
        assert few_shot_scores(run, 2, "validation") is None
    assert "eval.few_shot=2: skipped for task=classification" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ftlight"):  # the default: silently off
        assert few_shot_scores(run, "auto", "validation") is None
    assert "few_shot" not in caplog.text


def test_auto_gives_prompt_tasks_three_examples(compose, tmp_path: Path) -> None:
    run = build_run(compose([], tmp_path, "causal_lm"))
    assert run.cfg.eval.few_shot == "auto"  # the default
    block = few_shot_scores(run, "auto", "validation")
    assert block is not None and block["k"] == AUTO_SHOTS == 3
