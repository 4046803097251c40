"""Every mistake a user can make, one row each: it is reported as an ftlight error naming the
bad value and the fix, before any model weights load, and nothing the run folder already held
changes.

Rows run ``train(cfg)`` in this process; two also run ``python -m ftlight`` to check the
exit status (2), that the message reaches stderr, and that no traceback is printed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ftlight.errors import ConfigError, DataError, FtlightError, ModelError
from ftlight.models.sources import HFModel
from ftlight.train import train

ALPACA = (
    '{"instruction": "Name the colour.", "input": "The cat is red.", "output": "red"}\n'
    '{"instruction": "Name the colour.", "input": "The sky is blue.", "output": "blue"}\n'
)
CHAT_EMPTY_LAST = (
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},'
    ' {"role": "user", "content": "bye"}, {"role": "assistant", "content": ""}]}\n'
)


@dataclass(frozen=True)
class Case:
    """One mistake.

    ``overrides`` and ``env`` may name ``{tmp}`` (a scratch folder, also the working
    directory), ``{run}`` (the run folder), ``{ckpt}`` (its ``checkpoints/last.ckpt``),
    ``{fixtures}`` and ``{tiny}`` (a tiny Llama saved as a Hugging Face folder). ``files`` are
    written under ``{tmp}`` first. ``resume`` runs in a copy of a finished LoRA run (so
    ``{ckpt}`` exists); otherwise the run folder holds only what Hydra writes at the start.
    ``says`` are texts the message must contain: the bad value and the fix.
    """

    overrides: tuple[str, ...]
    error: type[FtlightError]
    says: tuple[str, ...]
    setup: str | None = "causal_lm"
    files: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    resume: bool = False
    prepare: Callable[[Path], None] | None = None  # changes the run folder before the run
    hide: tuple[str, ...] = ()  # modules that fail to import


def _truncated_checkpoint(run: Path) -> None:
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    (run / "checkpoints" / "broken.ckpt").write_bytes(data[: len(data) // 2])


def _foreign_checkpoint(run: Path) -> None:
    torch.save({"state_dict": {}}, run / "checkpoints" / "other.ckpt")


C, D, M = ConfigError, DataError, ModelError
CASES: dict[str, Case] = {
    # numbers out of range
    "lr-zero": Case(("optimizer.lr=0",), C, ("optimizer.lr=0 must be a number > 0", "2e-4")),
    "lr-negative": Case(("optimizer.lr=-0.001",), C, ("optimizer.lr=-0.001 must be",)),
    "lr-text": Case(("optimizer.lr=fast",), C, ("optimizer.lr='fast' must be a number > 0",)),
    "weight-decay": Case(("optimizer.weight_decay=-0.1",), C, ("weight_decay=-0.1", ">= 0")),
    "betas": Case(
        ("optimizer.betas=[0.9,1.0]",), C, ("betas=[0.9,1.0] must be two numbers in [0, 1)",)
    ),
    "eps": Case(("optimizer.eps=0",), C, ("optimizer.eps=0 must be a number > 0", "1e-8")),
    "batch-size": Case(("data.batch_size=0",), C, ("data.batch_size=0 must be", ">= 1")),
    "eval-batch-size": Case(
        ("data.eval_batch_size=0",), C, ("data.eval_batch_size=0 must be null or an integer",)
    ),
    "num-workers": Case(("data.num_workers=-1",), C, ("data.num_workers=-1 must be", ">= 0")),
    "max-length": Case(("data.max_length=0",), C, ("data.max_length=0 must be", "1024")),
    "val-fraction": Case(
        ("data.val_path=null", "data.val_fraction=1.0"),
        C,
        ("data.val_fraction=1.0 must be a number in (0, 1)", "data.val_fraction=0.1"),
    ),
    "max-eval-samples": Case(("data.max_eval_samples=0",), C, ("data.max_eval_samples=0",)),
    "demo-train-size": Case(
        ("model=tiny-llama", "data.train_size=0"), C, ("data.train_size=0 must be",), setup=None
    ),
    "warmup-ratio": Case(("scheduler.warmup_ratio=1.0",), C, ("warmup_ratio=1.0", "[0, 1)")),
    "warmup-steps": Case(("scheduler.warmup_steps=-5",), C, ("warmup_steps=-5 must be",)),
    "min-lr-negative": Case(
        ("scheduler.min_lr_ratio=-1",), C, ("scheduler.min_lr_ratio=-1 must be", "[0, 1]")
    ),
    "min-lr-above-one": Case(("scheduler.min_lr_ratio=1.5",), C, ("min_lr_ratio=1.5 must be",)),
    "max-steps-zero": Case(
        ("trainer.max_steps=0",), C, ("trainer.max_steps=0 trains nothing", "ftlight-eval")
    ),
    "max-epochs-zero": Case(("trainer.max_epochs=0",), C, ("max_epochs=0 trains nothing",)),
    "max-steps-negative": Case(("trainer.max_steps=-5",), C, ("max_steps=-5 must be -1 or",)),
    "never-stops": Case(("trainer.max_epochs=-1",), C, ("never stops", "trainer.max_steps=500")),
    "accumulate": Case(
        ("trainer.accumulate_grad_batches=0",), C, ("accumulate_grad_batches=0 must be",)
    ),
    "gradient-clip": Case(("trainer.gradient_clip_val=-1",), C, ("gradient_clip_val=-1",)),
    "val-check-interval": Case(("trainer.val_check_interval=0",), C, ("val_check_interval=0",)),
    "checkpoint-every": Case(
        ("callbacks.checkpoint.every_n_train_steps=0",), C, ("every_n_train_steps=0 must be",)
    ),
    "max-new-tokens": Case(
        ("task.max_new_tokens=0",), C, ("task.max_new_tokens=0 must be 'auto' or an integer",)
    ),
    "tiny-heads": Case(("model.num_heads=3",), C, ("model.num_heads=3", "model.num_heads=4")),
    "strategy-r": Case(("strategy.r=0",), C, ("strategy.r=0 must be a positive integer",)),
    "strategy-dropout": Case(("strategy.dropout=1.5",), C, ("strategy.dropout=1.5 must be",)),
    # choices
    "eval-split-typo": Case(
        ("eval.split=tset",), C, ("eval.split='tset' is not a choice", "validation, test")
    ),
    "eval-split-test-without-data": Case(
        ("eval.split=test",), C, ("eval.split=test", "set data.test_path=<file>")
    ),
    "precision": Case(
        ("trainer.precision=bf17-mixed",), C, ("'bf17-mixed' is not a choice", "bf16-mixed")
    ),
    "accelerator": Case(("trainer.accelerator=gpus",), C, ("'gpus' is not a choice", "cuda")),
    "output-format": Case(
        ("task.output_format=yaml",), C, ("'yaml' is not a choice", "auto, text, json")
    ),
    "scheduler-kind": Case(
        ("scheduler.kind=exponential",), C, ("'exponential'", "cosine, linear, constant")
    ),
    "boolean": Case(("eval.before=flase",), C, ("eval.before='flase' must be true or false",)),
    "boolean-step": Case(
        ("speed.recompute_activation=yes",),
        C,
        ("speed.recompute_activation='yes' must be true or false",),
    ),
    "ckpt-check": Case(("ckpt_check=loose",), C, ("ckpt_check='loose'", "strict, warn")),
    "attention-kernel": Case(
        ("speed.attention_kernel=fast",),
        C,
        ("speed.attention_kernel='fast'", "auto, torch, math, flash"),
    ),
    "kernel-cache": Case(
        ("speed.kernel_cache=0",), C, ("speed.kernel_cache=0 must be", "speed.kernel_cache=256")
    ),
    "model-dtype": Case(
        ("model=hf", "model.name_or_path={tiny}", "model.dtype=float8"),
        C,
        ("model.dtype='float8'", "bfloat16"),
    ),
    "data-format": Case(
        ("data.format=nope",), C, ("data.format='nope'", "alpaca, chat, prompt_completion")
    ),
    "format-for-another-task": Case(
        ("data.format=alpaca",), C, ("data.format=alpaca", "text_label"), setup="classification"
    ),
    "field-of-another-format": Case(
        ("data.fields.text_field=review",),
        C,
        ("data.fields.text_field=review does not apply", "data.fields.instruction_field"),
    ),
    "pypi-model": Case(
        ("model=smollm2-135m", "model.name=nope"), C, ("'nope'", "smollm2-135m, minilm-l6")
    ),
    "qlora-without-bitsandbytes": Case(
        ("strategy=qlora",), C, ("pip install bitsandbytes",), hide=("bitsandbytes",)
    ),
    "qlora-with-fsdp": Case(("strategy=qlora", "trainer=fsdp"), C, ("trainer=fsdp",)),
    # model folders and the cache
    "model-path-typo": Case(
        ("model=hf", "model.name_or_path=./runs/nope"),
        M,
        ("model.name_or_path='./runs/nope': no such folder", "Check the path"),
    ),
    "model-path-without-dot": Case(
        ("model=hf", "model.name_or_path=runs/2026-12-01/nope"),
        M,
        ("'runs/2026-12-01/nope': no such folder", "org/name"),
    ),
    "model-path-beside-runs": Case(
        ("model=hf", "model.name_or_path=runs/nope"),
        M,
        ("model.name_or_path='runs/nope': no such folder",),
        files=(("runs/2026-12-01/metrics.json", "{}"),),
    ),
    "model-folder-without-config": Case(
        ("model=hf", "model.name_or_path={tmp}/empty"),
        M,
        ("folder without config.json", "model/ subfolder"),
        files=(("empty/notes.txt", "x"),),
    ),
    "cache-not-writable": Case(
        (),
        C,
        ("FTLIGHT_CACHE={tmp}/file/cache is not a writable folder", "export FTLIGHT_CACHE="),
        files=(("file", "not a folder"),),
        env=(("FTLIGHT_CACHE", "{tmp}/file/cache"),),
    ),
    "rows-beyond-positions": Case(
        ("model.max_positions=32",),
        C,
        ("longer than the model's 32 positions", "set data.max_length=32"),
        setup="classification",
    ),
    # checkpoints to resume from
    "ckpt-missing": Case(
        ("ckpt_path={run}/checkpoints/lats.ckpt",),
        C,
        ("lats.ckpt does not exist", "ckpt_path=<run>/checkpoints/last.ckpt"),
        resume=True,
    ),
    "ckpt-truncated": Case(
        ("ckpt_path={run}/checkpoints/broken.ckpt",),
        C,
        ("broken.ckpt is not a readable checkpoint", "leave ckpt_path unset"),
        resume=True,
        prepare=_truncated_checkpoint,
    ),
    "ckpt-not-ftlight": Case(
        ("ckpt_path={run}/checkpoints/other.ckpt",),
        C,
        ("other.ckpt was not written by ftlight-train", "checkpoints/last.ckpt"),
        resume=True,
        prepare=_foreign_checkpoint,
    ),
    "ckpt-folder": Case(
        ("ckpt_path={run}",), C, ("is a folder", "did you mean ckpt_path={ckpt}"), resume=True
    ),
    "ckpt-other-strategy": Case(
        ("ckpt_path={ckpt}", "strategy=full"),
        C,
        ("written with strategy=lora but this run uses strategy=full", "strategy=lora"),
        resume=True,
    ),
    "ckpt-other-task": Case(
        ("ckpt_path={ckpt}", "strategy=lora"),
        C,
        ("task=causal_lm but this run uses task=classification",),
        setup="classification",
        resume=True,
    ),
    "ckpt-other-model-size": Case(
        ("ckpt_path={ckpt}", "strategy=lora", "model.hidden_size=64"),
        C,
        ("hidden_size=32", "hidden_size=64", "ckpt_check=warn"),
        resume=True,
    ),
    "ckpt-other-data": Case(
        ("ckpt_path={ckpt}", "strategy=lora", "data.train_path={tmp}/train.jsonl"),
        C,
        ("does not match this run in the training data", "ckpt_check=warn"),
        files=(("train.jsonl", ALPACA),),
        resume=True,
    ),
    # data
    "data-file-missing": Case(
        ("data.train_path={tmp}/nope/train.jsonl",),
        D,
        ("data.train_path='{tmp}/nope/train.jsonl' does not exist", "Check the path"),
    ),
    "data-file-empty": Case(
        ("data.train_path={tmp}/train.jsonl",), D, ("no rows",), files=(("train.jsonl", ""),)
    ),
    "row-without-field": Case(
        ("data.train_path={tmp}/t.jsonl",),
        D,
        ("t.jsonl row 3: has no field 'output'", "data.fields.output_field=<column>"),
        files=(("t.jsonl", ALPACA + '{"instruction": "Name it.", "input": "grey"}\n'),),
    ),
    "renamed-column-missing": Case(
        ("data.fields.output_field=answer",),
        D,
        ("has no field 'answer'", "data.fields.output_field=<column>"),
    ),
    "label-unseen": Case(
        ("data.val_path={tmp}/val.tsv",),
        D,
        ("val.tsv row 2: label 'angry'", "negative, neutral, positive"),
        setup="classification",
        files=(("val.tsv", "text\tlabel\nlovely\tpositive\nso angry\tangry\n"),),
    ),
    "duplicate-key-jsonl": Case(
        ("data.train_path={tmp}/t.jsonl",),
        D,
        ("t.jsonl line 3: key 'output' appears more than once", "Remove or rename"),
        files=(("t.jsonl", ALPACA + '{"instruction": "a", "output": "b", "output": "c"}\n'),),
    ),
    "duplicate-key-json": Case(
        ("data.train_path={tmp}/t.json",),
        D,
        ("t.json row 2: key 'input' appears more than once", "Remove or rename"),
        files=(("t.json", '[{"instruction": "a", "output": "b"}, {"input": 1, "input": 2}]'),),
    ),
    "chat-empty-final-reply": Case(
        ("data.format=chat", "data.train_path={tmp}/chat.jsonl", "data.val_path=null"),
        D,
        ("chat.jsonl row 1: the final assistant message (message 4) is empty", "Write the reply"),
        files=(("chat.jsonl", CHAT_EMPTY_LAST * 2),),
    ),
    "jsonl-syntax": Case(
        ("data.train_path={tmp}/t.jsonl",),
        D,
        ("t.jsonl line 3: not valid JSON", "fix or delete that line"),
        files=(("t.jsonl", ALPACA + '{"instruction": "a",}\n'),),
    ),
    "csv-ragged-row": Case(
        ("data.train_path={tmp}/t.csv",),
        D,
        ("t.csv row 2 (line 3): has 3 values", "Quote fields"),
        setup="classification",
        files=(("t.csv", "text,label\nfine,positive\nbad, really,negative\n"),),
    ),
    "reference-empty-after-truncation": Case(
        (
            *("data.format=prompt_completion", "data.max_length=6"),
            *("data.train_path={tmp}/pc.jsonl", "data.val_path={tmp}/pc.jsonl"),
        ),
        D,
        ("pc.jsonl row 1: the reference answer is empty", "raise data.max_length"),
        files=(("pc.jsonl", '{"prompt": "abc", "completion": "   yes"}\n' * 2),),
    ),
    "all-rows-truncated": Case(
        ("data.max_length=8",), D, ("empty after tokenisation", "Raise data.max_length")
    ),
}


def _fill(text: str, values: dict[str, str]) -> str:
    return text.format(**values)


def _contents(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def no_weights(monkeypatch) -> list:
    """Fails the test if model weights are loaded; yields the list of load calls."""
    calls: list = []

    def load(self, *args, **kwargs):
        calls.append(args)
        raise AssertionError("model weights were loaded before the error was raised")

    monkeypatch.setattr(HFModel, "load", load)  # every model source loads through it
    return calls


@pytest.fixture(scope="module")
def finished_run(compose, tmp_path_factory) -> Path:
    """A finished LoRA run of the tiny Llama: checkpoints, metrics.json and exports."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    overrides = ["strategy=lora", "trainer.max_steps=2", "trainer.max_epochs=-1"]
    overrides += ["eval.before=false", "eval.after=false"]
    train(compose(overrides, run_dir, "causal_lm"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


@pytest.fixture
def case_run(
    tmp_path, monkeypatch, finished_run, tiny_chat_llama
) -> Callable[[Case], tuple[Path, dict[str, str]]]:
    """Lay out a case: scratch files, environment, and a run folder with earlier output.

    The shared runs are fixtures of wider scope, so they are built before ``no_weights``.
    """

    def lay_out(case: Case) -> tuple[Path, dict[str, str]]:
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        monkeypatch.chdir(scratch)
        run = tmp_path / "run"
        if case.resume:
            shutil.copytree(finished_run, run)
            if case.prepare:
                case.prepare(run)
        else:  # what Hydra has written by the time the run starts
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
            (run / "ftlight.log").write_text("[ftlight][INFO] - starting\n")
        values = {
            "tmp": str(scratch),
            "run": str(run),
            "ckpt": str(run / "checkpoints" / "last.ckpt"),
            "fixtures": str(Path(__file__).resolve().parent / "fixtures"),
            "tiny": str(tiny_chat_llama),
        }
        for name, text in case.files:
            path = scratch / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for key, value in case.env:
            monkeypatch.setenv(key, _fill(value, values))
        for module in case.hide:
            monkeypatch.setitem(sys.modules, module, None)  # its import raises ImportError
        return run, values

    return lay_out


def test_the_matrix_is_complete() -> None:
    """At least 40 mistakes, each of the three error kinds."""
    assert len(CASES) >= 40
    assert {case.error for case in CASES.values()} == {ConfigError, DataError, ModelError}


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_is_reported_before_any_weights_load(
    name: str, compose, case_run, no_weights
) -> None:
    case = CASES[name]
    run, values = case_run(case)
    before = _contents(run)
    overrides = [_fill(o, values) for o in case.overrides]
    cfg = compose(overrides, run, case.setup)
    with pytest.raises(case.error) as info:
        train(cfg)
    message = str(info.value)
    for text in case.says:
        assert _fill(text, values) in message, message
    assert no_weights == []
    after = _contents(run)
    assert {k: after.get(k) for k in before} == before  # earlier output untouched


CLI_CASES = {
    "eval-split-typo": ("eval.split=tset", "eval.split='tset' is not a choice"),
    "lr-zero-on-resume": ("optimizer.lr=0", "optimizer.lr=0 must be a number > 0"),
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_command_line_exits_2_with_the_message_on_stderr(
    name: str, finished_run: Path, tmp_path: Path, ftlight_cache: Path
) -> None:
    """``python -m ftlight`` resuming a finished run with one bad option."""
    override, expected = CLI_CASES[name]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _contents(run)
    from ftlight.testing import BASE, SETUPS

    args = [*BASE, *SETUPS["tiny-llama"], "strategy=lora", f"hydra.run.dir={run}"]
    args += [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTLIGHT_CACHE": str(ftlight_cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ftlight", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert expected in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    after = _contents(run)
    assert {k: after.get(k) for k in before} == before  # only Hydra's own files are new


def test_eval_of_a_path_with_a_comma(tmp_path, tiny_chat_llama, monkeypatch) -> None:
    """Hydra reads commas in an override as a sweep; ftlight-eval quotes the model path."""
    import ftlight.cli.eval
    from ftlight.cli.eval import evaluate_model

    folder = tmp_path / "models, v2 [final]"
    shutil.copytree(tiny_chat_llama, folder)
    seen = {}

    def build_run(cfg, label_names=None):
        seen["path"] = cfg.model.name_or_path
        raise ConfigError("stop before loading")

    monkeypatch.setattr(ftlight.cli.eval, "build_run", build_run)
    with pytest.raises(ConfigError, match="stop before loading"):
        evaluate_model(str(folder), ["model=hf", "data=demo", "task=causal_lm"])
    assert seen["path"] == str(folder.resolve())
    with pytest.raises(ModelError, match=r"a,b: no such folder"):
        evaluate_model(str(tmp_path / "a,b"), [])


def _folder_with(tiny: Path, scratch: Path, name: str, change: Callable[[Path], None]) -> Path:
    """A copy of the tiny model folder, changed."""
    folder = scratch / name
    shutil.copytree(tiny, folder)
    change(folder)
    return folder


def _config_entry(key: str, value: object) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config[key] = value
        (folder / "config.json").write_text(json.dumps(config))

    return change


def _cut_weights(folder: Path) -> None:
    (weights,) = folder.glob("*.safetensors")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def _damaged_gzip(path: Path) -> Path:
    rows = "".join(
        json.dumps({"instruction": "a" * 40, "output": "b" * 40}) + "\n" for _ in range(99)
    )
    packed = bytearray(gzip.compress(rows.encode()))
    packed[40:60] = b"x" * 20  # the stream's middle overwritten: zlib fails while reading
    path.write_bytes(bytes(packed))
    return path


def _link_loop(scratch: Path) -> Path:
    (scratch / "loop-a").symlink_to(scratch / "loop-b")
    (scratch / "loop-b").symlink_to(scratch / "loop-a")
    return scratch / "loop-a"


QUANTISED = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}

#: mistakes that Hydra composes or that a model folder or file carries, through ftlight-train's
#: own entry point (in this process): (overrides, what stderr must say). ``{x}`` names a path
#: that ``_lay_out`` makes.
ENTRY_CASES = {
    "rank-not-a-number": (
        ["strategy=lora", "strategy.r=abc"],
        ["strategy.r='abc' must be an integer"],
    ),
    "rank-fractional": (["strategy=lora", "strategy.r=8.5"], ["strategy.r=8.5 must be an integer"]),
    "unknown-key": (
        ["strategy=lora", "+strategy.rank=16"],
        ["has no option 'rank' (did you mean strategy.r=16?)", "alpha, bias, dropout, r"],
    ),
    "choice": (
        ["strategy=lora", "strategy.bias=everything"],
        ["strategy.bias='everything' is not a choice; use one of none, all, lora_only"],
    ),
    "self-interpolation": (
        ["optimizer.lr=${optimizer.lr}"],
        ["optimizer.lr refers to itself", "set optimizer.lr to a value"],
    ),
    "unset-environment-variable": (
        ["optimizer.lr=${oc.env:FTLIGHT_UNSET_IN_TESTS}"],
        ["FTLIGHT_UNSET_IN_TESTS, which is not set", "${oc.env:FTLIGHT_UNSET_IN_TESTS,<default>}"],
    ),
    "damaged-gzip": (
        ["data.train_path={gz}"],
        ["cannot be read", "cut short or damaged: copy or compress it again"],
    ),
    "data-link-loop": (
        ["data.train_path={loop}"],
        ["data.train_path=", "leads back to itself", "fix the link"],
    ),
    "model-link-loop": (
        ["model=hf", "model.name_or_path={loop}"],
        ["leads back to itself", "point model.name_or_path at the real folder"],
    ),
    "model-code": (
        ["model=hf", "model.name_or_path={code}"],
        ["needs its own Python code to load", "model.trust_remote_code=true"],
    ),
    "model-weights-cut": (
        ["model=hf", "model.name_or_path={cut}"],
        ["model.safetensors is not a readable safetensors file", "Copy the model folder again"],
    ),
    "model-already-quantised": (
        ["model=hf", "model.name_or_path={quantised}", "strategy=full"],
        ["already quantised in 4 bits", "which strategy=full cannot train from"],
    ),
    "unknown-strategy": (
        ["strategy=lroa"],
        ["strategy=lroa is not a choice (did you mean strategy=lora?)"],
    ),
}


@pytest.mark.parametrize("name", list(ENTRY_CASES))
def test_entry_point_exits_2_with_one_message(
    name: str, tmp_path: Path, tiny_chat_llama: Path, monkeypatch, capsys
) -> None:
    """No traceback, exit status 2, the bad value and the fix on stderr, nothing loaded."""
    from ftlight.cli.train import main
    from ftlight.testing import BASE, SETUPS

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    paths = {
        "gz": _damaged_gzip(scratch / "train.jsonl.gz"),
        "loop": _link_loop(scratch),
        "code": _folder_with(
            tiny_chat_llama, scratch, "code", _config_entry("auto_map", {"AutoModel": "m.M"})
        ),
        "cut": _folder_with(tiny_chat_llama, scratch, "cut", _cut_weights),
        "quantised": _folder_with(
            tiny_chat_llama, scratch, "q", _config_entry("quantization_config", QUANTISED)
        ),
    }
    overrides, says = ENTRY_CASES[name]
    run = tmp_path / "run"
    argv = [*BASE, *SETUPS["tiny-llama"], f"run_dir={run}"]
    for key, path in paths.items():
        overrides = [o.replace(f"={{{key}}}", f"={path}") for o in overrides]
    argv += overrides
    monkeypatch.chdir(scratch)
    monkeypatch.delenv("FTLIGHT_UNSET_IN_TESTS", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(HFModel, "load", lambda *a, **k: pytest.fail("weights were loaded"))
    monkeypatch.setattr(sys, "argv", ["ftlight-train", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    assert "Traceback" not in err
    for text in says:
        assert text in err, err[-2000:]
    assert not (run / "checkpoints").exists()
