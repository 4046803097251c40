"""Checks against the model and a checkpoint to resume: positions, strategy, task, model, data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ftlight.errors import ConfigError
from ftlight.validate.common import select, show
from ftlight.validate.fingerprint import differences
from ftlight.validate.positions import position_limit

log = logging.getLogger("ftlight")

CKPT_CHECKS = ("strict", "warn")
"""``ckpt_check`` settings: refuse, or only warn about, a checkpoint of another model or data."""


def read_checkpoint_meta(path: str) -> dict[str, Any]:
    """The ``ftlight`` entry of a checkpoint file (or sharded checkpoint folder).

    Tensors are memory-mapped, not read, so this costs little even for a full fine-tune.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        if not (file / "meta.pt").is_file():
            last = file / "checkpoints" / "last.ckpt"
            hint = f"; did you mean ckpt_path={last}?" if last.is_file() else ""
            raise ConfigError(f"ckpt_path={path} is a folder, not a checkpoint{hint}")
        file = file / "meta.pt"  # a sharded (FSDP2) checkpoint keeps everything else here
    if not file.is_file():
        raise ConfigError(
            f"ckpt_path={path} does not exist (looked in {file.resolve()}). Resume from a "
            "run's checkpoint, ckpt_path=<run>/checkpoints/last.ckpt, or leave ckpt_path unset"
        )
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, not a torch file, foreign pickles: all unreadable
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"ckpt_path={path} is not a readable checkpoint ({reason}). It may be truncated "
            "or another kind of file: resume from another checkpoint of the run (e.g. "
            "<run>/checkpoints/last.ckpt) or leave ckpt_path unset"
        ) from None
    meta = ckpt.get("ftlight") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict):
        raise ConfigError(
            f"ckpt_path={path} was not written by ftlight-train (it has no 'ftlight' entry); "
            "resume only from a run's checkpoints/last.ckpt"
        )
    return meta


def model_shape(config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a model's ``config.json`` that decide its architecture and size."""
    keys = (
        *("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads"),
        *("num_key_value_heads", "intermediate_size", "vocab_size", "n_embd", "n_layer"),
    )
    return {k: config[k] for k in keys if k in config}


def checkpoint_file(cfg: DictConfig) -> str | None:
    """The checkpoint file a resume reads, where it can be known before the fit."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or "://" in str(ckpt):  # remote checkpoints are read by Lightning itself
        return None
    if ckpt == "auto":  # the run folder's newest (ftlight.resume), or none
        from ftlight.resume import newest_checkpoint

        found = newest_checkpoint(Path(str(cfg.run_dir)))
        return str(found[0]) if found else None
    if ckpt in ("last", "best", "hpc"):  # Lightning finds these in the run's own folder
        last = Path(str(cfg.run_dir)) / "checkpoints" / "last.ckpt"
        return str(last) if ckpt == "last" and last.is_file() else None
    return str(ckpt)


def compare_checkpoint(
    cfg: DictConfig, ckpt: str, meta: dict[str, Any], run: dict[str, Any]
) -> None:
    mode = cfg.get("ckpt_check", "strict")
    problems = []
    old_model, new_model = meta.get("model"), run["model"]
    if old_model is not None:
        shape = {k: v for k, v in old_model.items() if k != "name"}
        now = {k: v for k, v in new_model.items() if k != "name"}
        if shape and now and shape != now:
            keys = sorted(k for k in {*shape, *now} if shape.get(k) != now.get(k))
            problems.append(
                f"the model: it was written for {old_model.get('name')} "
                f"({', '.join(f'{k}={shape.get(k)}' for k in keys)}), this run loads "
                f"{new_model.get('name')} ({', '.join(f'{k}={now.get(k)}' for k in keys)})"
            )
    old_data, new_data = meta.get("data"), run["data"]
    if old_data is not None and new_data is not None and old_data != new_data:
        problems.append(
            f"the training data: its rows hash to {old_data}, this run's to {new_data} "
            "(other files, columns, format or held-out split)"
        )
    more, unchecked = differences(meta, run)
    problems += more
    if unchecked:
        log.warning(
            "ckpt_path=%s holds no fingerprint of its %s (an older ftlight wrote it): resuming "
            "without checking them",
            ckpt,
            " or ".join(unchecked),
        )
    if not problems:
        return
    message = f"ckpt_path={ckpt} does not match this run in " + "; and in ".join(problems)
    if mode == "warn":
        log.warning("%s (resuming anyway: ckpt_check=warn)", message)
        return
    raise ConfigError(
        f"{message}. Resume with the run's own settings, or set ckpt_check=warn to resume "
        "from it anyway"
    )


def check_positions(cfg: DictConfig, data: Any, config: dict[str, Any], where: str) -> None:
    """Rows longer than the model's position table fail at the first step (absolute positions)
    or go beyond what it was trained on (rotary); a longer ``data.max_length`` alone is fine."""
    if (found := position_limit(config)) is None:
        return
    limit, entry = found
    lengths = [len(r["input_ids"]) for rows in data.encoded.values() for r in rows]
    longer = sum(n > limit for n in lengths)
    if longer:
        raise ConfigError(
            f"{longer} rows are longer than the model's {limit} positions ({entry} "
            f"{where}; the longest has {max(lengths)} tokens under data.max_length="
            f"{show(select(cfg, 'data.max_length'))}); set data.max_length={limit} to "
            "truncate them"
        )
