"""The one validation pass: every mistake in a composed config is reported before heavy work.

``check_config`` runs first, before any tokenizer or model loads: every numeric option in its
range, every choice among its values, the checkpoint to resume readable and written by the
same strategy and task, the model folder present, the cache writable. ``check_run`` runs once
the model's folder is known and the data is tokenised, still before the weights load: the rows
fit the model's position limit, and the checkpoint was written for the same model and data.
A key is checked wherever it appears, so options keep one meaning across config groups.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ftlight.errors import ConfigError, ModelError

log = logging.getLogger("ftlight")

CKPT_CHECKS = ("strict", "warn")
"""``ckpt_check`` settings: refuse, or only warn about, a checkpoint of another model or data."""

_ABSENT = object()  # a key the composed config does not have


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (``*_open``: the bound itself excluded), plus the
    special values in ``also`` (null, -1, auto)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    also: tuple[Any, ...] = ()

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is in range."""
        if any(value is v or (type(value) is type(v) and value == v) for v in self.also):
            return True
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """What is accepted, in words."""
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            kind += f" in {left}{_show(self.low)}, {_show(self.high)}{right}"
        elif self.low is not None:
            kind += f" {'>' if self.low_open else '>='} {_show(self.low)}"
        return " or ".join([*(_show(v) for v in self.also), kind])


_INT0, _INT1 = Range(low=0, integer=True), Range(low=1, integer=True)
_INT1_OR_NULL = Range(low=1, integer=True, also=(None,))

RANGES: dict[str, tuple[Range, str]] = {
    "seed": (Range(integer=True), "0"),
    "optimizer.lr": (Range(low=0, low_open=True), "2e-4"),
    "optimizer.weight_decay": (Range(low=0), "0.01"),
    "optimizer.eps": (Range(low=0, low_open=True), "1e-8"),
    "scheduler.warmup_ratio": (Range(0, 1, high_open=True), "0.05"),
    "scheduler.warmup_steps": (Range(low=0, integer=True, also=(None,)), "100"),
    "scheduler.min_lr_ratio": (Range(0, 1), "0.1"),
    "data.batch_size": (_INT1, "8"),
    "data.eval_batch_size": (_INT1_OR_NULL, "16"),
    "data.max_length": (_INT1_OR_NULL, "1024"),
    "data.val_fraction": (Range(0, 1, low_open=True, high_open=True), "0.1"),
    "data.max_eval_samples": (_INT1_OR_NULL, "200"),
    "data.num_workers": (_INT0, "2"),
    "data.train_size": (_INT1, "700"),
    "data.val_size": (_INT0, "50"),
    "data.test_size": (_INT0, "50"),
    "data.demo_seed": (Range(integer=True), "0"),
    "model.hidden_size": (_INT1, "32"),
    "model.num_layers": (_INT1, "2"),
    "model.num_heads": (_INT1, "4"),
    "model.num_kv_heads": (_INT1, "2"),
    "model.intermediate_size": (_INT1, "64"),
    "model.max_positions": (_INT1, "512"),
    "task.max_new_tokens": (Range(low=1, integer=True, also=("auto",)), "auto"),
    "trainer.max_steps": (Range(low=1, integer=True, also=(-1,)), "100"),
    "trainer.max_epochs": (Range(low=1, integer=True, also=(None, -1)), "1"),
    "trainer.accumulate_grad_batches": (_INT1, "4"),
    "trainer.gradient_clip_val": (Range(low=0, also=(None,)), "1.0"),
    "trainer.num_nodes": (_INT1, "1"),
    "trainer.log_every_n_steps": (_INT1, "5"),
    "trainer.check_val_every_n_epoch": (_INT1_OR_NULL, "1"),
    "trainer.val_check_interval": (Range(low=0, low_open=True, also=(None,)), "1.0"),
    "trainer.num_sanity_val_steps": (Range(low=-1, integer=True), "0"),
    "trainer.limit_val_batches": (Range(low=0, also=(None,)), "1.0"),
    "callbacks.checkpoint.every_n_train_steps": (_INT1_OR_NULL, "100"),
    "callbacks.checkpoint.save_top_k": (Range(low=-1, integer=True), "1"),
    "callbacks.progress.refresh_rate": (_INT0, "5"),
    "callbacks.throughput.log_every_n_steps": (_INT1, "5"),
}
"""Numeric options: the accepted range and a valid example for the fix."""

PRECISIONS = (
    *("bf16-mixed", "32-true", "16-mixed", "bf16-true", "16-true", "64-true", "bf16", "16"),
    *("32", "64", "transformer-engine", "transformer-engine-float16"),
)
"""Lightning's ``trainer.precision`` values (16, 32 and 64 may be given as numbers)."""

BOOLEANS = (
    "compile",
    "activation_checkpointing",
    "eval.before",
    "eval.after",
    "eval.generate_during_fit",
    "eval.plots",
    "eval.export",
    "data.packing",
    "data.group_by_length",
    "data.cache_tokenized",
    "model.trust_remote_code",
    "model.chat_template",
    "task.generate",
)
"""Options that are true or false (a typo such as ``flase`` would otherwise read as true)."""


def _choices() -> dict[str, tuple[Any, ...]]:
    from ftlight.optim import KINDS
    from ftlight.speed.attention import KERNELS

    return {
        "eval.split": ("validation", "test"),
        "ckpt_check": CKPT_CHECKS,
        "attention_kernel": KERNELS,
        "trainer.precision": PRECISIONS,
        "trainer.accelerator": ("cpu", "gpu", "cuda", "mps", "tpu", "auto"),
        "task.output_format": ("auto", "text", "json"),
        "scheduler.kind": KINDS,
    }


def check_config(cfg: DictConfig) -> None:
    """Every check that needs only the config and the disk; raises the first problem found."""
    _check_training_length(cfg)
    _check_values(cfg)
    _check_data(cfg)
    _check_model_path(cfg)
    _check_cache(cfg)
    if ckpt := _checkpoint_file(cfg):
        meta = read_checkpoint_meta(ckpt)
        for group in ("strategy", "task"):
            target = OmegaConf.select(cfg, f"{group}._target_", default=None)
            name = _registered_name(target)
            if name and meta.get(group) and meta[group] != name:
                raise ConfigError(
                    f"ckpt_path={ckpt} was written with {group}={meta[group]} but this "
                    f"run uses {group}={name}; resume with {group}={meta[group]}, or leave "
                    "ckpt_path unset to start a new run"
                )


def check_run(cfg: DictConfig, source: Any, data: Any) -> dict[str, Any]:
    """Checks against the model's config and the parsed data, before the weights load.

    Returns the run's fingerprint (model shape, training data), which checkpoints store.
    """
    folder = Path(str(source.resolve())) if hasattr(source, "resolve") else None
    config = _read_json(folder / "config.json") if folder and folder.is_dir() else None
    if config:
        _check_positions(cfg, data, config, f"in {folder / 'config.json'}")
    fingerprint = {
        "model": {"name": source.display_name, **model_shape(config or {})},
        "data": getattr(data, "fingerprint", None),
    }
    if ckpt := _checkpoint_file(cfg):
        _compare_checkpoint(cfg, ckpt, read_checkpoint_meta(ckpt), fingerprint)
    return fingerprint


# -- option values ----------------------------------------------------------------------------
def _check_values(cfg: DictConfig) -> None:
    for key, (accepted, example) in RANGES.items():
        value = _select(cfg, key)
        if value is not _ABSENT and not accepted.accepts(value):
            raise ConfigError(
                f"{key}={_show(value)} must be {accepted.describe()}; e.g. {key}={example}"
            )
    betas = _select(cfg, "optimizer.betas")
    if betas is not _ABSENT and not (
        isinstance(betas, list)
        and len(betas) == 2
        and all(Range(0, 1, high_open=True).accepts(b) for b in betas)
    ):
        raise ConfigError(
            f"optimizer.betas={_show(betas)} must be two numbers in [0, 1); "
            "e.g. optimizer.betas=[0.9,0.999]"
        )
    for key, allowed in _choices().items():
        value = _select(cfg, key)
        if value is not _ABSENT and value not in allowed and str(value) not in allowed:
            raise ConfigError(
                f"{key}={_show(value)} is not a choice; use one of {', '.join(map(str, allowed))}"
            )
    for key in BOOLEANS:
        value = _select(cfg, key)
        if value is not _ABSENT and not isinstance(value, bool):
            raise ConfigError(f"{key}={_show(value)} must be true or false")
    dtype = _select(cfg, "model.dtype")
    if dtype is not _ABSENT:
        from ftlight.models.sources import parse_dtype

        parse_dtype(dtype)
    heads, kv = _select(cfg, "model.num_heads"), _select(cfg, "model.num_kv_heads")
    hidden = _select(cfg, "model.hidden_size")
    if _ABSENT not in (heads, kv, hidden) and (hidden % heads or heads % kv):
        raise ConfigError(
            f"model.hidden_size={hidden}, model.num_heads={heads}, model.num_kv_heads={kv}: "
            "the hidden size must divide into the heads, and the heads into the key/value "
            "heads; e.g. model.hidden_size=32 model.num_heads=4 model.num_kv_heads=2"
        )


def _check_training_length(cfg: DictConfig) -> None:
    steps, epochs = _select(cfg, "trainer.max_steps"), _select(cfg, "trainer.max_epochs")
    for key, value in (("trainer.max_steps", steps), ("trainer.max_epochs", epochs)):
        if value == 0 and not isinstance(value, bool):
            raise ConfigError(
                f"{key}=0 trains nothing, and the run would export the untrained model as if "
                "fine-tuned. To score a model without training, use ftlight-eval <run or model "
                f"folder> <overrides>; to train, set {key} to a positive number (or -1)"
            )
    if steps == -1 and epochs == -1:
        raise ConfigError(
            "trainer.max_epochs=-1 with trainer.max_steps=-1 never stops; set one of them, "
            "e.g. trainer.max_steps=500 or trainer.max_epochs=3"
        )


_TEST_SPLIT_KEYS = (
    ("test_path", None, "file"),
    ("test_split", None, "split"),
    ("test_size", 0, "rows"),
)
"""The data options that give a test split, their value when there is none, what they take."""


def _check_data(cfg: DictConfig) -> None:
    data = cfg.get("data")
    if data is None:
        return
    from ftlight.data.formats import get_format

    fmt = _select(cfg, "data.format")
    fields = _select(cfg, "data.fields")
    if fmt == "auto":  # the task's default (a source with its own format uses the same)
        fmt = getattr(_target_class(_select(cfg, "task._target_")), "default_format", _ABSENT)
    if fmt is not _ABSENT:
        get_format(fmt, **(fields if isinstance(fields, dict) else {}))  # names, columns
    if _select(cfg, "eval.split") == "test" and (
        _select(cfg, "eval.before") is True or _select(cfg, "eval.after") is True
    ):
        for key, none, what in _TEST_SPLIT_KEYS:
            if key in data and data.get(key) == none:
                raise ConfigError(
                    f"eval.split=test, but the data has no test split (data.{key}={_show(none)})"
                    f"; set data.{key}=<{what}>, or evaluate on eval.split=validation"
                )


# -- model, cache and checkpoint ------------------------------------------------------------
def looks_like_path(value: str) -> bool:
    """Whether a model reference is meant as a local folder rather than a Hub id (org/name)."""
    text = str(value)
    return (
        text.startswith((".", "/", "~"))
        or text.count("/") > 1  # a Hub id is name or org/name
        or "\\" in text
        or Path(text).expanduser().exists()
        or ("/" in text and Path(text.split("/")[0]).is_dir())  # runs/<typo> next to runs/
    )


def _check_model_path(cfg: DictConfig) -> None:
    ref = _select(cfg, "model.name_or_path")
    if not isinstance(ref, str) or not looks_like_path(ref):
        return
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise ModelError(
            f"model.name_or_path={ref!r}: no such folder (looked in {folder.resolve()}). "
            "Check the path (relative paths start from the directory you launched from); "
            "a Hub id has the form org/name"
        )
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"model.name_or_path={ref!r} is a folder without config.json, so not a model "
            "written by save_pretrained; for a run folder use its model/ subfolder"
        )


def _check_cache(cfg: DictConfig) -> None:
    """The cache holds tiny and PyPI models and tokenised data: it must be writable."""
    target = str(_select(cfg, "model._target_"))
    uses_cache = target.endswith((".TinyModel", ".PyPIModel"))
    if not uses_cache and _select(cfg, "data.cache_tokenized") is not True:
        return
    from ftlight.paths import cache_root

    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        where = (
            f"FTLIGHT_CACHE={os.environ['FTLIGHT_CACHE']}"
            if os.environ.get("FTLIGHT_CACHE")
            else f"the default cache folder {root} (FTLIGHT_CACHE is unset)"
        )
        raise ConfigError(
            f"{where} is not a writable folder ({type(err).__name__}: {err.strerror or err}). "
            "ftlight keeps converted models and tokenised data there: point FTLIGHT_CACHE at "
            "a folder you can write, e.g. export FTLIGHT_CACHE=$HOME/.cache/ftlight"
        ) from None


def read_checkpoint_meta(path: str) -> dict[str, Any]:
    """The ``ftlight`` entry of a checkpoint file (or sharded checkpoint folder).

    Tensors are memory-mapped, not read, so this costs little even for a full fine-tune.
    """
    import torch

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


def _checkpoint_file(cfg: DictConfig) -> str | None:
    """The checkpoint file a resume reads, where it can be known before the fit."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or "://" in str(ckpt):  # remote checkpoints are read by Lightning itself
        return None
    if ckpt in ("last", "best", "hpc"):  # Lightning finds these in the run's own folder
        last = Path(str(cfg.run_dir)) / "checkpoints" / "last.ckpt"
        return str(last) if ckpt == "last" and last.is_file() else None
    return str(ckpt)


def _compare_checkpoint(
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


def _check_positions(cfg: DictConfig, data: Any, config: dict[str, Any], where: str) -> None:
    """Rows longer than the model's position table fail at the first step (absolute positions)
    or go beyond what it was trained on (rotary); a longer ``data.max_length`` alone is fine."""
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(config.get(name), int):
            limit = config[name]
            break
    else:
        return
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        limit -= (config.get("pad_token_id") or 1) + 1  # positions start after the padding id
    lengths = [len(r["input_ids"]) for rows in data.encoded.values() for r in rows]
    longer = sum(n > limit for n in lengths)
    if longer:
        raise ConfigError(
            f"{longer} rows are longer than the model's {limit} positions ({name}={config[name]} "
            f"{where}; the longest has {max(lengths)} tokens under data.max_length="
            f"{_show(_select(cfg, 'data.max_length'))}); set data.max_length={limit} to "
            "truncate them"
        )


# -- helpers ----------------------------------------------------------------------------------


def _select(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key`` as plain Python, or ``_ABSENT`` when the key is missing."""
    node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    if node is _ABSENT or (isinstance(node, str) and node == "???"):
        return _ABSENT
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _target_class(target: Any) -> type | None:
    """The class a ``_target_`` names, or None when it cannot be imported (reported later)."""
    if not isinstance(target, str) or not target:
        return None
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception:  # an unimportable target is reported when it is built
        return None


def _registered_name(target: str | None) -> str | None:
    if not target:
        return None
    from hydra.utils import get_class

    try:
        return getattr(get_class(target), "name", None) or None
    except Exception:  # an unimportable target is reported when it is built
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)
