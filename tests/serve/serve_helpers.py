"""Helpers of the export tests; a tiny Llama that llama.cpp's converter takes.

The zoo's byte-level tokenizers are refused by the converter (it knows BPE pre-tokenizers by
a hash of real vocabularies); a SentencePiece model goes through its ``tokenizer.model``
path, so a two-block Llama converts in seconds.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ftlight.models.tiny import CHATML_TEMPLATE
from ftlight.serve import llama_cpp

#: the chat specials the tiny tokenizer keeps whole (ChatML)
SPECIALS = ["<|im_start|>", "<|im_end|>"]


def build_spm_llama(folder: Path, task: str | None = "causal_lm") -> Path:
    """A two-block Llama with a SentencePiece tokenizer and a ChatML template in ``folder``
    (and an ``ftlight.json`` naming ``task``, as a run's ``model/`` has)."""
    import sentencepiece as spm
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from ftlight.data.demo import generate_tickets, to_sft_rows

    folder.mkdir(parents=True, exist_ok=True)
    # trained on demo tickets, so that ``data=demo`` prompts fit in few tokens
    rows = to_sft_rows(generate_tickets(300, seed=1))
    text = [v for row in rows for v in row.values()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=buf,
        vocab_size=1000,
        model_type="bpe",
        byte_fallback=True,
        user_defined_symbols=SPECIALS,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    tok = LlamaTokenizer.from_pretrained(folder, add_bos_token=False, legacy=False)
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if task:
        (folder / "ftlight.json").write_text(json.dumps({"task": task, "instruction": None}))
    return folder


def _server_missing() -> str | None:
    from ftlight.serve import llama_cpp

    if llama_cpp.program("llama-server") is None or llama_cpp.program("llama-quantize") is None:
        return llama_cpp.not_built("llama-server and llama-quantize")
    return None


#: the built llama.cpp programs, found before the tests switch to their own cache
BINARIES = None if _server_missing() else llama_cpp.binaries_dir()

#: llama.cpp's programs take a 20-minute build (``launch/build_llama_cpp.sh``), so their tests
#: skip until it is done, saying how; ``.ci/run`` runs them once its build has finished. The
#: converter comes with the README's install (the ``serve`` extra) and is never skipped.
needs_llama_cpp = pytest.mark.skipif(_server_missing() is not None, reason=str(_server_missing()))


def train_tiny_run(run_dir: Path, model_dir: Path, extra: list[str] | None = None) -> Path:
    """``ftlight-train`` (in this process) on the tiny SentencePiece Llama: LoRA, demo data."""
    from hydra import compose, initialize_config_dir

    import ftlight.train  # noqa: F401  (registers the search path and resolvers)
    from ftlight.config import CONF_DIR
    from ftlight.train import train

    overrides = [
        "model=hf",
        f"model.name_or_path={model_dir}",
        "data=demo",
        "data.train_size=32",
        "data.val_size=8",
        "data.batch_size=4",
        "trainer.max_steps=8",
        "optimizer.lr=1e-2",
        "strategy=lora",
        "logger=none",
        "eval.plots=false",
        "eval.few_shot=0",
        "eval.general=null",
        "callbacks.progress=null",
        "task.max_new_tokens=24",
        *(extra or []),
        f"run_dir={run_dir}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    train(cfg)
    return run_dir
