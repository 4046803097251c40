"""``benchmarks/generation.py`` runs evaluation's passes of each system on the demo's held-out
tickets and finds the same answers (tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("ftlight_cache")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_ftlight_and_generate_give_the_same_answers(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("generation", None)
    import generation

    report = generation.main(
        [
            "--model",
            "tiny-llama",
            "--rows",
            "6",
            "--batch-size",
            "3",
            "--precision",
            "fp32",
            "--systems",
            "ftlight,hf_generate",
        ]
    )
    assert report["identical"] is True
    results = report["results"]
    assert results["ftlight"]["tokens"] == results["hf_generate"]["tokens"] > 0
    for result in results.values():
        assert result["evaluation_seconds"] >= result["seconds"] > 0
        # every answer token after the first is one decoding step's (rows stop at their end)
        assert result["decode_steps"] > 0 and result["full_step_ms"] > 0
