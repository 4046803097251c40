"""Hydra glue: the plugin config search path and the resolvers ftlight's YAML uses."""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from importlib.resources import files
from pathlib import Path

import torch
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from ftlight.measure.hardware import cpu_bf16_pays
from ftlight.strategies.registry import conf_packages

CONF_DIR = str(files("ftlight.conf"))
log = logging.getLogger("ftlight")


def _package_dir(dotted: str) -> Path | None:
    """The folder of a plugin's conf package, found without importing the plugin (a broken
    plugin must not stop the others); None when it is not installed."""
    top, _, rest = dotted.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)))
    return base.joinpath(*rest.split(".")) if rest else base


class StrategyConfSearchPath(SearchPathPlugin):
    """Adds every installed plugin's conf folder (``ftlight.conf`` entry points) to Hydra."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Append ``file://<plugin>/conf`` for each registered plugin."""
        for name, package in sorted(conf_packages().items()):
            folder = _package_dir(package)
            if folder is None or not folder.is_dir():
                log.warning(
                    "strategy plugin %r registers conf package %r, which is not installed; "
                    "strategy=%s will not be found",
                    name,
                    package,
                    name,
                )
                continue
            search_path.append(provider=f"ftlight-plugin-{name}", path=f"file://{folder}")


def literal(text: str) -> str:
    """``text`` as an OmegaConf string that reads back as ``text``: a ``${...}`` in it (a
    folder or file name) stays text instead of becoming an interpolation."""
    # n backslashes before "${" are n literal ones when written as 2n, plus one escaping "${"
    return re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", text)


@functools.cache
def register() -> None:
    """Register the search-path plugin and the resolvers (idempotent)."""
    Plugins.instance().register(StrategyConfSearchPath)
    OmegaConf.register_new_resolver("ftlight.precision", best_precision, replace=True)
    OmegaConf.register_new_resolver("ftlight.world_size", world_size, replace=True)
    # sweep trial folder names; imported here, not at the top: compare imports the whole report
    from ftlight.sweeps.callback import trial_name

    OmegaConf.register_new_resolver("ftlight.trial_name", trial_name, replace=True)


def world_size(devices: int | str, num_nodes: int | str = 1) -> int:
    """Processes in the job: devices per node (``auto`` = visible GPUs, else 1) times nodes."""
    if devices in ("auto", "-1", -1):
        devices = torch.cuda.device_count() or 1
    return int(devices) * int(num_nodes)


def best_precision(accelerator: str = "cpu") -> str:
    """``bf16-mixed`` where the hardware runs bf16 matmuls faster than fp32, else ``32-true``
    (``16-mixed`` on GPUs without bf16)."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_bf16_pays() else "32-true"
