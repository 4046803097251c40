"""A failed run is a failure: a non-finite loss stops training (exit 2, the last good checkpoint
kept, nothing exported); weights that never moved fail the run; an unchanged validation loss is
marked; early stopping and ``eval.best`` choose the weights evaluated and exported; a full disk
during the export keeps ``metrics.json`` and leaves no half-written folder."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ftlight.export
from ftlight.errors import StorageError, TrainingError
from ftlight.files import atomic_dir
from ftlight.testing import BASE, SETUPS
from ftlight.train import train

QUICK = ["eval.general=null", "eval.few_shot=0", "task.max_new_tokens=4", "trainer.max_epochs=-1"]
TRAIN_ROWS = SETUPS["tiny-llama"][3].split("=", 1)[1]  # data.train_path=...
BATCH = 8  # data.batch_size's default


def _steps_per_epoch() -> int:
    return math.ceil(len(Path(TRAIN_ROWS).read_text().splitlines()) / BATCH)


def _start(root: Path, name: str, args: list[str], cache: Path) -> subprocess.Popen:
    """``python -m ftlight`` into ``root/name``, in the background."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTLIGHT_CACHE": str(cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "ftlight", *BASE, *SETUPS["tiny-llama"], *QUICK, *args]
    cmd.append(f"hydra.run.dir={root / name}")
    out, err = (open(root / f"{name}.{ext}", "w") for ext in ("out", "err"))
    with out, err:
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=err)


def _finish(root: Path, name: str, proc: subprocess.Popen) -> tuple[int, str]:
    code = proc.wait(timeout=400)
    return code, (root / f"{name}.out").read_text() + (root / f"{name}.err").read_text()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, ftlight_cache: Path) -> dict[str, tuple[int, str, Path]]:
    """Two command-line runs side by side: one whose loss turns NaN, one that stops early."""
    root = tmp_path_factory.mktemp("failed-cli")
    calls = {
        "nan": [
            *("strategy=full", "optimizer.lr=1e9", "trainer.max_steps=6"),
            "callbacks.checkpoint.every_n_train_steps=1",
        ],
        "early": [
            *("strategy=lora", "optimizer.lr=1e-1", "scheduler=constant"),
            *("scheduler.warmup_ratio=0", "trainer.max_steps=-1", "trainer.max_epochs=10"),
            # every validation after the first falls short of a 100-nat improvement
            *("callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=100"),
            "eval.best=true",
        ],
    }
    procs = {name: _start(root, name, args, ftlight_cache) for name, args in calls.items()}
    return {name: (*_finish(root, name, proc), root / name) for name, proc in procs.items()}


def test_nan_loss_stops_the_run_with_exit_2(cli_runs) -> None:
    """``optimizer.lr=1e9``: the loss turns NaN within a few steps."""
    code, output, run = cli_runs["nan"]
    assert code == 2, output[-3000:]
    assert "Traceback" not in output
    found = re.search(r"ftlight-train: the training loss is (nan|inf) at step (\d+)", output)
    assert found, output[-3000:]
    step = int(found.group(2))
    assert "optimizer.lr" in output and "nothing was evaluated or exported" in output
    assert not (run / "metrics.json").exists()
    assert not (run / "model").exists()
    # the checkpoints written before that step are kept, and hold finite weights
    last = run / "checkpoints" / "last.ckpt"
    assert f"kept: {last}" in output
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == step
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_early_stopping_and_best_weights_on_the_command_line(cli_runs) -> None:
    code, output, run = cli_runs["early"]
    assert code == 0, output[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    stop = 2 * _steps_per_epoch()  # patience 1: the second validation (an epoch each) stops it
    assert metrics["train"]["steps"] == stop
    assert metrics["train"]["early_stopping"] == {
        "monitor": "val/loss",
        "patience": 1,
        "stopped": True,
        "step": stop,
    }
    best = metrics["best"]
    assert best["step"] in (_steps_per_epoch(), stop)
    assert metrics["after"]["loss"] == best["value"]  # the evaluation after scored those weights
    assert json.loads((run / "adapter" / "ftlight.json").read_text())["step"] == best["step"]
    assert f"the weights of step {best['step']}" in output


def _fit_val_losses(result) -> list[tuple[int, float]]:
    """The validations during the fit (the monitor also records the before and after passes,
    at the first and the last step)."""
    from ftlight.measure.throughput import ThroughputMonitor

    monitor = next(c for c in result.trainer.callbacks if isinstance(c, ThroughputMonitor))
    return monitor.val_losses[1:-1]


def _lora_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoRA weights by the adapter file's names (checkpoints name them as peft's modules do)."""
    return {
        k.removeprefix("model.").replace(".default", ""): v
        for k, v in state.items()
        if "lora_" in k
    }


def test_best_weights_are_evaluated_and_exported(compose, tmp_path: Path) -> None:
    """At lr 0.1 the validation loss goes up and down: the best validation is not the last."""
    run = tmp_path / "run"
    overrides = [*QUICK, "strategy=lora", "optimizer.lr=1e-1", "scheduler=constant"]
    overrides += ["scheduler.warmup_ratio=0", "trainer.max_steps=-1", "trainer.max_epochs=6"]
    result = train(compose([*overrides, "eval.best=true"], run, "causal_lm"))
    metrics = result.metrics
    fit = _fit_val_losses(result)
    assert len(fit) == 6
    step, value = min(fit, key=lambda sv: sv[1])
    assert metrics["best"]["step"] == step and metrics["best"]["value"] == value
    assert step != metrics["train"]["steps"]  # otherwise the test could not tell
    assert metrics["after"]["loss"] == value
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == step
    exported = load_file(run / "adapter" / "adapter_model.safetensors")
    chosen, final = _lora_tensors(best["state_dict"]), _lora_tensors(last["state_dict"])
    assert chosen.keys() == exported.keys()
    assert all(torch.equal(exported[k], chosen[k]) for k in chosen)
    assert any(not torch.equal(exported[k], final[k]) for k in final)


def test_without_eval_best_the_last_weights_are_kept(compose, tmp_path: Path) -> None:
    """eval.best=false (the default) writes no best.ckpt and scores the last weights."""
    run = tmp_path / "run"
    overrides = [*QUICK, "strategy=lora", "trainer.max_steps=2", "eval.export=false"]
    result = train(compose(overrides, run, "causal_lm"))
    assert "best" not in result.metrics and "early_stopping" not in result.metrics["train"]
    assert not (run / "checkpoints" / "best.ckpt").exists()


def test_weights_that_never_moved_fail_the_run(compose, tmp_path: Path) -> None:
    """At lr 1e-30 every update of a full fine-tune is below the weights' precision."""
    run = tmp_path / "run"
    overrides = [*QUICK, "strategy=full", "optimizer.lr=1e-30", "trainer.max_steps=2"]
    with pytest.raises(TrainingError, match="did not move any of the 26,912 trainable") as info:
        train(compose(overrides, run, "causal_lm"))
    assert "nothing was exported" in str(info.value)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["warning"] == [str(info.value)]
    assert "exports" not in metrics
    assert not (run / "model").exists()


def test_an_unchanged_validation_loss_is_marked(compose, tmp_path: Path) -> None:
    """LoRA at lr 1e-30: the adapters move off zero, by too little to change any output."""
    run = tmp_path / "run"
    overrides = [*QUICK, "strategy=lora", "optimizer.lr=1e-30", "trainer.max_steps=2"]
    result = train(compose(overrides, run, "causal_lm"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["before"]["loss"] == metrics["after"]["loss"]
    assert len(metrics["warning"]) == 1
    assert "the validation loss did not change at all" in metrics["warning"][0]
    assert sorted(result.exports) == ["adapter", "model"]  # a warning, not a failure


@pytest.mark.parametrize("fail_in", ["model", "adapter"])
def test_a_full_disk_during_the_export(compose, tmp_path: Path, monkeypatch, fail_in) -> None:
    """The disk fills while ``fail_in/`` is written: a StorageError naming the cause, no
    half-written folder, ``metrics.json`` and the checkpoints kept."""

    def filling(target: Path, write):
        if Path(target).name != fail_in:
            return atomic_dir(target, write)

        def write_then_fail(tmp: Path) -> None:
            write(tmp)
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))

        return atomic_dir(target, write_then_fail)

    monkeypatch.setattr(ftlight.export, "atomic_dir", filling)
    run = tmp_path / "run"
    overrides = [*QUICK, "strategy=lora", "trainer.max_steps=2", "eval.before=false"]
    with pytest.raises(StorageError, match="No space left on device") as info:
        train(compose(overrides, run, "causal_lm"))
    assert info.value.errno == errno.ENOSPC
    held = "it holds the complete adapter/" if fail_in == "model" else "it holds no export"
    assert held in str(info.value)
    assert (run / "adapter" / "ftlight.json").is_file() == (fail_in == "model")
    assert not (run / fail_in).exists()
    assert [p.name for p in run.iterdir() if p.name.startswith(f".{fail_in}.")] == []
    metrics = json.loads((run / "metrics.json").read_text())
    assert "exports" not in metrics and metrics["after"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
