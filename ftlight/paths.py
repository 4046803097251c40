"""Where ftlight keeps what it builds once: fetched models, tiny models, tokenised data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The ftlight cache folder: ``$FTLIGHT_CACHE`` if set, else ``~/.cache/ftlight``."""
    env = os.environ.get("FTLIGHT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ftlight"


def looks_like_path(value: str) -> bool:
    """Whether a model reference is meant as a local folder rather than a Hub id (org/name)."""
    text = str(value)
    return (
        text.startswith((".", "/", "~"))
        or text.count("/") > 1  # a Hub id is name or org/name
        or "\\" in text
        or Path(text).expanduser().exists()
        or ("/" in text and Path(text.split("/")[0]).is_dir())  # runs/<typo> next to runs/
    )
