"""``FineTuneModule``: what it optimises, in which mode it trains, its learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ftlight.errors import ConfigError
from ftlight.module import FineTuneModule
from ftlight.optim import WarmupSchedule
from ftlight.strategies import Strategy
from ftlight.tasks import CausalLMTask

MATRIX = [
    (s, t) for s in ("full", "head", "lora", "qlora") for t in ("causal_lm", "classification")
]


@pytest.mark.parametrize(
    ("strategy", "task"),
    [
        ("full", "causal_lm"),
        ("head", "causal_lm"),
        ("lora", "classification"),
        ("qlora", "causal_lm"),
    ],
)
def test_optimizer_holds_exactly_the_trainable_parameters(helpers, tmp_path, strategy, task):
    """One id per trainable parameter, nothing frozen; matrices decay at
    ``optimizer.weight_decay``, biases and norms do not decay."""
    cfg = helpers.compose(
        [
            f"strategy={strategy}",
            *helpers.QUICK_FIT,
            "trainer.max_steps=1",
            "optimizer.weight_decay=0.1",
        ],
        tmp_path,
        task,
    )
    run, _ = helpers.fit(cfg)
    (optimizer,) = run.trainer.optimizers
    named = dict(run.module.model.named_parameters())
    trainable = {id(p) for p in named.values() if p.requires_grad}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == trainable
    name_of = {id(p): n for n, p in named.items()}

    def exempt(p: torch.Tensor) -> bool:
        return p.ndim < 2 or "norm" in name_of[id(p)].lower()

    rates = {g["weight_decay"]: [exempt(p) for p in g["params"]] for g in optimizer.param_groups}
    exempt_trains = any(exempt(p) for p in named.values() if p.requires_grad)
    assert set(rates) == ({0.1, 0.0} if exempt_trains else {0.1})
    assert not any(rates[0.1]) and all(rates.get(0.0, []))


def test_no_trainable_parameters_is_an_error() -> None:
    class FreezeAll(Strategy):
        name = "freeze-all"

        def apply(self, model, task):
            model.requires_grad_(False)
            return model

    module = FineTuneModule(nn.Linear(2, 2), FreezeAll(), CausalLMTask(), torch.optim.AdamW)
    module.configure_model()
    with pytest.raises(ConfigError, match="strategy=freeze-all left no trainable parameters"):
        module.configure_optimizers()


@pytest.mark.parametrize(("strategy", "task"), MATRIX)
def test_every_layer_trains_in_train_mode(trained, strategy: str, task: str) -> None:
    """``from_pretrained`` returns eval-mode models and Lightning keeps each module's mode:
    without care, dropout would stay off for the whole fine-tuning (and an evaluation before
    training must not leave anything in eval mode either)."""
    assert trained(strategy, task).probe.eval_mode_modules == []


def test_bf16_mixed_on_cpu(helpers, tmp_path) -> None:
    cfg = helpers.compose(
        [
            "strategy=full",
            *helpers.QUICK_FIT,
            "trainer.max_steps=4",
            "trainer.precision=bf16-mixed",
        ],
        tmp_path,
        "causal_lm",
    )
    dtypes: list[torch.dtype] = []

    def record(module, args, output):
        dtypes.append(output.dtype)

    from ftlight.build import build_run

    run = build_run(cfg)
    run.module.model.lm_head.register_forward_hook(record)
    probe = helpers.Probe()
    run.trainer.callbacks.append(probe)
    run.trainer.fit(run.module, datamodule=run.data)
    assert run.trainer.precision == "bf16-mixed"
    assert dtypes and set(dtypes[:4]) == {torch.bfloat16}  # the matmuls ran in bf16
    assert {p.dtype for p in run.module.model.parameters()} == {torch.float32}  # master weights
    assert all(math.isfinite(x) for x in probe.losses)
    first, last = probe.epoch_mean_losses()
    assert last < first
    assert any(not torch.equal(probe.start[n], probe.end[n]) for n in probe.trainable)


# -- learning-rate schedules ----------------------------------------------------------------
def _multipliers(schedule: WarmupSchedule, total: int) -> list[float]:
    """The rate multiplier of every optimizer step 0..total, through a real LambdaLR."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = schedule(optimizer, total)
    out = []
    for _ in range(total + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


# warmup_steps=2 of total=10: steps 0 and 1 ramp up as (step+1)/(warmup+1); from step 2 the
# decay runs over the remaining 8 steps, progress p = (step-2)/8.
@pytest.mark.parametrize(
    ("kind", "min_lr_ratio", "expected"),
    [
        ("constant", 0.0, {0: 1 / 3, 1: 2 / 3, 2: 1.0, 6: 1.0, 10: 1.0}),
        ("linear", 0.0, {0: 1 / 3, 2: 1.0, 4: 0.75, 6: 0.5, 10: 0.0}),
        # cosine: 0.5 * (1 + cos(pi * p)); p = 1/4 at step 4 gives 0.5 + 0.5 * sqrt(2)/2
        ("cosine", 0.0, {1: 2 / 3, 2: 1.0, 4: 0.5 + math.sqrt(2) / 4, 6: 0.5, 10: 0.0}),
        # floor + (1 - floor) * cosine: 0.1 + 0.9 * 0.5 = 0.55 half-way
        ("cosine", 0.1, {2: 1.0, 6: 0.55, 10: 0.1}),
        ("linear", 0.2, {6: 0.6, 10: 0.2}),
    ],
)
def test_schedule_multipliers(kind: str, min_lr_ratio: float, expected: dict[int, float]):
    schedule = WarmupSchedule(kind=kind, warmup_steps=2, min_lr_ratio=min_lr_ratio)
    got = _multipliers(schedule, total=10)
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, abs=1e-12), step


def test_warmup_ratio_counts_steps_of_the_run() -> None:
    """warmup_ratio=0.1 of 20 steps: 2 warmup steps."""
    got = _multipliers(WarmupSchedule(kind="cosine", warmup_ratio=0.1), total=20)
    assert got[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert got[20] == pytest.approx(0.0, abs=1e-12)


def test_cosine_decays_monotonically() -> None:
    got = _multipliers(WarmupSchedule(kind="cosine", warmup_steps=3), total=50)
    assert got[:4] == sorted(got[:4])
    assert got[3:] == sorted(got[3:], reverse=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "step"}, "'step' is not one of cosine, linear, constant"),
        ({"warmup_ratio": 1.0}, "warmup_ratio=1.0 must be in"),
    ],
)
def test_bad_schedule_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WarmupSchedule(**kwargs)


# -- step trade-offs: activation checkpointing and torch.compile ---------------------------

STEP_RUN = [
    "eval.before=false",
    "eval.after=false",
    "eval.export=false",
    "trainer.max_steps=2",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
    "callbacks.checkpoint=null",
    "trainer.enable_checkpointing=false",
]


def _trained_weights(helpers, tmp_path, *extra: str) -> tuple[dict, list[float]]:
    cfg = helpers.compose([*STEP_RUN, *extra], tmp_path, "causal_lm")
    _, probe = helpers.fit(cfg)
    trained = {n: probe.end[n] for n in probe.trainable}
    return trained, probe.losses


def test_activation_checkpointing_trains_identically(helpers, tmp_path) -> None:
    """Recomputing block activations in backward changes memory, not results."""
    # checkpointed steps run every row whole: so does the plain run compared with them
    plain, plain_losses = _trained_weights(helpers, tmp_path / "plain", "speed.share_prefix=false")
    ckpt, ckpt_losses = _trained_weights(
        helpers, tmp_path / "ckpt", "speed.activation_checkpointing=true"
    )
    assert ckpt_losses == pytest.approx(plain_losses, abs=1e-6)
    assert ckpt.keys() == plain.keys() and plain
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_activation_checkpointing_is_on_in_training(helpers, tmp_path) -> None:
    cfg = helpers.compose([*STEP_RUN, "speed.activation_checkpointing=true"], tmp_path, "causal_lm")
    run, _ = helpers.fit(cfg)
    base = run.module.model.get_base_model()
    assert base.is_activation_checkpointing


def test_recomputed_activations_train_like_kept_ones(helpers, tmp_path) -> None:
    """``recompute_activation`` (the default) changes what a step keeps, not its results."""
    cfg = helpers.compose(STEP_RUN, tmp_path / "on", "causal_lm")
    run, probe = helpers.fit(cfg)
    assert run.module.installed.recomputed_mlps == 2  # the tiny Llama's two MLPs
    kept, kept_losses = _trained_weights(
        helpers, tmp_path / "off", "speed.recompute_activation=false"
    )
    assert kept_losses == pytest.approx(probe.losses, abs=1e-6)
    for name in kept:
        torch.testing.assert_close(probe.end[name], kept[name], rtol=1e-5, atol=1e-6, msg=name)
    cfg = helpers.compose(
        [*STEP_RUN, "speed.activation_checkpointing=true"], tmp_path / "ck", "causal_lm"
    )
    run, _ = helpers.fit(cfg)
    assert (
        run.module.installed.recomputed_mlps == 0
    )  # checkpointed blocks recompute everything anyway


def test_activation_checkpointing_needs_model_support(helpers, tmp_path) -> None:
    from ftlight.speed.install import enable_activation_checkpointing

    with pytest.raises(ConfigError, match="speed.activation_checkpointing=false"):
        enable_activation_checkpointing(nn.Linear(2, 2))


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones(helpers, tmp_path) -> None:
    """torch.compile of each block (dynamic shapes) gives the eager losses and weights."""
    eager, eager_losses = _trained_weights(helpers, tmp_path / "eager")
    compiled, compiled_losses = _trained_weights(
        helpers, tmp_path / "compiled", "speed.compile=true"
    )
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compiled_blocks_evaluate_eagerly(helpers, tmp_path) -> None:
    """Evaluation (loss and generation) must not compile its own shapes: it runs eagerly."""
    from torch._dynamo.utils import counters

    # start from empty compile caches: an earlier test's compiled blocks (same structure)
    # would otherwise serve this fit too, and it would compile nothing
    torch._dynamo.reset()
    counters.clear()
    cfg = helpers.compose([*STEP_RUN, "speed.compile=true"], tmp_path, "causal_lm")
    run, _ = helpers.fit(cfg)
    frames = counters["frames"]["total"]
    assert frames > 0  # the fit compiled the blocks
    run.module.generate_in_eval = True  # with greedy generation, as evaluation runs it
    (metrics,) = run.trainer.validate(run.module, datamodule=run.data, verbose=False)
    assert counters["frames"]["total"] == frames
    assert "val/exact_match" in metrics
