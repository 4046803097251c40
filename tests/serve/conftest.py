"""Fixtures of the export tests: a tiny Llama llama.cpp's converter takes, and a run of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import build_spm_llama, train_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (seconds-long) LoRA run of the tiny SentencePiece Llama, shared by the session;
    tests copy it before they change it."""
    root = tmp_path_factory.mktemp("tiny-run")
    model = build_spm_llama(root / "base", task=None)
    return train_tiny_run(root / "run", model)
