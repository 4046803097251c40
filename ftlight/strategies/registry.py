"""Strategy discovery through the ``ftlight.strategies`` entry-point group."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from ftlight.errors import ConfigError
from ftlight.strategies.base import Strategy

STRATEGY_GROUP = "ftlight.strategies"
CONF_GROUP = "ftlight.conf"


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def available_strategies() -> list[str]:
    """Names of every installed strategy plugin."""
    return sorted(_entry_points(STRATEGY_GROUP))


def get_strategy_class(name: str) -> type[Strategy]:
    """The strategy class registered under ``name``; a miss lists what is installed."""
    eps = _entry_points(STRATEGY_GROUP)
    if name not in eps:
        raise ConfigError(
            f"unknown strategy {name!r}; installed strategies: {', '.join(sorted(eps)) or 'none'}. "
            f"Pick one with strategy=<name>, or install a plugin that registers {name!r} in the "
            f"{STRATEGY_GROUP!r} entry-point group."
        )
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(
            f"entry point {eps[name].value!r} for strategy {name!r} is not a Strategy"
        )
    return cls


def conf_packages() -> dict[str, str]:
    """Plugin name -> package holding ``strategy/<name>.yaml`` (``ftlight.conf`` group)."""
    return {name: ep.value for name, ep in _entry_points(CONF_GROUP).items()}
