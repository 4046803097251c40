"""Shared test helpers: compose a config, train tiny models, record weights and logits.

The helpers themselves live in ``ftlight.testing`` (the strategy plugins' tests and their
conformance suite use them too); the fixtures here apply to ``tests/``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import DictConfig

from ftlight.testing import (
    BASE,
    QUICK_FIT,
    SETUPS,
    Probe,
    TrainedRun,
    add_setup,
    compose_config,
    eval_logits,  # noqa: F401  (tests import it from here)
    fit,
    isolated_cache,
    snapshot,  # noqa: F401
    train_with_probe,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The two task set-ups every strategy is tested on (``ftlight.testing.SETUPS``, by task).
TASKS = {"causal_lm": SETUPS["tiny-llama"], "classification": SETUPS["tiny-bert"]}
for _task, _overrides in TASKS.items():
    add_setup(_task, _overrides)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def ftlight_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tiny models are built once per session into a temporary ``FTLIGHT_CACHE``.

    Torch runs single-threaded: the tiny models are faster that way and the test machines
    have two shared cores.
    """
    with isolated_cache(tmp_path_factory.getbasetemp() / "ftlight-cache") as cache:
        yield cache


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Each test leaves logging as it found it.

    A command run in this process lets Hydra configure logging: its handlers write to the
    stream pytest captured for that test, closed once the test ends, and a later test's log
    call would fail on it.
    """
    loggers = [logging.getLogger(), *map(logging.getLogger, ("ftlight", "lightning", "hydra"))]
    kept = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in kept:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


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
    """``python -m ftlight`` calls running in the background; ``runs[name]`` waits for one.

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
                cmd = [sys.executable, "-m", "ftlight", *args]
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
    """The background ``python -m ftlight`` calls: ``help``, ``cfg_job``, ``train``."""
    assert _cli_in_background is not None
    return _cli_in_background
