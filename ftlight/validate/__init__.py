"""The one validation pass: every mistake in a composed config is reported before heavy work.

``check_config`` runs first, before any tokenizer or model loads: a SLURM job shaped as the
trainer config needs, every numeric option in its range, every choice among its values, the
checkpoint to resume readable and written by the same strategy and task, the model folder
present, the cache writable. ``check_run`` runs once
the model's folder is known and the data is tokenised, still before the weights load: the rows
fit the model's position limit, and the checkpoint was written for the same model and data.
A key is checked wherever it appears, so options keep one meaning across config groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftlight.errors import ConfigError
from ftlight.validate.common import read_json, registered_name
from ftlight.validate.fingerprint import tokenizer_parts, weights_fingerprint
from ftlight.validate.keys import check_resolves, check_signatures
from ftlight.validate.options import (
    check_cache,
    check_data,
    check_model_path,
    check_training_length,
    check_values,
    looks_like_path,
)
from ftlight.validate.positions import check_generation, position_limit
from ftlight.validate.run import (
    CKPT_CHECKS,
    check_positions,
    checkpoint_file,
    compare_checkpoint,
    model_shape,
    read_checkpoint_meta,
)
from ftlight.validate.scheduler import check_scheduler
from ftlight.validate.skeleton import check_strategy_fits


def check_config(cfg: DictConfig) -> None:
    """Every check that needs only the config, the disk and the environment (the scheduler's
    job); raises the first problem found."""
    check_resolves(cfg)  # the checks below read values, which resolve interpolations
    check_scheduler(cfg)
    check_training_length(cfg)
    check_values(cfg)
    check_signatures(cfg)  # after the checks that know a key's range, not only its type
    check_data(cfg)
    check_model_path(cfg)
    check_cache(cfg)
    if ckpt := checkpoint_file(cfg):
        meta = read_checkpoint_meta(ckpt)
        for group in ("strategy", "task"):
            target = OmegaConf.select(cfg, f"{group}._target_", default=None)
            name = registered_name(target)
            if name and meta.get(group) and meta[group] != name:
                raise ConfigError(
                    f"ckpt_path={ckpt} was written with {group}={meta[group]} but this "
                    f"run uses {group}={name}; resume with {group}={meta[group]}, or leave "
                    "ckpt_path unset to start a new run"
                )


def check_run(cfg: DictConfig, source: Any, data: Any, strategy: Any = None) -> dict[str, Any]:
    """Checks against the model's config and the parsed data, before the weights load.

    ``strategy`` may refuse the model (``Strategy.check_model``). Returns the run's
    fingerprint (model shape, training data), which checkpoints store.
    """
    folder = Path(str(source.resolve())) if hasattr(source, "resolve") else None
    config = read_json(folder / "config.json") if folder and folder.is_dir() else None
    if config:
        check_positions(cfg, data, config, f"in {folder / 'config.json'}")
        if (limit := position_limit(config)) is not None and hasattr(data, "position_limit"):
            data.position_limit = limit[0]  # padding to a multiple rounds up no further
        check_generation(cfg, data, config, f"in {folder / 'config.json'}")
        check_strategy_fits(strategy, config, data.task)
    fingerprint = {
        "model": {"name": source.display_name, **model_shape(config or {})},
        "data": getattr(data, "fingerprint", None),
        "tokenizer": tokenizer_parts(getattr(data, "tokenizer", None)),
        "weights": weights_fingerprint(folder),
    }
    if ckpt := checkpoint_file(cfg):
        compare_checkpoint(cfg, ckpt, read_checkpoint_meta(ckpt), fingerprint)
    return fingerprint


__all__ = [
    "CKPT_CHECKS",
    "check_config",
    "check_run",
    "looks_like_path",
    "model_shape",
    "read_checkpoint_meta",
]
