"""Hydra's YAML files (``.hydra/*.yaml``, a sweep's ``multirun.yaml``) rewritten masked."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftlight.files import atomic_write_text
from ftlight.redact_values import (
    is_reference,
    is_secret_key,
    masked_override,
    redact,
    secrets_in,
    walk,
)

log = logging.getLogger("ftlight")


def redacted_yaml(cfg: DictConfig) -> str:
    """``cfg`` as YAML (interpolations unresolved) with every secret masked."""
    return OmegaConf.to_yaml(OmegaConf.create(redact(cfg, secrets_in(cfg))))


def redact_yaml_files(folder: Path, secrets: Collection[str] = ()) -> list[Path]:
    """Rewrite the YAML files of ``folder`` (Hydra's output subfolder) with secrets masked.

    The secrets of every file count for all of them: ``config.yaml`` holds a value that
    ``hydra.yaml`` repeats inside its override strings. Returns the files rewritten.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    docs = {path: OmegaConf.to_container(OmegaConf.load(path)) for path in folder.glob("*.yaml")}
    found = set(secrets)
    for doc in docs.values():
        found |= secrets_in(doc)
    changed = []
    for path, doc in docs.items():
        clean = redact(doc, found)
        if clean != doc:
            atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(clean)))
            changed.append(path)
    if changed:
        log.info("masked secrets in %s", ", ".join(p.name for p in changed))
    return changed


def redact_yaml_file(path: Path, secrets: Collection[str] = ()) -> bool:
    """Rewrite one YAML file (a sweep's ``multirun.yaml``) with secrets masked; whether it
    changed. Every value of a secret setting counts, sweeps (``a,b``) included."""
    path = Path(path)
    if not path.is_file():
        return False
    doc = OmegaConf.to_container(OmegaConf.load(path))
    found = set(secrets) | secrets_in(doc)
    for _, key, value in walk(doc):  # an override line "+api_key=a,b" sweeps over two secrets
        if key is None and isinstance(value, str):
            name, sep, swept = value.partition("=")
            if sep and is_secret_key(name.lstrip("+~")) and not is_reference(swept):
                found |= {v for v in swept.split(",") if v and "=" not in v}
    clean = redact(doc, found)
    clean = _mask_override_lines(clean)
    if clean == doc:
        return False
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(clean)))
    log.info("masked secrets in %s", path)
    return True


def _mask_override_lines(obj: Any) -> Any:
    """Lists of override lines with every secret's whole value masked (a sweep's ``a,b``)."""
    if isinstance(obj, Mapping):
        return {k: _mask_override_lines(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [masked_override(v) if isinstance(v, str) else _mask_override_lines(v) for v in obj]
    return obj
