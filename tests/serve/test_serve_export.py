"""ftlight-export without llama.cpp's programs: refusals first, whole folders, GGUF metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from serve_helpers import build_spm_llama

from ftlight.cli.export import main
from ftlight.errors import ConfigError, ModelError
from ftlight.serve import exporter
from ftlight.serve.gguf import metadata, token_text, write_model


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target, symlinks=True)
    return target


def _state(run: Path) -> dict[str, bytes]:
    """Every file of a run folder, by path: what a refused command must leave as it was."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _fake_run(tmp_path: Path, task: str, architecture: str) -> Path:
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    (run / "model" / "ftlight.json").write_text(json.dumps({"task": task, "strategy": "full"}))
    (run / "metrics.json").write_text("{}\n")
    return run


@pytest.mark.parametrize(
    ("task", "architecture", "expected"),
    [
        ("classification", "LlamaForSequenceClassification", "classification run"),
        ("causal_lm", "BertModel", "an encoder that llama.cpp's converter"),
        ("causal_lm", "MadeUpForCausalLM", "LlamaForCausalLM, "),
    ],
)
@pytest.mark.parametrize("fmt", ["gguf", "ollama"])
def test_what_the_converter_cannot_take_is_refused_before_any_work(
    tmp_path: Path, task: str, architecture: str, expected: str, fmt: str
) -> None:
    run = _fake_run(tmp_path, task, architecture)
    before = _state(run)
    with pytest.raises(ModelError, match=expected):
        exporter.plan_export(run, fmt)
    assert _state(run) == before


def test_an_adapter_export_needs_an_adapter(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "causal_lm", "LlamaForCausalLM")
    with pytest.raises(ModelError, match="no adapter/ .*--to merged"):
        exporter.plan_export(run, "adapter")


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="holds no model/"):
        exporter.plan_export(tmp_path, "merged")


def test_types_are_checked_before_any_work(tiny_run: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="one GGUF; give one --type"):
        exporter.plan_export(tiny_run, "ollama", ["f16", "q8_0"])
    monkeypatch.setenv("FTLIGHT_LLAMA_CPP_BIN", "/nonexistent")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(ModelError, match="launch/build_llama_cpp.sh"):
        exporter.plan_export(tiny_run, "gguf", ["q4_k_m"])


def test_the_cli_reports_a_refusal_in_one_line(tmp_path: Path, capsys) -> None:
    run = _fake_run(tmp_path, "classification", "BertForSequenceClassification")
    with pytest.raises(SystemExit) as exit_:
        main([str(run), "--to", "gguf"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ftlight-export: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_gguf_metadata_carries_the_template_and_the_end_tokens(tmp_path: Path) -> None:
    model = build_spm_llama(tmp_path / "model")
    files = write_model(model, tmp_path, ["f16", "q8_0"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".gguf") == [
        "model-f16.gguf",
        "model-q8_0.gguf",
    ]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    for kind, path in files.items():
        meta = metadata(path)
        assert meta["general.architecture"] == "llama"
        assert meta["general.file_type"] == {"f16": 1, "q8_0": 7}[kind]
        assert meta["tokenizer.chat_template"] == tok.chat_template
        assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
        assert token_text(path, meta["tokenizer.ggml.eos_token_id"]) == "<|im_end|>"
        assert meta["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
        # the run's tokenizer adds no BOS; llama.cpp would add one to a SentencePiece
        # vocabulary unless the file says otherwise
        assert tok("a").input_ids[0] != tok.bos_token_id
        assert meta["tokenizer.ggml.add_bos_token"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".convert-")]


def test_a_converter_crash_leaves_no_folder_and_the_record_as_it_was(
    tiny_run: Path, tmp_path: Path
) -> None:
    run = _copy(tiny_run, tmp_path)
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated file: the converter fails
    before = _state(run)
    plan = exporter.plan_export(run, "gguf", ["f16"], check=False)
    with pytest.raises(ModelError, match="convert_hf_to_gguf.py failed"):
        exporter.export(plan)
    assert not (run / "export" / "gguf").exists()
    assert [p.name for p in (run / "export").iterdir()] == []  # no temp folder either
    assert _state(run) == before


def test_without_llama_server_the_check_is_skipped_and_recorded(
    tiny_run: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    run = _copy(tiny_run, tmp_path)
    monkeypatch.setenv("FTLIGHT_LLAMA_CPP_BIN", str(tmp_path / "no-bin"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    main([str(run), "--to", "gguf", "--type", "f16"])
    entry = json.loads((run / "metrics.json").read_text())["export"]["gguf"]
    assert entry["check"].startswith("skipped: llama.cpp's llama-server is not built: run ")
    assert "launch/build_llama_cpp.sh" in entry["check"]
    assert "no q4_k_m" not in caplog.text  # an explicit --type needs no default
    assert (run / "export" / "gguf" / "model-f16.gguf").is_file()
    assert (run / "export" / "gguf" / "adapter-f16.gguf").is_file()  # a LoRA run
    readme = (run / "export" / "gguf" / "README.md").read_text()
    assert "Not measured (skipped: llama.cpp's llama-server is not built" in readme
    assert "llama-server -m model-f16.gguf" in readme


def test_an_ollama_export_writes_a_modelfile(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(tiny_run, tmp_path)
    main([str(run), "--to", "ollama", "--type", "q8_0", "--no-check"])
    folder = run / "export" / "ollama"
    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith('FROM ./model-q8_0.gguf\nTEMPLATE """{{ range')
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "SYSTEM" not in modelfile  # the demo run trained with no system prompt
    assert f"cd {folder.resolve()} && ollama create ftlight-" in capsys.readouterr().out
    assert "ollama create" in (folder / "README.md").read_text()
    record = json.loads((run / "metrics.json").read_text())["export"]["ollama"]
    assert record == {"check": "skipped: --no-check"}


def test_an_adapter_export_names_the_base_layers(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy(tiny_run, tmp_path)
    main([str(run), "--to", "adapter"])
    folder = run / "export" / "adapter"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert "vllm serve" in (folder / "README.md").read_text()
    assert "export" not in json.loads((run / "metrics.json").read_text())


def test_a_merged_export_loads_in_transformers(tiny_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    run = _copy(tiny_run, tmp_path)
    main([str(run), "--to", "merged"])
    model = AutoModelForCausalLM.from_pretrained(run / "export" / "merged")
    assert model.config.architectures == ["LlamaForCausalLM"]


def test_the_gguf_scoring_gives_the_runs_figures_for_the_runs_answers(tiny_run: Path) -> None:
    """Scored like ``CausalLMTask``: the run's own answers give its own ``after`` figures."""
    from ftlight.serve import parity

    rows = parity.run_rows(tiny_run)
    answers = [row["answer"] for row in rows]
    mine = parity.score(answers, [row["reference"] for row in rows])
    after = json.loads((tiny_run / "metrics.json").read_text())["after"]
    assert set(mine) == {k for k in after if k == "exact_match" or k.startswith("json/")}
    for name, value in mine.items():
        assert value == pytest.approx(after[name], abs=1e-6), name
    assert parity.score(["x", "y"], ["x", '{"a": 1}']) == {"exact_match": 0.5}  # not all JSON
    assert parity.score(['{"a": 1}', "x"], ['{"a": 1}', '{"a": 2}']) == {
        "exact_match": 0.5,
        "json/valid_json": 0.5,
        "json/exact_match": 0.5,
        "json/field_acc/a": 0.5,
    }
