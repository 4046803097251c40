"""A local model folder, read before anything loads: its config, its code, its weight files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftlight.errors import ModelError


def check_model_folder(folder: Path, ref: str, trust_remote_code: Any) -> None:
    """``folder`` (``model.name_or_path={ref}``) holds a readable ``config.json``, names no
    code of its own unless trusted, and its safetensors files are whole."""
    config = folder / "config.json"
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(
            f"model.name_or_path={ref!r}: {config} is not readable JSON ({err}); copy or "
            "export the model again"
        ) from None
    if isinstance(values, dict) and values.get("auto_map") and trust_remote_code is not True:
        raise ModelError(
            f"model.name_or_path={ref!r} needs its own Python code to load ({config} names "
            "custom classes in auto_map), and ftlight does not run code from a model folder "
            "unless told to. If you trust every .py file in that folder, set "
            "model.trust_remote_code=true; a model exported by ftlight-train never needs it"
        )
    for weights in sorted(folder.glob("*.safetensors")):
        _check_safetensors(weights, ref)


def _check_safetensors(path: Path, ref: str) -> None:
    """Its header is whole and covers the file: reads the header only, no tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as err:  # safetensors raises its own SafetensorError (not an OSError)
        raise ModelError(
            f"model.name_or_path={ref!r}: {path.name} is not a readable safetensors file "
            f"({err}); a download or copy was cut short or the file was changed. Copy the "
            "model folder again, or export it again"
        ) from None


def resolve_folder(folder: Path, ref: str) -> Path:
    """``folder`` with its symbolic links followed; a link that leads back to itself is
    refused with the link named."""
    try:
        return folder.resolve(strict=False)
    except (RuntimeError, OSError) as err:  # pathlib reports a link loop as RuntimeError
        raise ModelError(
            f"model.name_or_path={ref!r}: the symbolic link {folder} leads back to itself "
            f"({err}); point model.name_or_path at the real folder, or fix the link "
            f"(ls -l {folder})"
        ) from None
