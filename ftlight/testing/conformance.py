"""The conformance suite every strategy plugin runs: one subclass in its test file.

On a tiny causal LM and a tiny encoder classifier it checks what the rest of ftlight relies
on: the conf binds to the constructor; exactly the parameters the strategy reports as
trainable move and the rest stay bitwise unchanged; ``describe`` counts them; a checkpoint
holds only the trainable state and resumes exactly; the export loads with ``transformers``
(and ``peft`` for an adapter) and computes what the trained model computed; and the strategy
trains in two DDP processes on CPU (marked ``distributed``).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from peft import PeftModel

from ftlight.strategies.base import Strategy
from ftlight.testing.helpers import (
    BASE,
    SETUPS,
    NoDropout,
    Probe,
    TrainedRun,
    compose_config,
    isolated_cache,
    setup_overrides,
    train_with_probe,
)
from ftlight.train import train

# Four optimizer steps at a constant, high rate: every trainable tensor certainly moves.
_STEPS = [
    "trainer.max_steps=4",
    "trainer.max_epochs=-1",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
]
_NO_EVAL = ["eval.before=false", "eval.after=false", "eval.export=false"]
#: fp32, and an AdamW eps at which a near-zero gradient's rounding does not become an lr-sized
#: step: two ways of computing a step compare within float summation order
_SAME = [
    "trainer.precision=32-true",
    "optimizer.eps=1e-5",
    "eval.before=false",
    "eval.export=false",
]


def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits.float()


def _constructor_params(cls: type) -> tuple[set[str], bool]:
    """Keyword names the class's constructor takes (following ``**kwargs`` up the MRO)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names - {"self"}, True
    return names - {"self"}, False


def assert_export_matches(trained: TrainedRun, atol: float = 1e-5) -> None:
    """The run's ``model/`` loads with plain ``transformers``, and its ``adapter/`` (if any)
    with ``peft`` over the base, and each computes the logits the trained model computed."""
    module = trained.result.module
    auto = module.task.auto_class()
    model_dir = trained.run_dir / "model"
    assert (model_dir / "config.json").is_file(), "the strategy exported no model/ folder"
    merged = auto.from_pretrained(model_dir)
    logits = _logits(merged, trained.probe.inputs)
    torch.testing.assert_close(logits, trained.probe.logits, atol=atol, rtol=1e-4)
    adapter = trained.run_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        source = instantiate(trained.cfg.model)
        kwargs = {
            **module.strategy.load_kwargs(module.task),
            **module.task.model_kwargs(trained.result.data.labels, trained.result.tokenizer),
        }
        base = auto.from_pretrained(source.resolve(), **kwargs)
        with_adapter = PeftModel.from_pretrained(base, adapter)
        module.strategy.prepare_for_eval(with_adapter)
        logits = _logits(with_adapter, trained.probe.inputs)
        torch.testing.assert_close(logits, trained.probe.logits, atol=atol, rtol=1e-4)


class StrategyConformance:
    """Subclass with ``strategy = "<name>"``; ``overrides`` adds settings to every run."""

    strategy: ClassVar[str] = ""
    #: extra overrides for every run (e.g. ``strategy.compute_dtype=float32``)
    overrides: ClassVar[list[str]] = []
    #: tolerance of the export's logits against the trained model's
    atol: ClassVar[float] = 1e-5
    #: the tiny set-ups to run on: ``SETUPS`` keys, or names given to ``add_setup``
    setups: ClassVar[list[str]] = sorted(SETUPS)

    @pytest.fixture(scope="class", autouse=True)
    def _cache(self, tmp_path_factory: pytest.TempPathFactory) -> Any:
        with isolated_cache(tmp_path_factory.mktemp("ftlight-cache")) as folder:
            yield folder

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Run each test that takes ``setup_name`` once per set-up in ``setups``."""
        if "setup_name" in metafunc.fixturenames:
            metafunc.parametrize("setup_name", list(self.setups), scope="class")

    def _cfg(self, tmp: Path, setup_name: str | None, *extra: str) -> Any:
        overrides = [f"strategy={self.strategy}", *self.overrides, *extra]
        return compose_config(overrides, tmp, setup_name)

    @pytest.fixture(scope="class")
    def trained(self, setup_name: str, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
        """One full run (evaluation, checkpoints, export) of four steps."""
        run_dir = tmp_path_factory.mktemp(f"{self.strategy}-{setup_name}")
        cfg = self._cfg(run_dir, setup_name, *_STEPS)
        result, probe = train_with_probe(cfg)
        return TrainedRun(self.strategy, setup_name, cfg, result, probe)

    # -- the contract ---------------------------------------------------------------------
    def test_conf_binds_to_the_constructor(self, tmp_path: Path) -> None:
        """``strategy=<name>`` composes, its keys are constructor arguments, it builds a
        ``Strategy`` whose ``name`` is the one it is selected by."""
        cfg = self._cfg(tmp_path, None)
        node = OmegaConf.to_container(cfg.strategy, resolve=True)
        target = node.pop("_target_")
        strategy = instantiate(cfg.strategy)
        assert isinstance(strategy, Strategy), f"{target} does not build a Strategy"
        assert strategy.name == self.strategy
        params, closed = _constructor_params(type(strategy))
        if closed:
            assert set(node) <= params, f"conf keys {set(node) - params} are not arguments"

    def test_trainable_parameters_move_and_the_rest_do_not(self, trained: TrainedRun) -> None:
        probe = trained.probe
        assert probe.trainable, "the strategy left nothing to train"
        moved = {n for n in probe.start if not torch.equal(probe.start[n], probe.end[n])}
        assert moved == probe.trainable
        assert set(probe.end) - set(probe.start) == set(), "parameters appeared during training"

    def test_describe_counts_what_trains(self, trained: TrainedRun) -> None:
        probe = trained.probe
        trainable = sum(probe.end[n].numel() for n in probe.trainable)
        assert probe.counts["trainable"] == trainable
        assert probe.counts["total"] >= trainable
        metrics = json.loads((trained.run_dir / "metrics.json").read_text())
        assert metrics["params"] == {
            "trainable": probe.counts["trainable"],
            "total": probe.counts["total"],
        }
        assert metrics["strategy"] == self.strategy

    def test_checkpoint_holds_only_the_trainable_state(self, trained: TrainedRun) -> None:
        ckpt = torch.load(
            trained.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
        assert set(ckpt["state_dict"]) == {f"model.{n}" for n in trained.probe.trainable}
        for name, tensor in ckpt["state_dict"].items():
            torch.testing.assert_close(tensor, trained.probe.end[name.removeprefix("model.")])

    def test_resume_is_exact(self, setup_name: str, tmp_path: Path) -> None:
        """Two steps, then ``ckpt_path=`` on to four: the weights of four steps in one go."""

        def run(name: str, *extra: str) -> Any:
            cfg = self._cfg(tmp_path / name, setup_name, *_STEPS, *_NO_EVAL, *extra)
            return train_with_probe(cfg)

        _, whole = run("whole")
        first, _ = run("first", "trainer.max_steps=2")
        ckpt = Path(first.run_dir) / "checkpoints" / "last.ckpt"
        resumed, probe = run("resumed", f"ckpt_path={ckpt}")
        assert resumed.trainer.global_step == 4
        assert len(probe.losses) == 2, "the resumed run restarted instead of continuing"
        assert probe.trainable == whole.trainable
        for name in whole.trainable:
            torch.testing.assert_close(probe.end[name], whole.end[name], atol=1e-6, rtol=0)

    def test_speed_plain_trains_the_same(self, setup_name: str, tmp_path: Path) -> None:
        """``speed=plain`` (every speed part off, the strategy's own too): the same losses, the
        same trained weights and the same scores after training as ``speed=auto``."""
        runs = {}
        for speed in ("auto", "plain"):
            cfg = self._cfg(tmp_path / speed, setup_name, *_STEPS, *_SAME, f"speed={speed}")
            probe = Probe()
            train(cfg, callbacks=[NoDropout(), probe])
            runs[speed] = probe, json.loads((tmp_path / speed / "metrics.json").read_text())
        (auto, auto_scores), (plain, plain_scores) = runs["auto"], runs["plain"]
        torch.testing.assert_close(
            torch.tensor(auto.losses), torch.tensor(plain.losses), rtol=1e-4, atol=1e-6
        )
        assert auto.trainable == plain.trainable
        for name in auto.trainable:
            torch.testing.assert_close(auto.end[name], plain.end[name], atol=1e-4, rtol=1e-3)
        for key, value in auto_scores["after"].items():
            assert value == pytest.approx(plain_scores["after"][key], rel=1e-4, abs=1e-6), key

    def test_export_loads_and_matches_the_trained_model(self, trained: TrainedRun) -> None:
        assert_export_matches(trained, self.atol)

    @pytest.mark.distributed
    def test_trains_in_two_ddp_processes(self, tmp_path: Path) -> None:
        run = tmp_path / "run"
        cmd = [
            sys.executable,
            "-m",
            "ftlight",
            f"strategy={self.strategy}",
            *self.overrides,
            *[o for o in BASE if "progress_bar" not in o and not o.startswith("trainer=")],
            *setup_overrides(self.setups[0]),
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=4",
            "trainer.max_epochs=-1",
            f"hydra.run.dir={run}",
        ]
        env = {**os.environ, "FTLIGHT_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["strategy"] == self.strategy
        assert metrics["train"]["steps"] == 4
        assert (run / "model" / "config.json").is_file()
