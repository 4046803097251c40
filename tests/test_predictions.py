"""Each evaluation keeps its answers: ``predictions/<phase>.jsonl``, the same answers from
``ftlight-train``, ``ftlight-eval``, ``ftlight-generate`` and ``model.generate``; and
``ftlight-compare --diff`` lists the rows where two runs differ."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlight.errors import FtlightError
from ftlight.evaluation import predictions
from ftlight.testing import BASE, DATA, QUICK_RUN

VAL = DATA / "alpaca_val.jsonl"
#: decoding settings the model ships in its generation_config, strong enough to show
SETTINGS = {"repetition_penalty": 2.0, "no_repeat_ngram_size": 2}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_chat_llama, tmp_path_factory, ftlight_cache) -> Path:
    """``python -m ftlight`` on a model whose generation_config sets a repetition
    penalty and a no-repeat n-gram size, with a few-shot baseline and the export."""
    root = tmp_path_factory.mktemp("predictions")
    model_dir = root / "model"
    shutil.copytree(tiny_chat_llama, model_dir)
    config_file = model_dir / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config_file.write_text(json.dumps({**config, **SETTINGS}))
    run = root / "run"
    args = [*BASE, *QUICK_RUN, "model=hf", f"model.name_or_path={model_dir}", "task=causal_lm"]
    args += ["data=local", f"data.train_path={DATA / 'alpaca_train.jsonl'}"]
    args += [f"data.val_path={VAL}", "task.max_new_tokens=8", "eval.export=true"]
    args += ["eval.few_shot=1", "strategy=full", "optimizer.lr=1e-2", f"hydra.run.dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTLIGHT_CACHE": str(ftlight_cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ftlight", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_every_phase_writes_one_row_per_evaluated_example(trained) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    data = [json.loads(line) for line in VAL.read_text().splitlines()]
    for phase in ("before", "few_shot", "after"):
        rows = _rows(trained / "predictions" / f"{phase}.jsonl")
        assert [r["row"] for r in rows] == list(range(1, len(data) + 1))
        for row, example in zip(rows, data, strict=True):
            assert set(row) == {"row", "prompt", "reference", "answer", "scores"}
            assert row["reference"] == example["output"]
            # the prompt as the model saw it: the chat template's markers included
            assert row["prompt"].startswith("<|im_start|>")
            assert row["prompt"].endswith(f"{example['input']}<|im_end|>\n<|im_start|>assistant\n")
            assert set(row["scores"]) == {"loss", "token_accuracy", "exact_match"}
            assert row["scores"]["exact_match"] == float(row["answer"] == example["output"])
        scores = metrics["few_shot"]["scores"] if phase == "few_shot" else metrics[phase]
        mean = sum(r["scores"]["exact_match"] for r in rows) / len(rows)
        assert mean == pytest.approx(scores["exact_match"])
    shots = _rows(trained / "predictions" / "few_shot.jsonl")
    alone = _rows(trained / "predictions" / "before.jsonl")
    assert all(len(s["prompt"]) > len(a["prompt"]) for s, a in zip(shots, alone, strict=True))


def test_answers_are_the_models_own_and_ftlight_generates(trained) -> None:
    """After training, the kept answers are ``model.generate(do_sample=False)``'s with the
    model's generation_config, and ``ftlight-generate``'s for the same prompt."""
    from ftlight.cli.generate import Generator
    from ftlight.data.encode import encode_prompt

    rows = _rows(trained / "predictions" / "after.jsonl")
    data = [json.loads(line) for line in VAL.read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(trained / "model").eval()
    tok = AutoTokenizer.from_pretrained(trained / "model")
    assert model.generation_config.repetition_penalty == SETTINGS["repetition_penalty"]
    gen = Generator(trained)
    plain_answers = []
    for row, example in zip(rows, data, strict=True):
        messages = [{"role": "user", "content": f"{example['instruction']}\n\n{example['input']}"}]
        ids = encode_prompt(messages, tok)
        assert tok.decode(ids) == row["prompt"]
        prompt = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=8,
                do_sample=False,
            )
            plain = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=8,
                do_sample=False,
                repetition_penalty=1.0,
                no_repeat_ngram_size=0,
            )
        answer = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
        assert row["answer"] == answer
        assert gen.answer(messages, max_new_tokens=8) == answer.strip()
        plain_answers.append(tok.decode(plain[0, len(ids) :], skip_special_tokens=True))
    assert plain_answers != [r["answer"] for r in rows]  # the settings changed the answers


def test_ftlight_eval_keeps_its_predictions_beside_json(trained, tmp_path, monkeypatch) -> None:
    from ftlight.cli import eval as eval_cli

    monkeypatch.chdir(tmp_path)
    overrides = ["data=local", f"data.val_path={VAL}", "task.max_new_tokens=8", *BASE[:2]]
    eval_cli.main([str(trained), *overrides, "--json", str(tmp_path / "out" / "m.json")])
    rows = _rows(tmp_path / "out" / "predictions" / "validation.jsonl")
    after = _rows(trained / "predictions" / "after.jsonl")
    assert [r["answer"] for r in rows] == [r["answer"] for r in after]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in after]
    named = tmp_path / "named"
    eval_cli.main([str(trained), *overrides, "--predictions", str(named)])
    assert _rows(named / "validation.jsonl") == rows


def test_classification_rows_name_the_label_and_its_probability(compose, tmp_path) -> None:
    from ftlight.testing import SETUPS
    from ftlight.train import train

    cfg = compose([*SETUPS["tiny-bert"], *QUICK_RUN[1:3], "eval.plots=false"], tmp_path)
    result = train(cfg)
    names = set(result.module.task.labels.names)
    for phase in ("before", "after"):
        rows = _rows(tmp_path / "predictions" / f"{phase}.jsonl")
        assert rows and {r["reference"] for r in rows} <= names
        for row in rows:
            assert set(row) == {"row", "prompt", "reference", "label", "probability", "scores"}
            assert row["label"] in names and 1 / len(names) <= row["probability"] <= 1.0
            assert row["prompt"].startswith("[CLS]")
            assert row["scores"]["accuracy"] == float(row["label"] == row["reference"])
        mean = sum(r["scores"]["accuracy"] for r in rows) / len(rows)
        assert mean == pytest.approx(result.metrics[phase]["accuracy"])


def test_rows_of_several_processes_come_back_in_the_splits_order(monkeypatch) -> None:
    """Under DDP, rank r scores rows r, r + world, ...; the sampler repeats the first rows to
    even the ranks out, and those repeats are dropped."""
    monkeypatch.setattr(predictions.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(predictions.dist, "get_world_size", lambda: 2)
    per_rank = [[{"x": 0}, {"x": 2}, {"x": 4}], [{"x": 1}, {"x": 3}, {"x": 0}]]

    def gather(parts, rows):
        parts[:] = per_rank

    monkeypatch.setattr(predictions.dist, "all_gather_object", gather)
    got = predictions.gathered(per_rank[0], total=5)
    assert got == [{"row": i + 1, "x": i} for i in range(5)]


def _row(n: int, answer: str, exact: float, prompt: str = "p") -> dict:
    scores = {"loss": 1.0 / n, "token_accuracy": 0.5, "exact_match": exact}
    return {"row": n, "prompt": prompt, "reference": "red", "answer": answer, "scores": scores}


def test_diff_lists_only_the_rows_whose_answers_differ(tmp_path, capsys) -> None:
    from ftlight.cli.compare import main

    for run, answers in (("a", ["red", "blue", "x"]), ("b", ["red", "red", "x"])):
        rows = [_row(i + 1, ans, float(ans == "red")) for i, ans in enumerate(answers)]
        rows[0]["scores"]["loss"] = 0.1 if run == "a" else 0.2  # a loss moves: not a difference
        predictions.write_rows(predictions.phase_file(tmp_path / run, "after"), rows)
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--diff"])
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"1 of 3 rows differ between {tmp_path / 'a'} and {tmp_path / 'b'}",
        "",
        "row 2  (exact_match 0 -> 1)",
        "  prompt:    p",
        "  reference: red",
        f"  {tmp_path / 'a'}: blue",
        f"  {tmp_path / 'b'}: red",
    ]


def test_diff_refuses_runs_evaluated_on_other_rows(tmp_path) -> None:
    first, second = [_row(1, "red", 1.0, prompt="p")], [_row(1, "red", 1.0, prompt="q")]
    with pytest.raises(FtlightError, match="row 1 has another prompt in each run"):
        predictions.format_diff(("a", "b"), first, second)


def test_diff_of_a_run_without_predictions_says_which_file(tmp_path, capsys) -> None:
    from ftlight.cli.compare import main

    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--diff", "before"])
    assert stop.value.code == 2
    assert f"{tmp_path / 'a' / 'predictions' / 'before.jsonl'}: no such" in capsys.readouterr().err
