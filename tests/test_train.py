"""``train(cfg)`` end to end: the run folder and ``metrics.json`` (DESIGN.md section 6)."""

from __future__ import annotations

import json
import math
import sys

import pytest

STRATEGIES = ("full", "head", "lora", "qlora")
TASKS = ("causal_lm", "classification")
ADAPTERS = {"lora", "qlora"}
METRICS = {
    # general/*: perplexity on the built-in general text (eval.general=builtin), for forgetting
    "causal_lm": {
        "loss",
        "perplexity",
        "token_accuracy",
        "exact_match",
        "general/loss",
        "general/perplexity",
    },
    "classification": {"loss", "accuracy", "f1_macro"},
}
MATRIX = [(s, t) for s in STRATEGIES for t in TASKS]


@pytest.mark.parametrize(("strategy", "task"), MATRIX)
def test_metrics_json(trained, strategy: str, task: str) -> None:
    run = trained(strategy, task)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["strategy"] == strategy
    assert metrics["task"] == task
    params = metrics["params"]
    assert set(params) == {"trainable", "total"}
    assert all(type(v) is int for v in params.values())
    # what the strategy reported for the trained model (exact counts: the plugins' tests)
    assert params == {k: run.probe.counts[k] for k in ("trainable", "total")}
    assert 0 < params["trainable"] <= params["total"]
    for phase in ("before", "after"):
        values = metrics[phase]
        assert set(values) == METRICS[task], phase
        assert all(type(v) is float and math.isfinite(v) for v in values.values()), values
    assert metrics["train"]["steps"] == 4
    phases = metrics["phases"]  # every phase of this run, timed, and only this run's
    assert {"evaluate before training", "train", "evaluate after training", "export"} <= set(phases)
    assert all(p["seconds"] >= 0 for p in phases.values())
    if sys.platform == "linux":
        assert all(p["peak_rss_mb"] > 100 for p in phases.values())


@pytest.mark.parametrize(("strategy", "task"), MATRIX)
def test_run_folder(trained, strategy: str, task: str) -> None:
    run = trained(strategy, task)
    names = {p.name for p in run.run_dir.iterdir()}
    assert {"checkpoints", "metrics.json", "model"} <= names
    assert ("adapter" in names) == (strategy in ADAPTERS)
    assert (run.run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run.run_dir / "model" / "config.json").is_file()
    expected = {"model": run.run_dir / "model"}
    if strategy in ADAPTERS:
        expected["adapter"] = run.run_dir / "adapter"
        assert (run.run_dir / "adapter" / "adapter_config.json").is_file()
    assert run.result.exports == expected
    exported = json.loads((run.run_dir / "metrics.json").read_text())["exports"]
    assert exported == {k: str(v) for k, v in expected.items()}
    assert not [n for n in names if n.startswith(".") and "tmp" in n]  # no half-written export


def test_evaluation_sees_the_training(trained) -> None:
    """Full fine-tuning at lr 1e-2 on the training prompts lowers the held-out loss."""
    metrics = trained("full", "causal_lm").result.metrics
    assert metrics["after"]["loss"] < metrics["before"]["loss"] - 0.1


def test_scheduler_steps_once_per_optimizer_step(trained) -> None:
    """Cosine to zero over ``trainer.max_steps``: after the last step the rate is 0."""
    trainer = trained("full", "causal_lm").result.trainer
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == trainer.global_step == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_optimizer_state_is_freed_after_fit_and_kept_in_the_checkpoint(trained) -> None:
    """AdamW's moments are not held through the evaluation after training and the export;
    the last checkpoint still has them, one pair per trained tensor."""
    import torch

    run = trained("full", "causal_lm")
    optimizer = run.result.trainer.optimizers[0]
    assert len(optimizer.state) == 0
    assert all(p.grad is None for group in optimizer.param_groups for p in group["params"])
    saved = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state = saved["optimizer_states"][0]["state"]
    trained_tensors = sum(len(group["params"]) for group in optimizer.param_groups)
    assert len(state) == trained_tensors > 0
    assert all({"exp_avg", "exp_avg_sq"} <= set(s) for s in state.values())


@pytest.mark.parametrize(("epochs", "fit_validations"), [(1, 0), (2, 2)])
def test_one_epoch_fit_leaves_validation_to_the_evaluation_after(
    helpers, tmp_path, epochs: int, fit_validations: int
) -> None:
    """A one-epoch fit would validate once, at its end, on the split the evaluation after
    training scores at the same step: that pass is skipped. Longer fits keep theirs."""
    cfg = helpers.compose(
        [f"trainer.max_epochs={epochs}", "eval.export=false", "callbacks.checkpoint=null",
         "trainer.enable_checkpointing=false"],
        tmp_path,
        "causal_lm",
    )  # fmt: skip
    result, probe = helpers.train(cfg)
    assert probe.fit_validations == fit_validations
    assert result.trainer.limit_val_batches == 1.0  # restored for later evaluations
    after = result.metrics["after"]
    assert math.isfinite(after["loss"]) and "exact_match" in after
    monitor = next(cb for cb in result.trainer.callbacks if hasattr(cb, "val_losses"))
    steps = [step for step, _ in monitor.val_losses]
    final = result.trainer.global_step
    # one point per pass: before (step 0), each epoch end in fit, after (final step)
    expected = {1: [0, final], 2: [0, final // 2, final, final]}[epochs]
    assert steps == expected


def test_command_line_run_folder(cli) -> None:
    """Launched through the CLI, the run folder also holds Hydra's ``.hydra/``."""
    result = cli["train"]
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = cli.root / "run"
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (run_dir / ".hydra" / name).is_file(), name
    for name in ("checkpoints/last.ckpt", "metrics.json", "model/config.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "adapter" / "adapter_config.json").is_file()  # default strategy: lora
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["strategy"], metrics["task"]) == ("lora", "causal_lm")
    assert metrics["train"]["steps"] == 2
    assert "trainer.max_steps=2" in (run_dir / ".hydra" / "overrides.yaml").read_text()
