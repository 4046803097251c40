"""A checkpoint resumes only onto the tokenizer and base weights it was trained with (refused
before any weights load unless ``ckpt_check=warn``); every rank gets its own random state back.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ftlight import resume
from ftlight.errors import ConfigError
from ftlight.testing import setup_overrides
from ftlight.validate.fingerprint import tokenizer_parts, weights_fingerprint
from ftlight.validate.run import compare_checkpoint

RUN = [
    *setup_overrides("tiny-llama"),
    "strategy=lora",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.max_epochs=-1",
    "eval.before=false",
    "eval.after=false",
    "eval.export=false",
    "eval.general=null",
    "callbacks.progress=null",
    "trainer.enable_model_summary=false",
]


def _train(tmp_path: Path, run: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
        "FTLIGHT_CACHE": str(tmp_path / "cache"),
    }
    cmd = [sys.executable, "-m", "ftlight", *RUN, f"hydra.run.dir={tmp_path / run}"]
    return subprocess.run([*cmd, *overrides], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A two-step run's last checkpoint, and the folder the runs share (their model cache)."""
    root = tmp_path_factory.mktemp("first")
    done = _train(root, "first", "trainer.max_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, root / "first" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("override", "differs"),
    [
        ("model.chat_template=false", "the tokenizer's chat template"),
        ("model.seed=1", "the base weights"),
    ],
    ids=["another-tokenizer-layout", "other-weights-of-the-same-shape"],
)
def test_resume_onto_another_tokenizer_or_weights_is_refused(
    checkpoint: tuple[Path, Path], override: str, differs: str
) -> None:
    """Same sizes, same rows: only the tokenizer or the weights differ, and the resume is
    refused before any weights load, naming what differs and the fix."""
    root, ckpt = checkpoint
    run = f"refused-{override.split('=')[0]}"
    done = _train(root, run, "trainer.max_steps=4", f"ckpt_path={ckpt}", override)
    assert done.returncode != 0
    assert f"ckpt_path={ckpt} does not match this run in " in done.stderr
    assert differs in done.stderr  # among what differs (a template also re-encodes the rows)
    assert "set ckpt_check=warn to resume from it anyway" in done.stderr
    assert "load tiny-llama" not in done.stderr  # refused before the weights load
    assert not (root / run / "checkpoints").exists()


def test_ckpt_check_warn_resumes_onto_other_weights(checkpoint: tuple[Path, Path]) -> None:
    root, ckpt = checkpoint
    done = _train(
        root,
        "warned",
        "trainer.max_steps=3",
        f"ckpt_path={ckpt}",
        "model.seed=1",
        "ckpt_check=warn",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logged = (root / "warned" / "ftlight.log").read_text()
    assert "does not match this run in the base weights" in logged
    assert "resuming anyway: ckpt_check=warn" in logged
    last = torch.load(root / "warned" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3


# -- the fingerprints ------------------------------------------------------------------------
def test_weights_fingerprint_reads_slices_of_each_file(tmp_path: Path) -> None:
    """Names, sizes and contents count: other weights of the same shape (every value differs)
    are told apart, reading slices of the file, not all of it."""
    (tmp_path / "config.json").write_text("{}")
    assert weights_fingerprint(tmp_path) is None  # no weight file: nothing to compare
    blob = bytearray(np.random.default_rng(0).bytes(8 << 20))
    (tmp_path / "model.safetensors").write_bytes(blob)
    first = weights_fingerprint(tmp_path)
    assert first == weights_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text('{"a": 1}')  # not a weight file
    assert weights_fingerprint(tmp_path) == first
    blob[::4096] = bytes(b ^ 0xFF for b in blob[::4096])  # a byte in every 4 KiB changed
    (tmp_path / "model.safetensors").write_bytes(blob)
    assert weights_fingerprint(tmp_path) != first
    assert weights_fingerprint(None) is None


def test_tokenizer_parts_tell_vocabulary_from_chat_template() -> None:
    from ftlight.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("llama", chat_template=True)
    chat = tokenizer_parts(tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    other = tokenizer_parts(tokenizer)
    assert other["vocabulary"] == chat["vocabulary"]
    assert None is not other["chat_template"] != chat["chat_template"] is not None
    # model.chat_template=false: no template, and other special tokens (its own end of text)
    plain = tokenizer_parts(build_tiny_tokenizer("llama", chat_template=False))
    assert plain["chat_template"] is None and plain["vocabulary"] != chat["vocabulary"]
    assert tokenizer_parts(None) is None


RUN_PRINT = {
    "model": {"name": "tiny-llama", "hidden_size": 32},
    "data": "d1",
    "tokenizer": {"vocabulary": "v1", "chat_template": "c1"},
    "weights": "w1",
}


def test_an_older_checkpoint_without_these_fingerprints_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"ckpt_check": "strict"})
    old = {"model": RUN_PRINT["model"], "data": "d1"}  # written before tokenizer and weights
    with caplog.at_level(logging.WARNING, logger="ftlight"):
        compare_checkpoint(cfg, "old.ckpt", old, RUN_PRINT)
    assert "holds no fingerprint of its tokenizer or base weights" in caplog.text
    other = {**RUN_PRINT, "tokenizer": {"vocabulary": "v2", "chat_template": "c1"}}
    with pytest.raises(
        ConfigError,
        match="the tokenizer's vocabulary or special tokens: it was written with hash v2",
    ):
        compare_checkpoint(cfg, "new.ckpt", other, RUN_PRINT)
    compare_checkpoint(cfg, "same.ckpt", dict(RUN_PRINT), RUN_PRINT)  # nothing to say


# -- random state per rank -------------------------------------------------------------------
def test_random_state_round_trips_every_generator(tmp_path: Path) -> None:
    """torch's, numpy's and Python's generators come back from a weights-only load."""
    saved = resume.rng_state(torch.device("cpu"))
    path = tmp_path / "state.pt"
    torch.save(saved, path)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    resume.restore_rng_state(torch.load(path, weights_only=True), torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_each_rank_takes_its_own_state(monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    states = [{"torch": torch.tensor([r], dtype=torch.uint8)} for r in range(2)]
    meta = {"rng_ranks": states, "rng": states[0]["torch"]}
    monkeypatch.setattr(resume, "_rank_and_world", lambda: (1, 2))
    assert resume.rng_state_of_rank(meta) is states[1]
    # an older checkpoint (rank 0's state only), or another number of processes: rank 0's
    monkeypatch.setattr(resume, "_rank_and_world", lambda: (0, 4))
    with caplog.at_level(logging.WARNING, logger="ftlight"):
        assert torch.equal(resume.rng_state_of_rank(meta)["torch"], states[0]["torch"])
        assert resume.rng_state_of_rank({"rng": states[0]["torch"]})["torch"] is not None
    assert "random state of 2 processes, this run has 4" in caplog.text
    assert "one random state (an older ftlight)" in caplog.text
