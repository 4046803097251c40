"""Phase lines: duration and the phase's own peak memory, nested phases included."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from ftlight.logs import PHASES, timed

linux = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


@linux
def test_each_phase_reports_its_own_peak_and_hands_it_to_the_outer_one(caplog) -> None:
    log = logging.getLogger("ftlight.test")
    with caplog.at_level(logging.INFO, logger="ftlight.test"), timed("outer", log):
        big = np.ones(400 * 2**20 // 8)  # 400 MB, touched
        del big
        with timed("inner", log):
            small = np.ones(50 * 2**20 // 8)
            del small
    inner, outer = PHASES["inner"]["peak_rss_mb"], PHASES["outer"]["peak_rss_mb"]
    assert outer - inner > 300  # the outer phase saw the 400 MB; the inner one did not
    assert outer >= 400
    assert any(
        r.getMessage().startswith("outer: ") and "peak memory" in r.getMessage()
        for r in caplog.records
    )


def test_a_failing_phase_still_leaves_the_stack_clean() -> None:
    from ftlight import logs

    with pytest.raises(ValueError), timed("fails", logging.getLogger("ftlight.test")):
        raise ValueError("boom")
    assert logs._open == []
