"""Tokenised splits cached on disk, keyed by everything that decides their content.

The key hashes the parsed examples of every split (so edited files, other columns or another
validation split give another key), the tokenizer (vocabulary, special tokens, chat template),
``max_length``, the task kind, the label ids and ``ENCODING_VERSION``. A hit skips tokenisation.

An entry is two files that cannot run code when read: ``<key>.npz`` holds the integer columns
(read with ``allow_pickle=False``) and ``<key>.json`` the layout, the statistics, the text
columns and the sha256 of the ``.npz``. An entry whose JSON does not match its key, its
format or its array file is ignored with a warning and rebuilt. Both files are written
atomically, so concurrent ranks or runs never read a partial file. Entries of the earlier
pickle format (``<key>.pkl``) are never opened.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ftlight.files import atomic_write_bytes, atomic_write_text

log = logging.getLogger("ftlight")

#: bump when encode_sft / encode_classification / the row layout change
ENCODING_VERSION = 1
#: bump when the on-disk layout of an entry changes
FORMAT = "ftlight-tokenized/2"


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


def entry_path(folder: Path, key: str) -> Path:
    """The array file of an entry (the JSON beside it has the same stem)."""
    return Path(folder) / f"{key}.npz"


def load(folder: Path, key: str) -> dict[str, Any] | None:
    """The cached entry ``{"encoded", "stats"}``, or None when absent or not verifiable."""
    arrays_path = entry_path(folder, key)
    meta_path = arrays_path.with_suffix(".json")
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        _check(meta, key)
        data = arrays_path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta["sha256"]:
            raise ValueError(f"{arrays_path.name} has sha256 {digest}, not {meta['sha256']}")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        encoded = {
            split: _rows(layout, arrays, f"{split}/") for split, layout in meta["splits"].items()
        }
    except Exception as err:  # a corrupt, foreign or tampered entry: rebuild rather than fail
        log.warning(
            "ignoring unreadable tokenised-data cache %s (%s); rebuilding it", meta_path, err
        )
        return None
    return {"encoded": encoded, "stats": meta["stats"]}


def save(folder: Path, key: str, encoded: dict[str, list], stats: dict[str, Any]) -> None:
    """Store an entry atomically; a cache that cannot be written only costs a warning."""
    arrays: dict[str, np.ndarray] = {}
    splits = {split: _columns(rows, arrays, f"{split}/") for split, rows in encoded.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    meta = {
        "format": FORMAT,
        "version": ENCODING_VERSION,
        "key": key,
        "sha256": hashlib.sha256(data).hexdigest(),
        "stats": stats,
        "splits": splits,
    }
    path = entry_path(folder, key)
    try:
        # the arrays first: a reader that sees the new JSON finds the arrays it describes
        atomic_write_bytes(path, data)
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta))
    except OSError as err:
        log.warning("could not write the tokenised-data cache in %s (%s)", folder, err)


def _check(meta: Any, key: str) -> None:
    """Raise ValueError unless ``meta`` describes entry ``key`` in this format and version."""
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    found = (meta.get("format"), meta.get("version"), meta.get("key"))
    if found != (FORMAT, ENCODING_VERSION, key):
        raise ValueError(
            f"format/version/key {found} != {(FORMAT, ENCODING_VERSION, key)} expected"
        )
    if not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("splits"), dict):
        raise ValueError("no sha256 or splits")


# -- rows <-> columns ---------------------------------------------------------------------
# Rows are dicts of the same keys in a split. A column of int lists is stored flat with
# offsets, a column of ints as one array, any other column (text) in the JSON; a split whose
# rows differ in their keys is kept whole in the JSON.


def _is_int(value: Any) -> bool:
    return type(value) is int  # bools are ints to Python, but must come back as bools


def _columns(rows: list[dict[str, Any]], arrays: dict[str, np.ndarray], prefix: str) -> dict:
    """Move the integer columns of ``rows`` into ``arrays``; return the split's layout."""
    names = list(rows[0]) if rows else []
    if any(list(row) != names for row in rows):
        return {"rows": rows}
    columns: dict[str, Any] = {}
    for name in names:
        values = [row[name] for row in rows]
        if all(_is_int(v) for v in values):
            arrays[f"{prefix}{name}"] = _int_array(values)
            columns[name] = {"kind": "int"}
        elif all(isinstance(v, list) and all(_is_int(x) for x in v) for v in values):
            flat = [x for v in values for x in v]
            arrays[f"{prefix}{name}"] = _int_array(flat)
            arrays[f"{prefix}{name}.offsets"] = np.cumsum([0] + [len(v) for v in values])
            columns[name] = {"kind": "int_lists"}
        else:
            columns[name] = {"kind": "json", "values": values}
    return {"count": len(rows), "columns": columns}


def _int_array(values: list[int]) -> np.ndarray:
    """Token ids and labels fit in 32 bits; anything larger keeps 64."""
    wide = np.asarray(values, dtype=np.int64)
    info = np.iinfo(np.int32)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        return wide
    return wide.astype(np.int32)


def _rows(layout: dict, arrays: dict[str, np.ndarray], prefix: str) -> list[dict[str, Any]]:
    """The rows of one split, as ``_columns`` stored them."""
    if "rows" in layout:
        return layout["rows"]
    count = layout["count"]
    columns: dict[str, list[Any]] = {}
    for name, spec in layout["columns"].items():
        if spec["kind"] == "json":
            values = spec["values"]
        elif spec["kind"] == "int":
            values = arrays[f"{prefix}{name}"].tolist()
        elif spec["kind"] == "int_lists":
            flat = arrays[f"{prefix}{name}"].tolist()
            offsets = arrays[f"{prefix}{name}.offsets"].tolist()
            values = [flat[a:b] for a, b in itertools.pairwise(offsets)]
        else:
            raise ValueError(f"unknown column kind {spec['kind']!r}")
        if len(values) != count:
            raise ValueError(f"column {prefix}{name} has {len(values)} rows, not {count}")
        columns[name] = values
    return [{name: columns[name][i] for name in columns} for i in range(count)]
