"""Fixtures of the export tests: a tiny Llama llama.cpp's converter takes, and a run of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve_helpers import BINARIES, build_spm_llama, train_tiny_run


@pytest.fixture(autouse=True)
def _llama_cpp_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The programs built into the user's cache stay found under the tests' own cache."""
    if BINARIES is not None and "FTLIGHT_LLAMA_CPP_BIN" not in os.environ:
        monkeypatch.setenv("FTLIGHT_LLAMA_CPP_BIN", str(BINARIES))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (seconds-long) LoRA run of the tiny SentencePiece Llama, shared by the session;
    tests copy it before they change it."""
    root = tmp_path_factory.mktemp("tiny-run")
    model = build_spm_llama(root / "base", task=None)
    return train_tiny_run(root / "run", model)
