"""Settings that would make training a no-op or absurd, one row each: refused with the bad value
and the fix before any model weights load, and the run folder keeps what it held."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftlight.errors import ConfigError
from ftlight.models.sources import HFModel
from ftlight.train import train


@dataclass(frozen=True)
class Case:
    """One setting; ``says``: texts the message must contain (the bad value and the fix)."""

    overrides: tuple[str, ...]
    says: tuple[str, ...]


CASES = {
    "lora-alpha-zero": Case(
        ("strategy=lora", "strategy.alpha=0"),
        ("strategy.alpha=0 scales every adapter to zero", "strategy.alpha=null"),
    ),
    # the tiny Llama is 32 wide, its key/value projections 16 (two heads of 8 dimensions)
    "lora-rank-above-every-layer": Case(
        ("strategy=lora", "strategy.r=100000"),
        ("strategy.r=100000 is above the rank of every layer it adapts", "strategy.r=32 at most"),
    ),
    "lora-rank-above-the-named-layers": Case(
        ("strategy=lora", "strategy.r=20", "strategy.target_modules=[k_proj,v_proj]"),
        ("strategy.r=20 is above", "k_proj, 16 wide", "strategy.r=16 at most"),
    ),
    "warmup-longer-than-max-steps": Case(
        ("trainer.max_steps=4", "trainer.max_epochs=-1", "scheduler.warmup_steps=1000"),
        (
            "scheduler.warmup_steps=1000 is not shorter than the run's 4 optimizer steps",
            "never leave warm-up",
            "scheduler.warmup_ratio=0.05",
        ),
    ),
    # 16 training rows in batches of 8: two optimizer steps an epoch
    "warmup-as-long-as-the-epochs": Case(
        ("trainer.max_steps=-1", "trainer.max_epochs=2", "scheduler.warmup_steps=4"),
        ("scheduler.warmup_steps=4 is not shorter than the run's 4 optimizer steps",),
    ),
    "warmup-longer-with-accumulation": Case(
        (
            *("trainer.max_steps=-1", "trainer.max_epochs=3"),
            *("trainer.accumulate_grad_batches=2", "scheduler.warmup_steps=3"),
        ),
        ("the run's 3 optimizer steps",),
    ),
    "best-without-validation": Case(
        ("eval.best=true", "trainer.limit_val_batches=0"),
        ("eval.best=true", "trainer.limit_val_batches=0 runs none", "eval.best=false"),
    ),
    "best-not-a-boolean": Case(("eval.best=yes",), ("'yes' must be true or false",)),
}


def _contents(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", list(CASES))
def test_setting_is_refused_before_any_weights_load(
    name: str, compose, tmp_path: Path, monkeypatch
) -> None:
    case = CASES[name]
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    before = _contents(run)
    loads: list = []

    def load(self, *args, **kwargs):
        loads.append(args)
        raise AssertionError("model weights were loaded before the error was raised")

    monkeypatch.setattr(HFModel, "load", load)
    cfg = compose(list(case.overrides), run, "causal_lm")
    with pytest.raises(ConfigError) as info:
        train(cfg)
    for text in case.says:
        assert text in str(info.value), str(info.value)
    assert loads == []
    after = _contents(run)
    assert {k: after.get(k) for k in before} == before


@pytest.mark.parametrize(
    "overrides",
    [
        ("trainer.max_steps=5", "trainer.max_epochs=-1", "scheduler.warmup_steps=4"),
        ("trainer.max_steps=-1", "trainer.max_epochs=2", "scheduler.warmup_steps=3"),
        ("strategy=lora", "strategy.r=32"),
        ("strategy=lora", "strategy.r=16", "strategy.target_modules=[k_proj,v_proj]"),
    ],
)
def test_the_settings_just_inside_pass_the_checks(compose, tmp_path: Path, overrides) -> None:
    """One step shorter than the run, a rank equal to the widest layer: the checks let them
    through (the data and model checks run; the weights are never loaded)."""
    from ftlight.build import build_parts

    build_parts(compose(list(overrides), tmp_path / "run", "causal_lm"))
