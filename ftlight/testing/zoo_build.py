"""The parts of a zoo model (``ftlight.testing.zoo``): a tokenizer's shape, and a model folder
built from a ``transformers`` config and cached by what it is built from."""

from __future__ import annotations

import fcntl
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, processors
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

from ftlight.files import atomic_dir
from ftlight.models.tiny import _byte_level_tokenizer
from ftlight.paths import cache_root


@dataclass(frozen=True)
class TokenizerShape:
    """How a family's tokenizer looks: its special tokens, which of them it adds, its layout."""

    specials: tuple[str, ...]
    eos: str | None = None
    bos: str | None = None
    pad: str | None = None  # None: the family ships no pad token (GPT-2)
    add_bos: bool = False  # the tokenizer itself puts ``bos`` before every text
    chat_template: str | None = None
    padding_side: str = "right"
    encoder: bool = False  # [CLS] text [SEP] (or <s> text </s>) around every text
    #: token ids the generation config stops at besides ``eos`` (Gemma's end of turn)
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ZooModel:
    """One architecture of the zoo: its config, its tokenizer's shape and the task it serves."""

    name: str
    model_type: str
    tokenizer: TokenizerShape
    config: dict[str, Any] = field(default_factory=dict)
    #: ``causal_lm`` (saved as a causal LM) or ``classification`` (an encoder saved as its base
    #: model, or a causal LM that the task loads as a sequence classifier)
    task: str = "causal_lm"
    #: whether positions are a learned table (indexing past it fails)
    learned_positions: bool = False
    encoder: bool = False

    def spec(self) -> dict[str, Any]:
        """What decides the folder's contents (two entries with one spec share a folder)."""
        tok = {k: v for k, v in vars(self.tokenizer).items()}
        return {
            "model_type": self.model_type,
            "config": self.config,
            "tokenizer": tok,
            "encoder": self.encoder,
            "seed": 0,
        }

    def build(self, root: Path | None = None) -> Path:
        """The model's folder under ``root`` (default: the ftlight cache), built once."""
        root = Path(root) if root is not None else cache_root() / "zoo"
        spec = self.spec()
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
        target = root / f"{self.model_type}-{key}"
        if (target / "config.json").is_file():
            return target
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "config.json").is_file():
                atomic_dir(target, self._write)
        return target

    def _write(self, folder: Path) -> None:
        tok = build_tokenizer(self.tokenizer)
        ids = {
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        }
        if self.tokenizer.encoder:  # an encoder's text starts with CLS and ends with SEP
            cls, sep = tok.cls_token_id, tok.sep_token_id
            ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": cls, "eos_token_id": sep}
            ids.update(cls_token_id=cls, sep_token_id=sep)
        config = AutoConfig.for_model(self.model_type, vocab_size=len(tok), **ids, **self.config)
        with torch.random.fork_rng():  # building the cache must not reseed the caller's run
            torch.manual_seed(0)
            auto = AutoModel if self.encoder else AutoModelForCausalLM
            model = auto.from_config(config, dtype=torch.float32)
        if not self.encoder:
            stops = [tok.eos_token_id, *tok.convert_tokens_to_ids(list(self.tokenizer.stop))]
            model.generation_config = GenerationConfig(
                bos_token_id=tok.bos_token_id,
                eos_token_id=stops if len(stops) > 1 else stops[0],
                pad_token_id=tok.pad_token_id,
            )
        model.save_pretrained(folder)
        tok.save_pretrained(folder)


def build_tokenizer(shape: TokenizerShape) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte) with ``shape``'s specials and layout."""
    raw: Tokenizer = _byte_level_tokenizer(list(shape.specials))
    index = {tok: i for i, tok in enumerate(shape.specials)}
    kwargs: dict[str, Any] = {"padding_side": shape.padding_side}
    if shape.encoder:
        cls, sep = ("[CLS]", "[SEP]") if "[CLS]" in index else ("<s>", "</s>")
        mask, unk = ("[MASK]", "[UNK]") if "[MASK]" in index else ("<mask>", "<unk>")
        pair = (
            f"{cls} $A {sep} $B:1 {sep}:1" if cls == "[CLS]" else f"{cls} $A {sep} {sep} $B {sep}"
        )
        raw.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=pair,
            special_tokens=[(cls, index[cls]), (sep, index[sep])],
        )
        kwargs.update(cls_token=cls, sep_token=sep, mask_token=mask, unk_token=unk)
        if cls == "<s>":
            kwargs.update(bos_token=cls, eos_token=sep)
    elif shape.add_bos:
        raw.post_processor = processors.TemplateProcessing(
            single=f"{shape.bos} $A",
            pair=f"{shape.bos} $A {shape.bos} $B:1",
            special_tokens=[(shape.bos, index[shape.bos])],
        )
    for name in ("eos", "bos", "pad"):
        if getattr(shape, name):
            kwargs[f"{name}_token"] = getattr(shape, name)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, **kwargs)
    if shape.chat_template:
        tok.chat_template = shape.chat_template
    return tok
