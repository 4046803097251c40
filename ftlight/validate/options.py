"""Every option in its range and every choice among its values, read from the composed config."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ftlight.data.formats import get_format
from ftlight.errors import ConfigError, ModelError
from ftlight.optim import KINDS
from ftlight.paths import cache_root, looks_like_path
from ftlight.speed.attention import KERNELS
from ftlight.speed.plan import SWITCHES
from ftlight.validate.common import ABSENT, select, show, target_class
from ftlight.validate.model_folder import check_model_folder, resolve_folder
from ftlight.validate.run import CKPT_CHECKS


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
            kind += f" in {left}{show(self.low)}, {show(self.high)}{right}"
        elif self.low is not None:
            kind += f" {'>' if self.low_open else '>='} {show(self.low)}"
        return " or ".join([*(show(v) for v in self.also), kind])


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
    "data.pad_to_multiple_of": (_INT1_OR_NULL, "8"),
    "data.num_workers": (_INT0, "2"),
    "speed.kernel_cache": (_INT1_OR_NULL, "256"),
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
    *(f"speed.{name}" for name in SWITCHES if name not in ("attention_kernel", "kernel_cache")),
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
    return {
        "eval.split": ("validation", "test"),
        "ckpt_check": CKPT_CHECKS,
        "speed.attention_kernel": KERNELS,
        "trainer.precision": PRECISIONS,
        "trainer.accelerator": ("cpu", "gpu", "cuda", "mps", "tpu", "auto"),
        "task.output_format": ("auto", "text", "json"),
        "scheduler.kind": KINDS,
    }


def check_values(cfg: DictConfig) -> None:
    for key, (accepted, example) in RANGES.items():
        value = select(cfg, key)
        if value is not ABSENT and not accepted.accepts(value):
            raise ConfigError(
                f"{key}={show(value)} must be {accepted.describe()}; e.g. {key}={example}"
            )
    betas = select(cfg, "optimizer.betas")
    if betas is not ABSENT and not (
        isinstance(betas, list)
        and len(betas) == 2
        and all(Range(0, 1, high_open=True).accepts(b) for b in betas)
    ):
        raise ConfigError(
            f"optimizer.betas={show(betas)} must be two numbers in [0, 1); "
            "e.g. optimizer.betas=[0.9,0.999]"
        )
    for key, allowed in _choices().items():
        value = select(cfg, key)
        if value is not ABSENT and value not in allowed and str(value) not in allowed:
            raise ConfigError(
                f"{key}={show(value)} is not a choice; use one of {', '.join(map(str, allowed))}"
            )
    for key in BOOLEANS:
        value = select(cfg, key)
        if value is not ABSENT and not isinstance(value, bool):
            raise ConfigError(f"{key}={show(value)} must be true or false")
    dtype = select(cfg, "model.dtype")
    if dtype is not ABSENT:
        from ftlight.models.sources import parse_dtype

        parse_dtype(dtype)
    heads, kv = select(cfg, "model.num_heads"), select(cfg, "model.num_kv_heads")
    hidden = select(cfg, "model.hidden_size")
    if ABSENT not in (heads, kv, hidden) and (hidden % heads or heads % kv):
        raise ConfigError(
            f"model.hidden_size={hidden}, model.num_heads={heads}, model.num_kv_heads={kv}: "
            "the hidden size must divide into the heads, and the heads into the key/value "
            "heads; e.g. model.hidden_size=32 model.num_heads=4 model.num_kv_heads=2"
        )


def check_training_length(cfg: DictConfig) -> None:
    steps, epochs = select(cfg, "trainer.max_steps"), select(cfg, "trainer.max_epochs")
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


def check_data(cfg: DictConfig) -> None:
    data = cfg.get("data")
    if data is None:
        return
    fmt = select(cfg, "data.format")
    fields = select(cfg, "data.fields")
    if fmt == "auto":  # the task's default (a source with its own format uses the same)
        fmt = getattr(target_class(select(cfg, "task._target_")), "default_format", ABSENT)
    if fmt is not ABSENT:
        get_format(fmt, **(fields if isinstance(fields, dict) else {}))  # names, columns
    if select(cfg, "eval.split") == "test" and (
        select(cfg, "eval.before") is True or select(cfg, "eval.after") is True
    ):
        for key, none, what in _TEST_SPLIT_KEYS:
            if key in data and data.get(key) == none:
                raise ConfigError(
                    f"eval.split=test, but the data has no test split (data.{key}={show(none)})"
                    f"; set data.{key}=<{what}>, or evaluate on eval.split=validation"
                )


def check_model_path(cfg: DictConfig) -> None:
    ref = select(cfg, "model.name_or_path")
    if not isinstance(ref, str) or not looks_like_path(ref):
        return
    folder = Path(ref).expanduser()
    where = resolve_folder(folder, ref)
    if not folder.is_dir():
        raise ModelError(
            f"model.name_or_path={ref!r}: no such folder (looked in {where}). "
            "Check the path (relative paths start from the directory you launched from); "
            "a Hub id has the form org/name"
        )
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"model.name_or_path={ref!r} is a folder without config.json, so not a model "
            "written by save_pretrained; for a run folder use its model/ subfolder"
        )
    check_model_folder(folder, ref, select(cfg, "model.trust_remote_code"))


def check_cache(cfg: DictConfig) -> None:
    """The cache holds tiny and PyPI models and tokenised data: it must be writable."""
    target = str(select(cfg, "model._target_"))
    uses_cache = target.endswith((".TinyModel", ".PyPIModel"))
    if not uses_cache and select(cfg, "data.cache_tokenized") is not True:
        return
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
