"""Weights & Biases, offline: one W&B run per run and per sweep trial (finished at its end),
named after the trial, with the config the run used (interpolations resolved); every attempt of
a run continues its W&B run (the requeued SLURM trials of ``test_slurm.py`` check that too)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import ftlight.loggers as loggers
from ftlight.loggers import WandbLogger, finish_wandb, resolved_config, wandb_run_id
from ftlight.redact import MASK
from ftlight.testing import QUICK_RUN, setup_overrides


def wandb_records(path: Path) -> Iterator[object]:
    """The records of an offline run's ``.wandb`` file (LevelDB log blocks of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_run(path: Path) -> tuple[object, dict]:
    """An offline run's ``RunRecord`` and the config it logged."""
    run, config = None, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        if kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    return run, config


def test_every_attempt_of_a_run_has_one_id_and_other_runs_others(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FTLIGHT_WANDB_ID", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert wandb_run_id(a) == wandb_run_id(tmp_path / "x" / ".." / "a")  # the same folder
    assert wandb_run_id(a) != wandb_run_id(b)
    assert wandb_run_id(a).startswith("ftlight-") and len(wandb_run_id(a)) == 24
    monkeypatch.setenv("FTLIGHT_WANDB_ID", "ftlight-1234")  # launch/slurm.sbatch's
    assert wandb_run_id(a) == wandb_run_id(b) == "ftlight-1234"
    monkeypatch.setattr(loggers, "trial_number", lambda: 3)  # a sweep's trial: its own
    assert wandb_run_id(a) == "ftlight-1234-3"


def test_the_config_is_recorded_resolved(monkeypatch) -> None:
    monkeypatch.setenv("FTLIGHT_TEST_SECRET", "s3cr3t-value")
    params = {
        "seed": 1,
        "copy": "${seed}",
        "nested": {"path": "runs/${copy}", "list": ["${seed}", 2]},
        "api_key": "${oc.env:FTLIGHT_TEST_SECRET}",  # names where the secret is: kept
        "url": "https://x?q=${oc.env:FTLIGHT_TEST_SECRET}",  # resolves to the secret: masked
        "todo": "???",
        "unknown": "${not_a_resolver:x}",
    }
    assert resolved_config(params) == {
        "seed": 1,
        "copy": 1,
        "nested": {"path": "runs/1", "list": [1, 2]},
        "api_key": "${oc.env:FTLIGHT_TEST_SECRET}",
        "url": f"https://x?q={MASK}",
        "todo": "???",
        "unknown": "${not_a_resolver:x}",
    }


def test_a_lost_wandb_neither_stops_the_run_nor_its_end(tmp_path, monkeypatch) -> None:
    """A scheduler stopping a job signals W&B's service process too: the run must still reach
    its checkpoint, and finishing the W&B run must not raise."""
    logger = WandbLogger(run_dir=str(tmp_path), offline=True)
    calls = []

    def lost(*args):
        calls.append(args)
        raise ConnectionResetError("Connection lost")

    logger._unless_lost(lost, 1)
    logger._unless_lost(lost, 2)  # no second try
    assert calls == [(1,)]

    class Run:
        def mark_preempting(self) -> None:
            calls.append("preempting")

        def finish(self, exit_code: int = 0) -> None:
            raise ConnectionResetError("Connection lost")

    fake = types.SimpleNamespace(run=Run(), teardown=lambda: calls.append("teardown"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    finish_wandb("preempted")
    assert calls[-2:] == ["preempting", "teardown"]


def test_each_trial_of_a_sweep_logs_its_own_wandb_run(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("FTLIGHT_WANDB_ID", None)
    cmd = [sys.executable, "-m", "ftlight", "-m", *setup_overrides("tiny-llama")]
    cmd += [
        "logger=wandb",
        "strategy.r=4,8",
        *QUICK_RUN,
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    ids = []
    for trial, r in zip(trials, (4, 8), strict=True):
        (record,) = trial.glob("wandb/offline-run-*/run-*.wandb")  # one run, in its folder
        run, config = wandb_run(record)
        assert run.display_name == trial.name  # the sweep subfolder: 0_...strategy.r=4...
        assert run.run_group == str(sweep)
        assert run.run_id == wandb_run_id(trial) and record.name == f"run-{run.run_id}.wandb"
        ids.append(run.run_id)
        assert config["strategy"]["r"] == r
        assert config["trainer"]["precision"] == "32-true"
        assert config["run_dir"] == str(trial)  # ${hydra:runtime.output_dir}, resolved
        assert "${" not in json.dumps({k: v for k, v in config.items() if k != "_wandb"})
    assert len(set(ids)) == 2


@pytest.fixture(autouse=True)
def _no_open_run() -> Iterator[None]:
    yield
    finish_wandb()
