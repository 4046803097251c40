"""GGUF files as Hugging Face folders: de-quantised once, saved as plain safetensors."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftlight.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Load a GGUF causal LM and save it as a float32 safetensors Hugging Face folder."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"reading {gguf_path.name} needs the gguf package: pip install 'gguf>=0.10'"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False
            )
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent,
                gguf_file=gguf_path.name,
                dtype=torch.float32,
                trust_remote_code=False,
            )
    except Exception as err:  # transformers raises many types for a bad file
        raise ModelError(
            f"could not load {gguf_path.name} as a GGUF causal language model: {err}. "
            "Check that the file is a complete GGUF of an architecture transformers supports."
        ) from err
    model = dequantised_copy(loaded)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    reloaded = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    if tokenizer.chat_template and not reloaded.chat_template:
        raise ModelError(f"the chat template of {gguf_path.name} was lost when saving to {out}")


def dequantised_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of a GGUF-loaded model not marked quantised, so ``save_pretrained`` accepts it.

    The copy is built on the meta device and takes the loaded tensors as they are (no random
    initialisation of 135 M parameters only to overwrite them, no second copy of the weights).
    """
    import torch

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), assign=True)
    for name, buffer in model.named_buffers():  # buffers outside the state dict (rotary)
        owner, _, attr = name.rpartition(".")
        plain.get_submodule(owner).register_buffer(attr, buffer, persistent=False)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


@contextlib.contextmanager
def _parsed_once() -> Iterator[None]:
    """Within the block, each GGUF file is parsed once and each tensor-name map built once, and
    transformers' conversion runs without its progress bar.

    ``transformers`` reads the file's metadata separately for the tokenizer, the config and
    the weights, and rebuilds gguf's name map for every submodule it visits: most of a
    conversion's time, done once instead.
    """
    import gguf
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    bar = getattr(hf_gguf, "tqdm", None)
    readers: dict[tuple[str, str], Any] = {}

    def cached_reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader = cached_reader
    gguf.get_tensor_name_map = functools.cache(name_map)
    if bar is not None:  # its own progress bar: ftlight logs the conversion's time instead
        hf_gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
        if bar is not None:
            hf_gguf.tqdm = bar
