"""The documentation: the configuration reference is generated from ``conf/`` and complete."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    path = ROOT / "docs" / "gen_config_reference.py"
    spec = importlib.util.spec_from_file_location("gen_config_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_config_option_has_a_comment() -> None:
    """A new option in conf/ or a strategy's conf/ comes with the comment the reference shows."""
    gen = _generator()
    assert gen.undocumented(gen.config_files()) == []


def test_the_reference_lists_every_group_and_option(tmp_path: Path) -> None:
    """Options, their defaults and comments reach the page, nested keys dotted."""
    conf = tmp_path / "conf" / "widget"
    conf.mkdir(parents=True)
    (conf / "small.yaml").write_text(
        "# ftlight-train widget=small\n"
        "_target_: some.Widget\n"
        "size: 3            # how big\n"
        "# the colour, as a name\n"
        "colour: red\n"
        "parts:             # what it holds\n"
        "  wheels: 4        # round ones\n"
        "  note: 'a # in quotes'\n"
    )
    gen = _generator()
    files = gen.config_files(tmp_path)
    page = gen.render(files)
    (small,) = files
    assert small.usage == "ftlight-train widget=small"
    got = {o.key: (o.default, o.comment) for o in small.options}
    assert got == {
        "size": ("3", "how big"),
        "colour": ("red", "the colour, as a name"),
        "parts": ("", "what it holds"),
        "parts.wheels": ("4", "round ones"),
        "parts.note": ("'a # in quotes'", ""),
    }
    assert gen.undocumented(files) == ["conf/widget/small.yaml: parts.note"]
    assert "| `parts.wheels` | `4` | round ones |" in page
    assert "### `widget=small`" in page


def test_the_real_reference_names_the_main_options() -> None:
    gen = _generator()
    page = gen.render(gen.config_files())
    for needle in ("`optimizer=adamw`", "`lr`", "`strategy=lora`", "`r`", "`data=local`"):
        assert needle in page


#: a measured figure: a number with a unit of time or speed ("264-296 ms", "245 tokens/s")
MEASURED = re.compile(r"\b\d+(\.\d+)?(-\d+(\.\d+)?)? ?(ms|tokens/s|GFLOP/s|it/s)\b")


def test_no_measured_figure_in_product_code() -> None:
    """Measurements go stale in code: they live in benchmarks/README.md with their command."""
    files = [*ROOT.glob("ftlight/**/*.py"), *ROOT.glob("plugins/*/ftlight_*/**/*.py")]
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if MEASURED.search(line)
    ]
    assert len(files) > 50
    assert not found, "\n".join(found)
