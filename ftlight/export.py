"""Writing model folders: weights, tokenizer, ftlight metadata and a model card, atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ftlight.errors import ModelError
from ftlight.files import atomic_dir


class ModelSaver:
    """Saves a model (plain or peft) with its tokenizer and metadata into one folder."""

    def __init__(self, tokenizer: Any, meta: dict[str, Any], card: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.meta = meta
        self.card = card

    def __call__(self, model: nn.Module, target: Path) -> None:
        """Write ``target`` in one piece (temp folder + rename)."""

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "ftlight.json").write_text(json.dumps(self.meta, indent=2, default=str))
            if self.card:
                (tmp / "README.md").write_text(self.card)

        atomic_dir(Path(target), write)


def find_model_dir(path: str | Path) -> Path:
    """A run folder's ``model/`` export, or the folder itself when it holds a model."""
    path = Path(path).expanduser()
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelError(
        f"{path} holds no exported model (no config.json in {path} or {path / 'model'}). "
        "Pass a run folder written by ftlight-train (with eval.export=true) or a model folder."
    )
