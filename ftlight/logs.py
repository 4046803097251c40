"""Log lines for the phases of a run."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator


@contextlib.contextmanager
def timed(what: str, logger: logging.Logger) -> Iterator[None]:
    """Log one line with the duration of a phase."""
    start = time.perf_counter()
    yield
    logger.info("%s: %.1f s", what, time.perf_counter() - start)
