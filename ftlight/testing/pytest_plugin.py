"""pytest fixtures ftlight registers for any test suite (the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ftlight_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session ``FTLIGHT_CACHE`` for tiny models and tokenised data; torch on one thread.

    A plugin's tests ask for it with ``pytestmark = pytest.mark.usefixtures("ftlight_cache")``.
    """
    from ftlight.testing.helpers import isolated_cache

    with isolated_cache(tmp_path_factory.getbasetemp() / "ftlight-cache") as cache:
        yield cache
