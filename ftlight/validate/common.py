"""Helpers the checks share: reading a key that may be absent, naming values in messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger("ftlight")

ABSENT = object()  # a key the composed config does not have


def select(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key`` as plain Python, or ``ABSENT`` when the key is missing."""
    node = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=False)
    if node is ABSENT or (isinstance(node, str) and node == "???"):
        return ABSENT
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def target_class(target: Any) -> type | None:
    """The class a ``_target_`` names, or None when it cannot be imported (reported later)."""
    if not isinstance(target, str) or not target:
        return None
    try:
        return get_class(target)
    except Exception:  # an unimportable target is reported when it is built
        return None


def registered_name(target: str | None) -> str | None:
    if not target:
        return None
    try:
        return getattr(get_class(target), "name", None) or None
    except Exception:  # an unimportable target is reported when it is built
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)
