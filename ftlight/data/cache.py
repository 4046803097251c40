"""Tokenised splits cached on disk, keyed by everything that decides their content.

The key hashes the parsed examples of every split (so edited files, other columns or another
validation split give another key), the tokenizer (vocabulary, special tokens, chat template),
``max_length``, the task kind, the label ids and ``ENCODING_VERSION``. A hit skips tokenisation;
entries are written atomically, so concurrent ranks or runs never read a partial file.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path
from typing import Any

from ftlight.utils import atomic_write_bytes

log = logging.getLogger("ftlight")

#: bump when encode_sft / encode_classification / the row layout change
ENCODING_VERSION = 1


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what makes two tokenizers encode text differently."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizers: the vocabulary itself
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    for part in (
        getattr(tokenizer, "chat_template", None),
        getattr(tokenizer, "special_tokens_map", None),
        getattr(tokenizer, "padding_side", None),
        getattr(tokenizer, "truncation_side", None),
        getattr(tokenizer, "model_max_length", None),
    ):
        h.update(repr(part).encode())
    return h.hexdigest()


def cache_key(examples: dict[str, list[Any]], tokenizer: Any, settings: dict[str, Any]) -> str:
    """The entry name for these examples encoded by this tokenizer with these settings."""
    h = hashlib.sha256()
    h.update(f"v{ENCODING_VERSION}".encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(repr(sorted(settings.items())).encode())
    for split in sorted(examples):
        h.update(split.encode())
        for _, example in examples[split]:
            h.update(repr(example).encode())
    return h.hexdigest()[:32]


def load(folder: Path, key: str) -> dict[str, Any] | None:
    """The cached entry, or None when absent or unreadable (then it is rebuilt)."""
    path = folder / f"{key}.pkl"
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            entry = pickle.load(f)
    except Exception as err:  # a corrupt or foreign file: rebuild rather than fail the run
        log.warning("ignoring unreadable tokenised-data cache %s (%s)", path, err)
        return None
    if not isinstance(entry, dict) or entry.get("version") != ENCODING_VERSION:
        return None
    return entry


def save(folder: Path, key: str, encoded: dict[str, list], stats: dict[str, Any]) -> None:
    """Store an entry atomically; a cache that cannot be written only costs a warning."""
    payload = {"version": ENCODING_VERSION, "encoded": encoded, "stats": stats}
    try:
        atomic_write_bytes(
            folder / f"{key}.pkl", pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        )
    except OSError as err:
        log.warning("could not write the tokenised-data cache in %s (%s)", folder, err)
