"""The speed plan: the ``speed`` group's switches, and the parts that stand aside outside the
library versions they were verified on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import open_dict
from packaging.version import Version

from ftlight.build import speed_plan
from ftlight.speed import plan as speed
from ftlight.speed.plan import PARTS, PLAIN, VERIFIED, SpeedPlan
from ftlight.testing import compose_config


def test_auto_is_every_part_and_plain_is_none(tmp_path: Path) -> None:
    auto = speed_plan(compose_config([], tmp_path))
    assert auto.parts_on() == list(PARTS) and auto.attention_kernel == "auto"
    assert not auto.activation_checkpointing and not auto.compile
    plain = speed_plan(compose_config(["speed=plain"], tmp_path))
    assert plain == PLAIN and plain.parts_on() == [] and plain.attention_kernel == "torch"
    one = speed_plan(compose_config(["speed=plain", "speed.decode=true"], tmp_path))
    assert one.parts_on() == ["decode"]


def test_a_config_without_the_group_runs_every_part(tmp_path: Path) -> None:
    """A run folder's config written before the group existed."""
    cfg = compose_config([], tmp_path)
    with open_dict(cfg):
        del cfg["speed"]
    assert speed_plan(cfg) == SpeedPlan()


def test_outside_the_verified_versions_a_part_stands_aside(monkeypatch, caplog) -> None:
    monkeypatch.delenv("FTLIGHT_SPEED_ANY_VERSION", raising=False)
    real = speed._installed
    monkeypatch.setattr(
        speed, "_installed", lambda p: Version("6.1.0") if p == "transformers" else real(p)
    )
    with caplog.at_level(logging.INFO, logger="ftlight"):
        checked = SpeedPlan().checked()
    on_transformers = {p for p, libs in VERIFIED.items() if "transformers" in libs}
    assert on_transformers and not any(getattr(checked, p) for p in on_transformers)
    assert checked.lora_fold and checked.lora_fused and checked.frozen_bf16  # other libraries
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(on_transformers)
    assert "speed.decode stands aside: transformers 6.1.0 is outside the versions it was " in (
        "\n".join(lines)
    )
    monkeypatch.setenv("FTLIGHT_SPEED_ANY_VERSION", "1")
    assert SpeedPlan().checked() == SpeedPlan()


@pytest.mark.parametrize("part", sorted(VERIFIED))
def test_the_installed_libraries_are_within_every_range(part: str) -> None:
    """This suite runs on verified versions: every part runs here (``test_plain.py`` checks
    them against the plain path)."""
    assert speed.outside_verified(part) is None


def test_the_old_top_level_switches_point_to_the_group(capsys, monkeypatch) -> None:
    import sys

    from ftlight.cli.train import main

    monkeypatch.setattr(sys, "argv", ["ftlight-train", "share_prefix=false"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "use speed.share_prefix=false" in err and "Traceback" not in err
