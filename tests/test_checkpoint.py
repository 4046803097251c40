"""Checkpoints: what ``last.ckpt`` holds, exact resume, and writes that never leave half a file."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from ftlight.checkpoint import AtomicCheckpointIO
from ftlight.errors import ConfigError
from ftlight.files import atomic_dir

STRATEGIES = ("full", "head", "lora", "qlora")
MATRIX = [(s, t) for s in STRATEGIES for t in ("causal_lm", "classification")]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # as resuming loads it


@pytest.mark.parametrize(("strategy", "task"), MATRIX)
def test_checkpoint_holds_exactly_the_trainable_state(trained, strategy: str, task: str) -> None:
    """No frozen base weight in ``state_dict`` (for PEFT: adapters + head only)."""
    run = trained(strategy, task)
    ckpt = _load(run.run_dir / "checkpoints" / "last.ckpt")
    assert set(ckpt["state_dict"]) == {f"model.{n}" for n in run.probe.trainable}
    assert all(t.dtype == torch.float32 for t in ckpt["state_dict"].values())  # no 4-bit data
    for name, tensor in ckpt["state_dict"].items():
        torch.testing.assert_close(tensor, run.probe.end[name.removeprefix("model.")])
    # optimizer state for every trainable tensor, and the scheduler's
    (optimizer,) = ckpt["optimizer_states"]
    assert len(optimizer["state"]) == len(run.probe.trainable)
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(run.probe.trainable)
    assert all("exp_avg" in s and "exp_avg_sq" in s for s in optimizer["state"].values())
    assert len(ckpt["lr_schedulers"]) == 1
    assert ckpt["global_step"] == 4
    assert ckpt["ftlight"]["strategy"] == strategy


def test_peft_checkpoint_is_small(trained) -> None:
    """The point of saving only the trainable state: a LoRA checkpoint skips the base."""

    def weights(strategy: str) -> int:
        ckpt = _load(trained(strategy, "causal_lm").run_dir / "checkpoints" / "last.ckpt")
        return sum(t.numel() for t in ckpt["state_dict"].values())

    assert (weights("full"), weights("lora")) == (26912, 8192)  # see the plugins' tests


def test_resume_with_another_strategy_is_refused(trained, compose, tmp_path) -> None:
    from ftlight.train import train

    ckpt = trained("lora", "causal_lm").run_dir / "checkpoints" / "last.ckpt"
    cfg = compose(
        ["strategy=head", "eval.before=false", "trainer.max_steps=6", f"ckpt_path={ckpt}"],
        tmp_path,
        "causal_lm",
    )
    with pytest.raises(ConfigError, match="strategy=lora.*strategy=head"):
        train(cfg)


# -- resume ---------------------------------------------------------------------------------
# Two batches per epoch (16 rows, batch 8). A constant rate: the short run must follow the
# same schedule as the long one (a cosine over 2 steps is not the first half of one over 4).
RESUME = [
    "eval.before=false",
    "eval.after=false",
    "eval.export=false",
    "trainer.max_epochs=-1",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
]


def _trainable_end(probe) -> dict[str, torch.Tensor]:
    return {n: probe.end[n] for n in probe.trainable}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _lora(helpers, tmp_path: Path, *overrides: str) -> tuple:
    """A ``train(cfg)`` run of LoRA on the tiny Llama; returns (result, probe)."""
    cfg = helpers.compose(["strategy=lora", *RESUME, *overrides], tmp_path, "causal_lm")
    return helpers.train(cfg)


@pytest.fixture(scope="module")
def uninterrupted(helpers, tmp_path_factory) -> dict[str, torch.Tensor]:
    """LoRA weights after four steps in one go (dropout 0: nothing random in training)."""
    _, probe = _lora(
        helpers, tmp_path_factory.mktemp("whole"), "strategy.dropout=0", "trainer.max_steps=4"
    )
    return _trainable_end(probe)


@pytest.mark.parametrize("first_steps", [2, 3], ids=["at-epoch-boundary", "mid-epoch"])
def test_resume_is_exact(helpers, tmp_path, uninterrupted, first_steps: int) -> None:
    """``first_steps`` steps, then ``ckpt_path=<last.ckpt>`` on to four: the same weights as
    four steps in one go."""
    first, _ = _lora(
        helpers, tmp_path / "a", "strategy.dropout=0", f"trainer.max_steps={first_steps}"
    )
    ckpt = Path(first.run_dir) / "checkpoints" / "last.ckpt"
    assert _load(ckpt)["global_step"] == first_steps
    resumed, probe = _lora(
        helpers, tmp_path / "b", "strategy.dropout=0", "trainer.max_steps=4", f"ckpt_path={ckpt}"
    )
    assert resumed.trainer.global_step == 4
    assert len(probe.losses) == 4 - first_steps  # continued, not restarted
    assert _max_diff(_trainable_end(probe), uninterrupted) <= 1e-6


def test_resume_at_epoch_end_replays_dropout(helpers, tmp_path) -> None:
    """The default checkpoint (end of epoch, after validation) with LoRA dropout on: resuming
    reproduces the uninterrupted run, dropout masks included."""

    def run(name: str, *extra: str):
        overrides = ["trainer.check_val_every_n_epoch=1", "strategy.dropout=0.1", *extra]
        return _lora(helpers, tmp_path / name, *overrides)

    _, whole = run("whole", "trainer.max_steps=4")
    first, _ = run("first", "trainer.max_steps=2")
    ckpt = Path(first.run_dir) / "checkpoints" / "last.ckpt"
    _, resumed = run("resumed", "trainer.max_steps=4", f"ckpt_path={ckpt}")
    assert resumed.losses == whole.losses[2:]
    assert _max_diff(_trainable_end(resumed), _trainable_end(whole)) <= 1e-6


class Preempted(Exception):
    """The job was killed."""


class _Preempt(L.Callback):
    """Kills the fit before optimizer step ``at`` + 1, as a preempted job would end."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            raise Preempted


@pytest.mark.parametrize(
    "stop_at",
    [2, 3],
    ids=["after-last-batch-of-epoch", "mid-epoch"],
)
def test_resume_after_preemption_replays_dropout(helpers, tmp_path, stop_at: int) -> None:
    """With LoRA dropout on, a job killed after ``stop_at`` steps and resumed from its latest
    step checkpoint ends with the same weights as an uninterrupted run: the checkpoint's RNG
    state is put back where training continues."""
    overrides = [
        "strategy=lora",
        "strategy.dropout=0.1",
        "trainer.max_steps=4",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.checkpoint.save_top_k=-1",
    ]
    quick = [o for o in helpers.QUICK_FIT if "checkpoint" not in o]

    def cfg(name: str):
        return helpers.compose([*quick, *overrides], tmp_path / name, "causal_lm")

    _, whole = helpers.fit(cfg("whole"))
    with pytest.raises(Preempted):
        helpers.fit(cfg("killed"), callbacks=[_Preempt(stop_at)])
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert _load(ckpt)["global_step"] == stop_at
    _, resumed = helpers.fit(cfg("resumed"), ckpt_path=str(ckpt))
    assert len(resumed.losses) == 4 - stop_at
    assert resumed.losses == whole.losses[stop_at:]
    assert _max_diff(_trainable_end(resumed), _trainable_end(whole)) <= 1e-6


@pytest.mark.parametrize("strategy", ["head", "qlora", "full"])
def test_resume_other_strategies(helpers, tmp_path, strategy: str) -> None:
    """Each strategy's checkpoint restores its own trainable state (head: the untied copy;
    qlora: adapters, with dropout on, over the 4-bit base) exactly."""
    dropout = ["strategy.dropout=0.1"] if strategy == "qlora" else []

    def run(name: str, *extra: str):
        cfg = helpers.compose(
            [f"strategy={strategy}", *RESUME, *dropout, *extra], tmp_path / name, "causal_lm"
        )
        return helpers.train(cfg)

    _, whole = run("whole", "trainer.max_steps=4")
    first, _ = run("first", "trainer.max_steps=2")
    ckpt = Path(first.run_dir) / "checkpoints" / "last.ckpt"
    _, resumed = run("resumed", "trainer.max_steps=4", f"ckpt_path={ckpt}")
    assert resumed.trainable == whole.trainable
    assert _max_diff(_trainable_end(resumed), _trainable_end(whole)) <= 1e-6


# -- atomic writes --------------------------------------------------------------------------
def _torch_save_that_fails(obj, f, *args, **kwargs) -> None:
    f.write(b"half a checkpoint")
    raise OSError("disk full")


def test_checkpoint_write_failure_leaves_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch, "save", _torch_save_that_fails)
    target = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"x": torch.ones(2)}, target)
    assert list(target.parent.iterdir()) == []


def test_checkpoint_write_failure_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)
    before = target.read_bytes()
    monkeypatch.setattr(torch, "save", _torch_save_that_fails)
    with pytest.raises(OSError):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]
    monkeypatch.undo()
    assert _load(target) == {"step": 1}


def test_checkpoint_write_replaces_atomically(tmp_path) -> None:
    target = tmp_path / "last.ckpt"
    for step in (1, 2):
        AtomicCheckpointIO().save_checkpoint({"step": step}, target)
    assert _load(target) == {"step": 2}
    assert os.listdir(tmp_path) == ["last.ckpt"]


def _write_then_fail(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"partial")
    raise RuntimeError("writer crashed")


def test_atomic_dir_failure_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "model"
    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_dir(target, _write_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_failure_keeps_the_previous_folder(tmp_path) -> None:
    target = tmp_path / "model"
    atomic_dir(target, lambda d: (d / "config.json").write_text("old"))
    with pytest.raises(RuntimeError):
        atomic_dir(target, _write_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in target.iterdir()] == ["config.json"]
    assert (target / "config.json").read_text() == "old"


def test_atomic_dir_replaces_the_whole_folder(tmp_path) -> None:
    target = tmp_path / "model"
    atomic_dir(target, lambda d: (d / "stale.bin").write_text("old"))
    atomic_dir(target, lambda d: (d / "config.json").write_text("new"))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in target.iterdir()] == ["config.json"]
