"""``benchmarks/paired_steps.py`` times both ways of each comparison on the same batches and
leaves ftlight's way on (tiny model)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("ftlight_cache")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "compare", ["lora_forward", "grouped_kv", "recompute_activation", "head_loss"]
)
def test_both_ways_are_timed(monkeypatch, compare: str) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    sys.modules.pop("paired_steps", None)
    import paired_steps

    report = paired_steps.main(
        ["--model", "tiny-llama", "--steps", "2", "--warmup", "1", "--compare", compare]
    )
    assert report["compare"] == compare
    assert report["ftlight_s_per_step"] > 0 and report["other_s_per_step"] > 0
    assert report["median_ratio"] > 0
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ  # the switch is put back
