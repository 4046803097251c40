"""Strategy plugins from the outside: listing, broken plugins, wrong targets, the scaffold."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from ftlight.cli.strategies import main as strategies_main
from ftlight.errors import ConfigError
from ftlight.strategies import catalog, registry

BUILT_IN = {"full", "head", "lora", "qlora"}


def test_listing_names_package_version_and_summary(capsys) -> None:
    strategies_main([])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert BUILT_IN <= set(rows)  # and whatever else is installed
    assert "ftlight-lora 0.1.0" in rows["lora"]
    assert "LoRA adapters of rank" in rows["lora"]


@pytest.fixture
def broken_plugin(monkeypatch) -> str:
    """A registered strategy whose module raises on import."""
    good = registry.entry_points_of(registry.STRATEGY_GROUP)
    bad = EntryPoint(name="broken", value="ftlight_no_such_module:Nope", group="x")
    monkeypatch.setattr(registry, "entry_points_of", lambda group: {**good, "broken": bad})
    monkeypatch.setattr(catalog, "entry_points_of", registry.entry_points_of)
    return "broken"


def test_broken_plugin_warns_and_the_rest_are_listed(broken_plugin, caplog) -> None:
    infos = {i.name: i for i in catalog.installed_strategies()}
    assert BUILT_IN <= set(infos)
    assert "ModuleNotFoundError" in infos["broken"].error
    assert "strategy plugin 'broken' (ftlight_no_such_module:Nope) cannot be loaded" in caplog.text


def test_broken_plugin_is_an_error_only_when_selected(broken_plugin) -> None:
    with pytest.raises(ConfigError, match="strategy plugin 'broken' .* fails to import"):
        registry.get_strategy_class("broken")
    assert registry.get_strategy_class("lora").name == "lora"


def test_target_that_is_not_a_strategy_is_refused(compose, tmp_path) -> None:
    from ftlight.build import build_run

    cfg = compose(["strategy=full", "strategy._target_=collections.OrderedDict"], tmp_path)
    with pytest.raises(ConfigError, match="builds a OrderedDict, not an ftlight.strategies"):
        build_run(cfg)


@pytest.mark.parametrize("name", ["Bad-Name", "1st", "class", "lora"])
def test_scaffold_refuses_bad_or_taken_names(tmp_path, name: str) -> None:
    with pytest.raises(ConfigError, match=repr(name)):
        catalog.scaffold(name, tmp_path)
    assert not (tmp_path / name).exists()


@pytest.mark.slow
def test_scaffolded_plugin_wheel_installs_in_a_clean_venv_and_passes_the_suite(tmp_path) -> None:
    """``ftlight-strategies new``, a wheel built from the folder, a venv that has never seen
    it (ftlight itself comes from this environment through a .pth file): the strategy is
    found, composes as ``strategy=<name>`` and passes the conformance suite."""
    root = catalog.scaffold("mine", tmp_path)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(root)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("ftlight_mine-0.1.0-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # addsitedir, not a bare path: this environment's editable installs are .pth files too
    here = sysconfig.get_paths()["purelib"]
    Path(site, "ftlight-env.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    listed = subprocess.run(
        [python, "-m", "ftlight.cli.strategies"], capture_output=True, text=True, cwd=tmp_path
    )
    assert "mine" in listed.stdout and "ftlight-mine 0.1.0" in listed.stdout, listed.stderr
    suite = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert suite.returncode == 0, suite.stdout[-3000:]
    assert " passed" in suite.stdout and "failed" not in suite.stdout
