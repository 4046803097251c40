"""Shared test helpers: compose a config, train tiny models, record weights and logits.

Fixtures here apply to ``tests/``; the strategy plugins' tests (``plugins/*/tests``) load this
file by path for the same helpers, because pytest applies a conftest only below its folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

import ftlight.train  # noqa: F401  (registers the plugin search path and the resolvers)
from ftlight.config import CONF_DIR

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Deterministic, quiet, fast: fp32 on CPU, no progress bar, no logger files, no PNG plots.
BASE = [
    "trainer=cpu",
    "trainer.precision=32-true",
    "callbacks.progress=null",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "logger=none",
    "eval.plots=false",
]
# The two task set-ups every strategy is tested on.
TASKS = {
    "causal_lm": [
        "model=tiny-llama",
        "task=causal_lm",
        "data=local",
        f"data.train_path={FIXTURES / 'alpaca_train.jsonl'}",
        f"data.val_path={FIXTURES / 'alpaca_val.jsonl'}",
        "task.max_new_tokens=8",
    ],
    "classification": [
        "model=tiny-bert",
        "task=classification",
        "data=local",
        "data.format=text_label",
        f"data.train_path={FIXTURES / 'reviews_train.csv'}",
        f"data.val_path={FIXTURES / 'reviews_val.tsv'}",
    ],
}
# Short fits that certainly move the weights: a high constant learning rate, no validation
# or checkpoints during the fit.
QUICK_FIT = [
    "trainer.max_epochs=-1",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
    "trainer.check_val_every_n_epoch=1000",
    "callbacks.checkpoint=null",
    "trainer.enable_checkpointing=false",
]


def compose_config(overrides: list[str], tmp_path: Path, task: str | None = None) -> DictConfig:
    """The composed ``config`` for a test run writing into ``tmp_path``.

    ``task`` ("causal_lm" or "classification") adds the tiny model and fixture data for it;
    ``overrides`` come last, so they win.
    """
    preset = TASKS[task] if task else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(
            config_name="config",
            overrides=[*BASE, *preset, f"run_dir={tmp_path}", *overrides],
            return_hydra_config=True,
        )


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter (packed 4-bit weights as stored)."""
    return {name: p.data.detach().clone() for name, p in model.named_parameters()}


def eval_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of ``model`` in eval mode, leaving every module's mode as it was."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    with torch.no_grad():
        out = model(**inputs).logits.float().clone()
    for m, training in modes.items():
        m.train(training)
    return out


class Probe(L.Callback):
    """Records what a run's model looked like: weights before and after training, the
    trainable names and counts, per-step losses, and logits on the first validation batch
    at the end of training (before any export merges adapters)."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}
        self.trainable: set[str] = set()
        self.counts: dict[str, Any] = {}
        self.losses: list[float] = []
        self.inputs: dict[str, torch.Tensor] = {}
        self.logits: torch.Tensor | None = None
        self.eval_mode_modules: list[str] | None = None
        self.fit_validations = 0  # validation passes run by fit() itself

    def _record_start(self, module: L.LightningModule) -> None:
        if not self.start:  # the first evaluation or fit, right after the strategy was applied
            self.start = snapshot(module.model)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Before an evaluation that precedes training (or one that fit() runs)."""
        self._record_start(module)
        if trainer.state.fn == "fit":
            self.fit_validations += 1

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Before the first training step."""
        self._record_start(module)

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, i: int
    ) -> None:
        """Which modules are in eval mode when training starts (there should be none)."""
        if self.eval_mode_modules is None:
            self.eval_mode_modules = [n for n, m in module.named_modules() if not m.training]

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        """The micro-batch loss."""
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """The trained state, as the run holds it in memory."""
        model = module.model
        self.end = snapshot(model)
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.counts = module.strategy.describe(model)
        batch = next(iter(trainer.datamodule.val_dataloader()))
        keys = ("input_ids", "attention_mask", "token_type_ids")
        self.inputs = {k: batch[k] for k in keys if k in batch}
        # under the run's precision (bf16-mixed keeps frozen weights in bf16 for autocast)
        with trainer.precision_plugin.forward_context():
            self.logits = eval_logits(model, self.inputs)

    def epoch_mean_losses(self, batches_per_epoch: int = 2) -> tuple[float, float]:
        """Mean training loss of the first and of the last epoch (the same batches)."""
        first, last = self.losses[:batches_per_epoch], self.losses[-batches_per_epoch:]
        return sum(first) / len(first), sum(last) / len(last)


def fit(
    cfg: DictConfig, callbacks: Sequence[L.Callback] = (), ckpt_path: str | None = None
) -> tuple[Any, Probe]:
    """Build a run from ``cfg`` and fit it (no evaluation before or after, no export)."""
    from ftlight.assemble import build_run

    L.seed_everything(cfg.seed, verbose=False)
    run = build_run(cfg)
    probe = Probe()
    run.trainer.callbacks.extend([probe, *callbacks])
    run.trainer.fit(run.module, datamodule=run.data, ckpt_path=ckpt_path)
    return run, probe


def train_with_probe(cfg: DictConfig) -> tuple[Any, Probe]:
    """``ftlight.train.train(cfg)`` with a ``Probe`` attached to its trainer."""
    import ftlight.assemble
    from ftlight.train import train

    probe = Probe()
    build = ftlight.assemble.build_run

    def build_with_probe(cfg: DictConfig) -> Any:
        run = build(cfg)
        run.trainer.callbacks.append(probe)
        return run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ftlight.assemble, "build_run", build_with_probe)
        result = train(cfg)
    return result, probe


@dataclass
class TrainedRun:
    """A finished ``train(cfg)`` run and what its probe recorded."""

    strategy: str
    task: str
    cfg: DictConfig
    result: Any
    probe: Probe
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.result.run_dir)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def ftlight_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tiny models are built once per session into a temporary ``FTLIGHT_CACHE``.

    Torch runs single-threaded: the tiny models are faster that way and the test machines
    have two shared cores.
    """
    cache = tmp_path_factory.getbasetemp() / "ftlight-cache"
    saved = {k: os.environ.get(k) for k in ("FTLIGHT_CACHE", "TOKENIZERS_PARALLELISM")}
    os.environ["FTLIGHT_CACHE"] = str(cache)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cache
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def compose() -> Callable[..., DictConfig]:
    """``compose(overrides, tmp_path, task=None)``: see ``compose_config``."""
    return compose_config


@pytest.fixture(scope="session")
def tiny_chat_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a chat template (a local folder), built once per session."""
    from ftlight.models.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-chat-llama"),
        arch="llama",
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_positions=512,
        chat_template=True,
        seed=0,
    )


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """This file's helpers, for tests that drive runs themselves."""
    return SimpleNamespace(
        compose=compose_config,
        fit=fit,
        train=train_with_probe,
        Probe=Probe,
        QUICK_FIT=QUICK_FIT,
    )


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The folder of data fixtures."""
    return FIXTURES


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], TrainedRun]:
    """``trained(strategy, task)``: one full ``train(cfg)`` run per pair, shared by the session.

    Four optimizer steps (two epochs of two batches) at lr 1e-2 with evaluation before and
    after, checkpoints and export. QLoRA computes in float32 here so that its merged export
    can be compared with the in-memory model tightly.
    """
    runs: dict[tuple[str, str], TrainedRun] = {}

    def get(strategy: str, task: str) -> TrainedRun:
        if (strategy, task) not in runs:
            run_dir = tmp_path_factory.mktemp(f"run-{strategy}-{task}")
            overrides = [
                f"strategy={strategy}",
                "trainer.max_steps=4",
                "trainer.max_epochs=-1",
                "optimizer.lr=1e-2",
            ]
            if strategy == "qlora":
                overrides.append("strategy.compute_dtype=float32")
            cfg = compose_config(overrides, run_dir, task)
            result, probe = train_with_probe(cfg)
            runs[strategy, task] = TrainedRun(strategy, task, cfg, result, probe)
        return runs[strategy, task]

    return get


class CliRuns:
    """``python -m ftlight.train`` calls running in the background; ``runs[name]`` waits for one.

    ``root`` is their working directory; the ``train`` call writes its run into ``root/run``.
    """

    def __init__(self, root: Path, calls: dict[str, list[str]]) -> None:
        self.root = root
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("HYDRA_FULL_ERROR", None)
        self._procs: dict[str, subprocess.Popen] = {}
        for name, args in calls.items():
            # files, not pipes: a pipe that nobody reads yet could fill up and stall the process
            with open(root / f"{name}.out", "w") as out, open(root / f"{name}.err", "w") as err:
                cmd = [sys.executable, "-m", "ftlight.train", *args]
                self._procs[name] = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=err)

    def __getitem__(self, name: str) -> subprocess.CompletedProcess:
        proc = self._procs[name]
        code = proc.wait(timeout=300)
        out, err = ((self.root / f"{name}.{ext}").read_text() for ext in ("out", "err"))
        return subprocess.CompletedProcess(proc.args, code, out, err)

    def stop(self) -> None:
        """End the calls still running (a session that stopped early)."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _cli_in_background(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ftlight_cache: Path
) -> Iterator[CliRuns | None]:
    """Start the command-line calls when the session starts, if any collected test wants them.

    Each spends ~8 s importing torch and Lightning; in the background they use the core that
    the single-threaded tests leave free.
    """
    if not any("cli" in item.fixturenames for item in request.session.items):
        yield None
        return
    root = tmp_path_factory.mktemp("cli")
    llama = TASKS["causal_lm"]
    runs = CliRuns(
        root,
        {
            "help": ["--help"],
            "cfg_job": ["--cfg", "job", "model=tiny-llama"],
            "train": [*llama, *BASE, "trainer.max_steps=2", f"hydra.run.dir={root / 'run'}"],
        },
    )
    yield runs
    runs.stop()


@pytest.fixture(scope="session")
def cli(_cli_in_background: CliRuns | None) -> CliRuns:
    """The background ``python -m ftlight.train`` calls: ``help``, ``cfg_job``, ``train``."""
    assert _cli_in_background is not None
    return _cli_in_background
