"""The installed strategy plugins (with why one fails to load), and new plugin folders."""

from __future__ import annotations

import keyword
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ftlight.errors import ConfigError
from ftlight.strategies.registry import STRATEGY_GROUP, entry_points_of, get_strategy_class

log = logging.getLogger("ftlight")


@dataclass
class StrategyInfo:
    """One installed strategy: where it comes from and what it does (or why it fails)."""

    name: str
    package: str
    version: str
    summary: str
    error: str | None = None


def installed_strategies() -> list[StrategyInfo]:
    """Every strategy in the ``ftlight.strategies`` group; one that fails to load is listed
    with its error (and a warning), never stops the others."""
    found = []
    for name, ep in sorted(entry_points_of(STRATEGY_GROUP).items()):
        dist = ep.dist
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        try:
            cls = get_strategy_class(name)
        except Exception as err:  # a broken plugin: report it, keep listing
            reason = f"{type(err).__name__}: {err}"
            log.warning("strategy plugin %r (%s) cannot be loaded: %s", name, ep.value, reason)
            found.append(StrategyInfo(name, package, version, "", error=reason))
            continue
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        found.append(StrategyInfo(name, package, version, summary))
    return found


def format_listing(infos: list[StrategyInfo]) -> str:
    """A table: name, package and version, first line of the docstring (or the error)."""
    rows = [(i.name, f"{i.package} {i.version}", i.error or i.summary) for i in infos]
    width = [max([len(h), *(len(r[k]) for r in rows)]) for k, h in enumerate(("name", "package"))]
    lines = [f"{'name':<{width[0]}}  {'package':<{width[1]}}  description"]
    for name, package, text in rows:
        lines.append(f"{name:<{width[0]}}  {package:<{width[1]}}  {text}")
    return "\n".join(lines)


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def scaffold(name: str, parent: Path) -> Path:
    """Write ``parent/<name>/``: a plugin package in the built-in shape, ready to install."""
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ConfigError(
            f"strategy name {name!r}: use lower-case letters, digits and underscores, starting "
            "with a letter (it names the conf file, the entry point and the package)"
        )
    if name in entry_points_of(STRATEGY_GROUP):
        raise ConfigError(
            f"a strategy named {name!r} is already installed; pick another name so that "
            f"strategy={name} stays unambiguous"
        )
    root = Path(parent) / name
    if root.exists():
        raise ConfigError(f"{root} already exists; pick another name or folder (--dir)")
    package = f"ftlight_{name}"
    cls = "".join(part.capitalize() for part in name.split("_")) + "Strategy"
    files = {
        "pyproject.toml": _PYPROJECT,
        f"{package}/__init__.py": _MODULE,
        f"{package}/conf/strategy/{name}.yaml": _CONF,
        f"tests/test_{name}.py": _TESTS,
        "README.md": _README,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name, package=package, cls=cls))
    return root


_PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "ftlight-{name}"
version = "0.1.0"
description = "ftlight strategy: {name}"
requires-python = ">=3.11"
dependencies = ["ftlight>=0.1"]

[project.entry-points."ftlight.strategies"]
{name} = "{package}:{cls}"

[project.entry-points."ftlight.conf"]
{name} = "{package}.conf"

[tool.setuptools.packages.find]
include = ["{package}*"]

[tool.setuptools.package-data]
{package} = ["conf/strategy/*.yaml"]
"""

_MODULE = '''\
"""The ``{name}`` strategy."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ftlight.strategies import Strategy
from ftlight.tasks import Task


class {cls}(Strategy):
    """Trains the task head and the last ``num_layers`` transformer blocks (edit ``apply``)."""

    name: ClassVar[str] = "{name}"

    def __init__(self, num_layers: int = 1) -> None:
        self.num_layers = num_layers

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Set ``requires_grad``: the one place a strategy decides what trains."""
        from ftlight.models.introspect import find_blocks

        for p in model.parameters():
            p.requires_grad_(False)
        for head in task.new_module_names(model) or task.head_names(model):
            for p in model.get_submodule(head).parameters():
                p.requires_grad_(True)
        found = find_blocks(model)
        if found is not None and self.num_layers:
            for block in list(found[1])[-self.num_layers :]:
                for p in block.parameters():
                    p.requires_grad_(True)
        return model
'''

_CONF = """\
# ftlight-train strategy={name} strategy.num_layers=1
_target_: {package}.{cls}
num_layers: 1
"""

_TESTS = '''\
"""The ``{name}`` strategy against ftlight's conformance suite."""

from ftlight.testing import StrategyConformance


class TestConformance(StrategyConformance):
    strategy = "{name}"
'''

_README = """\
# ftlight-{name}

A strategy plugin for ftlight. Install it next to ftlight and select it:

```bash
pip install -e .
ftlight-train strategy={name}
pytest tests            # ftlight's conformance suite on tiny models
```
"""
