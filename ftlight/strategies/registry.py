"""Strategy discovery through the ``ftlight.strategies`` and ``ftlight.conf`` entry points."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ftlight.errors import ConfigError
from ftlight.strategies.base import Strategy

STRATEGY_GROUP = "ftlight.strategies"
CONF_GROUP = "ftlight.conf"


@cache
def entry_points_of(group: str) -> dict[str, EntryPoint]:
    """Name -> entry point of one group (a name registered twice keeps the first)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return found


def get_strategy_class(name: str) -> type[Strategy]:
    """The strategy class registered under ``name``; a miss lists what is installed."""
    eps = entry_points_of(STRATEGY_GROUP)
    if name not in eps:
        raise ConfigError(
            f"unknown strategy {name!r}; installed strategies: {', '.join(sorted(eps)) or 'none'}. "
            f"Pick one with strategy=<name>, or install a plugin that registers {name!r} in the "
            f"{STRATEGY_GROUP!r} entry-point group."
        )
    try:
        cls = eps[name].load()
    except Exception as err:
        raise ConfigError(
            f"strategy plugin {name!r} ({eps[name].value}) fails to import: "
            f"{type(err).__name__}: {err}. Reinstall or fix that package, or pick another "
            "strategy (ftlight-strategies lists them)"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(
            f"entry point {eps[name].value!r} for strategy {name!r} is not a Strategy"
        )
    return cls


def check_strategy(obj: Any, target: str) -> Strategy:
    """``obj`` as built from ``strategy._target_``; anything but a ``Strategy`` is refused."""
    if not isinstance(obj, Strategy):
        raise ConfigError(
            f"strategy._target_={target} builds a {type(obj).__name__}, not an "
            "ftlight.strategies.Strategy; point it at a Strategy subclass (ftlight-strategies "
            "lists the installed ones)"
        )
    return obj


def conf_packages() -> dict[str, str]:
    """Plugin name -> package holding ``strategy/<name>.yaml`` (``ftlight.conf`` group)."""
    return {name: ep.value for name, ep in entry_points_of(CONF_GROUP).items()}
