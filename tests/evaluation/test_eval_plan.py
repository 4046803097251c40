"""The ``eval`` group builds an ``Evaluation``: the run reads its settings there, not in the
config."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftlight.build import instantiate
from ftlight.errors import ConfigError
from ftlight.evaluation.plan import Evaluation
from ftlight.testing import compose_config


def test_the_group_builds_the_settings_it_names(tmp_path: Path) -> None:
    text = tmp_path / "general.txt"
    text.write_text("Plain words about the weather and the sea. " * 20, encoding="utf-8")
    cfg = compose_config(
        ["eval.before=false", "eval.split=test", f"eval.general={text}", "eval.few_shot=2"],
        tmp_path,
    )
    ev = instantiate(cfg.eval)
    assert isinstance(ev, Evaluation)
    assert (ev.before, ev.after, ev.split, ev.few_shot) == (False, True, "test", 2)
    assert ev.general.text == text.read_text(encoding="utf-8")  # read when built
    defaults = instantiate(compose_config([], tmp_path).eval)
    assert (defaults.before, defaults.export, defaults.best) == (True, True, False)
    assert defaults.few_shot == "auto" and defaults.general.source == "built-in sample"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"split": "train"}, "eval.split='train' is not one of validation, test"),
        ({"few_shot": -1}, "eval.few_shot=-1: expected a whole number"),
        ({"general": "no/such/file.txt"}, "eval.general='no/such/file.txt': no such file"),
    ],
)
def test_a_bad_setting_is_refused_when_built(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Evaluation(**setting)
