"""Exports answered by a real llama.cpp (launch/build_llama_cpp.sh): the run's own answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from serve_helpers import needs_llama_cpp

from ftlight.cli.eval import main as eval_main
from ftlight.cli.export import main as export_main

pytestmark = needs_llama_cpp


def test_a_tiny_run_served_by_llama_cpp_answers_as_it_did(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    export_main([str(run), "--to", "ollama", "--type", "f16"])
    folder = run / "export" / "ollama"
    assert (folder / "model-f16.gguf").is_file() and (folder / "Modelfile").is_file()
    scores = json.loads((run / "metrics.json").read_text())["export"]["ollama"]["f16"]
    after = json.loads((run / "metrics.json").read_text())["after"]
    # llama.cpp's SentencePiece tokenizer splits this tiny vocabulary's words otherwise than
    # sentencepiece does, so answers are compared on the real model (the slow test below)
    assert scores["rows"] == 8 and 0 <= scores["agree"] <= 8
    assert set(after) >= {k for k in scores if k not in ("agree", "rows", "seconds")}
    card = (folder / "README.md").read_text()
    assert f"{scores['agree']} of 8" in card
    capsys.readouterr()
    eval_main([str(folder / "model-f16.gguf")])
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["metric", "after", "f16"]
    assert f"{scores['agree']} of 8" in table


def test_eval_refuses_data_overrides_for_a_gguf(tiny_run: Path, tmp_path: Path, capsys) -> None:
    gguf = tmp_path / "model-f16.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(SystemExit) as exit_:
        eval_main([str(gguf), "data=local"])
    assert exit_.value.code == 2
    assert "a GGUF is scored on the prompts of its run's evaluation" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_demo_run_scores_the_same_through_llama_cpp(tmp_path: Path) -> None:
    """The default run (its training in full: a shortened one leaves near-ties that q8_0
    rounding flips), exported to Ollama (q8_0) and GGUF (f16) and answered by llama-server
    on its 50 held-out tickets. Only measurements that change no weight are left out."""
    from hydra import compose, initialize_config_dir

    import ftlight.train  # noqa: F401
    from ftlight.config import CONF_DIR
    from ftlight.train import train

    run = tmp_path / "run"
    overrides = [
        "callbacks.progress=null",
        "logger=none",
        "eval.plots=false",
        "eval.few_shot=0",
        "eval.before=false",
        "eval.general=null",
        f"run_dir={run}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        train(compose("config", overrides=overrides))
    export_main([str(run), "--to", "ollama"])
    export_main([str(run), "--to", "gguf", "--type", "f16"])
    metrics = json.loads((run / "metrics.json").read_text())
    after = metrics["after"]["exact_match"]
    f16 = metrics["export"]["gguf"]["f16"]
    q8 = metrics["export"]["ollama"]["q8_0"]
    assert f16["rows"] == q8["rows"] == 50
    for gguf in (f16, q8):
        assert gguf["agree"] >= 48, gguf
        # a score can differ only by the rows whose answers differ (``after`` is a float32
        # mean: 0.88 reads 0.8799999952)
        differ = (gguf["rows"] - gguf["agree"]) / gguf["rows"]
        assert abs(gguf["exact_match"] - after) <= differ + 1e-6, (gguf, after)
    print(f"after {after:.4f}; f16 {f16}; q8_0 {q8}")
    modelfile = (run / "export" / "ollama" / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "You are a helpful AI assistant named SmolLM" in modelfile  # the default system
