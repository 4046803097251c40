"""What a checkpoint must share with the run that resumes it, besides sizes and data: the
tokenizer (vocabulary and chat template) and the base weights.

Both are hashed before any weights load. The weights' hash reads a few slices of each weight
file, never the whole model: weights of the same shape but another training differ in every
slice, and hashing 16 slices of 64 KiB costs the same for a 1B model as for a tiny one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
"""Files in a model folder that hold weights."""

SLICES = 16
SLICE_BYTES = 64 * 1024


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tokenizer_parts(tokenizer: Any) -> dict[str, str | None] | None:
    """Hashes of a tokenizer's vocabulary (with its special tokens) and of its chat template
    (None: it has none); None without a tokenizer."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        vocabulary = backend.to_str()
    else:  # slow tokenizers: the vocabulary itself
        vocabulary = repr(sorted(tokenizer.get_vocab().items()))
    specials = repr(getattr(tokenizer, "special_tokens_map", None))
    template = getattr(tokenizer, "chat_template", None)
    return {
        "vocabulary": _sha(vocabulary + specials),
        "chat_template": _sha(repr(template)) if template else None,
    }


def weights_fingerprint(folder: Path | None) -> str | None:
    """A hash of the weight files of a model folder: names, sizes and ``SLICES`` slices spread
    over each file. None where there is no local folder (a Hub id) or no weight file."""
    if folder is None or not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            step = max(size - SLICE_BYTES, 0) / max(SLICES - 1, 1)
            for i in range(SLICES):
                f.seek(int(i * step))
                h.update(f.read(SLICE_BYTES))
    return h.hexdigest()[:16]


def differences(meta: dict[str, Any], run: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Where a checkpoint's tokenizer and base weights differ from this run's (the problems),
    and which of them the checkpoint holds no fingerprint of (written by an older ftlight)."""
    problems: list[str] = []
    unchecked: list[str] = []
    old, new = meta.get("tokenizer"), run.get("tokenizer")
    if old is None and new is not None:
        unchecked.append("tokenizer")
    elif old is not None and new is not None and old != new:
        for part, what in (
            ("vocabulary", "vocabulary or special tokens"),
            ("chat_template", "chat template"),
        ):
            if old.get(part) != new.get(part):
                problems.append(
                    f"the tokenizer's {what}: it was written with "
                    f"{_show(old.get(part))}, this run's is {_show(new.get(part))} "
                    "(another tokenizer, or model.chat_template)"
                )
    old, new = meta.get("weights"), run.get("weights")
    if old is None and new is not None:
        unchecked.append("base weights")
    elif old is not None and new is not None and old != new:
        problems.append(
            f"the base weights: their files hash to {old}, this run's to {new} (other weights "
            "of the same shape: another model folder, revision or model.seed)"
        )
    return problems, unchecked


def _show(digest: str | None) -> str:
    return f"hash {digest}" if digest else "none"
