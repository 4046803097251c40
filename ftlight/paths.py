"""Where ftlight keeps what it builds once: fetched models, tiny models, tokenised data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The ftlight cache folder: ``$FTLIGHT_CACHE`` if set, else ``~/.cache/ftlight``."""
    env = os.environ.get("FTLIGHT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ftlight"
