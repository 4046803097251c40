"""GGUF files as Hugging Face folders: de-quantised once, saved as plain safetensors."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

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
        tokenizer = AutoTokenizer.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False
        )
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, trust_remote_code=False
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
    """A copy of a GGUF-loaded model not marked quantised, so ``save_pretrained`` accepts it."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()
