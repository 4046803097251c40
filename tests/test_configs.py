"""Every shipped YAML composes, builds its objects, matches their constructors, and says how
it is used; the ``ftlight-train`` command line works."""

from __future__ import annotations

import functools
import inspect
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from ftlight.config import CONF_DIR, _package_dir
from ftlight.strategies.registry import conf_packages

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PLUGINS = ("full", "head", "lora", "qlora")
# Values a config file leaves as ??? (the user must give them).
REQUIRED = {
    ("model", "hf"): ["model.name_or_path=/models/my-llama"],
    ("data", "local"): [f"data.train_path={FIXTURES / 'alpaca_train.jsonl'}"],
    ("data", "hf"): ["data.name=tatsu-lab/alpaca"],
}
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _files() -> list[tuple[str, str, Path]]:
    """(group, option, path) of every YAML in conf/ and in every plugin's conf folder."""
    root = Path(CONF_DIR)
    found = [
        (p.parent.relative_to(root).as_posix(), p.stem, p)
        for p in sorted(root.rglob("*.yaml"))
        if p.parent != root
    ]
    found.append(("", "config", root / "config.yaml"))
    for package in conf_packages().values():
        found += [
            ("strategy", p.stem, p)
            for p in sorted((_package_dir(package) / "strategy").glob("*.yaml"))
        ]
    return found


FILES = _files()
IDS = [f"{g}/{n}" if g else n for g, n, _ in FILES]


def _selection(group: str, name: str) -> list[str]:
    if not group:
        return []
    return [f"{group}={name}", *REQUIRED.get((group, name), [])]


def _node(cfg: DictConfig, group: str) -> Any:
    """The part of the composed config that a file of ``group`` fills."""
    if group == "experiment" or not group:
        return cfg
    return OmegaConf.select(cfg, group.replace("/", "."))


def _targets(node: Any, path: str = "") -> list[tuple[str, DictConfig]]:
    """Every sub-config with a ``_target_``, outermost first."""
    found = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append((path, node))
        for key, value in node.items_ex(resolve=False):
            if not (path == "" and key == "hydra"):
                found += _targets(value, f"{path}.{key}".lstrip("."))
    return found


def _accepted(target: Any) -> set[str] | None:
    """Keyword names ``target`` accepts; None when it takes any keyword.

    ftlight's own classes that take ``**kwargs`` pass them to their base class
    (QLoRAStrategy to LoRAStrategy), and its functions to the class they build (``builds``:
    data=local's ``local_files`` to FineTuneData), so those names count and nothing else; a
    third-party ``**kwargs`` goes elsewhere (DDPStrategy to DDP) and accepts anything.
    """
    ours = target.__module__.split(".")[0].startswith("ftlight")
    classes = target.__mro__ if isinstance(target, type) else [None]
    names: set[str] = set()
    for cls in classes:
        if cls is not None and "__init__" not in vars(cls):
            continue
        if cls is object:
            return None
        fn = target if cls is None else cls.__init__
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
        if ours and cls is None and hasattr(target, "builds"):
            inner = _accepted(target.builds)
            return None if inner is None else names | inner
        if not ours or cls is None:
            return None
    return None


def test_found_every_group_and_plugin() -> None:
    """The file discovery itself: the groups DESIGN.md names, and all four plugins."""
    groups = {g for g, _, _ in FILES}
    design = {"model", "data", "task", "strategy", "trainer", "optimizer", "scheduler"}
    assert design | {"logger", "callbacks", "experiment", "eval"} <= groups
    assert {n for g, n, _ in FILES if g == "strategy"} >= set(PLUGINS)


@pytest.mark.parametrize(("group", "name", "path"), FILES, ids=IDS)
def test_composes_and_resolves(compose, tmp_path, group: str, name: str, path: Path) -> None:
    cfg = compose(_selection(group, name), tmp_path)
    node = _node(cfg, group)
    assert node is not None, f"{path} put nothing at {group}"
    parts = [cfg[k] for k in cfg if k != "hydra"] if node is cfg else [node]
    for part in parts:  # every interpolation resolves
        if isinstance(part, DictConfig):
            OmegaConf.to_container(part, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize(("group", "name", "path"), FILES, ids=IDS)
def test_keys_match_constructor(compose, tmp_path, group: str, name: str, path: Path) -> None:
    cfg = compose(_selection(group, name), tmp_path)
    for where, node in _targets(_node(cfg, group)):
        target = get_object(node._target_)
        accepted = _accepted(target)
        if accepted is None:
            continue
        unknown = sorted(set(node) - HYDRA_KEYS - accepted)
        assert not unknown, f"{path}: {where} has keys {unknown} that {node._target_} does not take"


# no objects of their own: whole runs, and logging configs (logging.config builds those)
UNBUILT = ("", "experiment", "eval", "hydra/job_logging")


@pytest.mark.parametrize(
    ("group", "name", "path"),
    [f for f in FILES if f[0] not in UNBUILT],
    ids=[i for i, f in zip(IDS, FILES, strict=True) if f[0] not in UNBUILT],
)
def test_targets_instantiate(compose, tmp_path, monkeypatch, group, name, path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = _selection(group, name)
    if group == "trainer" and name == "gpu" and not torch.cuda.is_available():
        overrides.append("trainer.accelerator=cpu")  # the rest of gpu.yaml is still checked
    cfg = compose(overrides, tmp_path)
    node = _node(cfg, group)
    if not node:
        assert group == "logger", f"{path} is empty"  # logger=none: no loggers at all
        return
    targets = _targets(node)
    assert targets, f"{path} names no _target_"
    outer = {where for where, _ in targets}
    for where, node in targets:
        if any(where != o and (o == "" or where.startswith(f"{o}.")) for o in outer):
            continue  # built by its parent (trainer.strategy)
        kwargs = {"logger": False} if group == "trainer" else {}
        obj = instantiate(node, **kwargs)
        if isinstance(obj, functools.partial):  # optimizer: a partial over the parameters
            obj = obj([torch.nn.Parameter(torch.zeros(2, 2))])
        if group == "scheduler":
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            obj = obj(opt, 10)
        assert obj is not None, f"{path}: {where}"


def test_strategy_files_build_their_plugin(compose, tmp_path) -> None:
    """strategy=<name> builds the class that the ``ftlight.strategies`` entry point names."""
    from ftlight.strategies.registry import get_strategy_class

    for name in PLUGINS:
        strategy = instantiate(compose([f"strategy={name}"], tmp_path).strategy)
        assert type(strategy) is get_strategy_class(name)
        assert strategy.name == name


def _defaults() -> dict[str, str]:
    raw = OmegaConf.load(Path(CONF_DIR) / "config.yaml").defaults
    return {k: v for item in raw if isinstance(item, DictConfig) for k, v in item.items()}


def _command_overrides(line: str) -> list[str]:
    """The overrides of the ``# ftlight-train ...`` command on a file's first line."""
    text = re.sub(r"\(.*?\)", "", line.removeprefix("#"))  # notes in parentheses
    text = re.sub(r"<[^>]*>", "X", text)  # placeholders like <Hub id or local folder>
    words = shlex.split(text)
    assert words and words[0] == "ftlight-train", line
    return [w for w in words[1:] if not w.startswith("-")]


@pytest.mark.parametrize(("group", "name", "path"), FILES, ids=IDS)
def test_first_line_is_a_working_command(compose, tmp_path, group, name, path) -> None:
    """Line 1 is ``# ftlight-train ...``: it selects (or sets keys of) this file, and composes.

    Hydra reads a ``# @package`` header only above every other line, so such lines may come
    first."""
    lines = path.read_text().splitlines()
    first = next(ln for ln in lines if not ln.startswith("# @"))
    assert first.startswith("# ftlight-train"), f"{path}: first line {first!r}"
    overrides = _command_overrides(first)
    if group:
        selects = f"{group}={name}" in overrides
        is_default = _defaults().get(group) == name
        sets_keys = any(o.startswith(f"{group}.") for o in overrides)
        assert selects or (is_default and sets_keys), f"{path}: {first!r} does not use this file"
    keys = {o.split("=")[0] for o in overrides}
    extra = [r for r in REQUIRED.get((group, name), []) if r.split("=")[0] not in keys]
    compose([*overrides, *extra], tmp_path)


# -- the command line -----------------------------------------------------------------------
def test_cli_help_lists_plugin_strategies(cli) -> None:
    result = cli["help"]
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("strategy:"))
    listed = [s.strip() for s in line.split(":", 1)[1].split(",")]
    # the built-ins, and any other installed plugin
    assert set(PLUGINS) <= set(listed) and listed == sorted(listed)


def test_cli_cfg_job_prints_the_composed_config(cli) -> None:
    result = cli["cfg_job"]
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert cfg.model._target_ == "ftlight.models.sources.TinyModel"
    assert cfg.strategy._target_ == "ftlight_lora.LoRAStrategy"
    assert {"model", "data", "task", "strategy", "trainer", "optimizer", "scheduler"} <= set(cfg)


def test_cli_unknown_strategy_lists_the_options(monkeypatch, tmp_path, capsys) -> None:
    """Run in this process (Hydra's own error path; no import to wait for)."""
    from ftlight.cli.train import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ftlight-train", "strategy=nope"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "strategy=nope is not a choice; use one of " in err
    options = err.split("use one of ", 1)[1].splitlines()[0]
    assert set(PLUGINS) <= set(options.replace(",", " ").split())  # and any installed plugin
    assert "Traceback" not in err
