"""A zoo of tiny random models, one per architecture family a user may bring.

Each zoo model is a local folder (``model=hf model.name_or_path=<folder>``) built from a
``transformers`` config in seconds and cached like ``ftlight.models.tiny``: about 100k
parameters, and a byte-level tokenizer shaped like its family's real one (chat template or
none, pad token or none, BOS added or not, CLS/SEP, padding side). Families with learned
absolute positions get a small position limit (``LEARNED_LIMIT``), so that passes running
past it fail in tests as they would on the real model.

A strategy plugin runs its conformance suite over the zoo with::

    from ftlight.testing import StrategyConformance
    from ftlight.testing.zoo import zoo_setups

    class TestOnTheZoo(StrategyConformance):
        strategy = "mine"
        setups = zoo_setups(["gpt2", "llama-classifier", "deberta-v2"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlight.errors import ConfigError
from ftlight.models.tiny import CHATML_TEMPLATE
from ftlight.testing.zoo_build import TokenizerShape, ZooModel

LEARNED_LIMIT = 128
"""Position limit of the zoo's families with learned absolute position embeddings."""

ROTARY_LIMIT = 512
"""Position limit written in the config of the other families (nothing indexes past it)."""

#: the shape every zoo model shares: two blocks, hidden 64, four heads (two key/value heads)
_HIDDEN, _LAYERS, _HEADS, _KV, _FFN = 64, 2, 4, 2, 128
_DECODER = {
    "hidden_size": _HIDDEN,
    "num_hidden_layers": _LAYERS,
    "num_attention_heads": _HEADS,
    "num_key_value_heads": _KV,
    "intermediate_size": _FFN,
    "max_position_embeddings": ROTARY_LIMIT,
}
_ENCODER = {
    "hidden_size": _HIDDEN,
    "num_hidden_layers": _LAYERS,
    "num_attention_heads": _HEADS,
    "intermediate_size": _FFN,
    "max_position_embeddings": LEARNED_LIMIT,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
    "{{ m['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
    "{% elif m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
    "{% else %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endif %}"
    "{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
GRANITE_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|start_of_role|>' + m['role'] + '<|end_of_role|>' + m['content'] + '<|end_of_text|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}"
)


_BERT_TOK = TokenizerShape(
    ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), pad="[PAD]", encoder=True
)
_ROBERTA_TOK = TokenizerShape(
    ("<s>", "<pad>", "</s>", "<unk>", "<mask>"), pad="<pad>", encoder=True
)
_GPT2_TOK = TokenizerShape(("<|endoftext|>",), eos="<|endoftext|>", bos="<|endoftext|>")
_CHATML_TOK = TokenizerShape(
    ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    eos="<|im_end|>",
    pad="<|endoftext|>",
    chat_template=CHATML_TEMPLATE,
)
_LLAMA3_TOK = TokenizerShape(
    (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ),
    eos="<|eot_id|>",
    bos="<|begin_of_text|>",
    add_bos=True,
    chat_template=LLAMA3_TEMPLATE,
)


def _decoder(**extra: Any) -> dict[str, Any]:
    return {**_DECODER, **extra}


def _zoo() -> dict[str, ZooModel]:
    learned = {"learned_positions": True}
    models = [
        # -- causal LMs with rotary (or no) position tables --------------------------------
        ZooModel("llama", "llama", _LLAMA3_TOK, _decoder(tie_word_embeddings=True)),
        ZooModel(
            "mistral",
            "mistral",
            TokenizerShape(
                ("<unk>", "<s>", "</s>"),
                eos="</s>",
                bos="<s>",
                add_bos=True,
                chat_template=MISTRAL_TEMPLATE,
                padding_side="left",
            ),
            _decoder(sliding_window=None),
        ),
        ZooModel("qwen2", "qwen2", _CHATML_TOK, _decoder(tie_word_embeddings=True)),
        ZooModel("qwen3", "qwen3", _CHATML_TOK, _decoder(head_dim=16, tie_word_embeddings=True)),
        ZooModel(
            "gemma2",
            "gemma2",
            TokenizerShape(
                ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                eos="<eos>",
                bos="<bos>",
                pad="<pad>",
                add_bos=True,
                chat_template=GEMMA_TEMPLATE,
                padding_side="left",
                stop=("<end_of_turn>",),
            ),
            _decoder(head_dim=16, query_pre_attn_scalar=16, sliding_window=64),
        ),
        ZooModel(
            "gemma3",
            "gemma3_text",
            TokenizerShape(
                ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                eos="<end_of_turn>",
                bos="<bos>",
                pad="<pad>",
                add_bos=True,
                chat_template=GEMMA_TEMPLATE,
                stop=("<eos>",),
            ),
            _decoder(head_dim=16, query_pre_attn_scalar=16, sliding_window=64),
        ),
        ZooModel(
            "phi3",
            "phi3",
            TokenizerShape(
                ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|user|>", "<|assistant|>")
                + ("<|system|>", "<|end|>"),
                eos="<|end|>",
                bos="<s>",
                pad="<|endoftext|>",
                chat_template=PHI3_TEMPLATE,
                padding_side="left",
            ),
            _decoder(),
        ),
        ZooModel(
            "olmo2",
            "olmo2",
            TokenizerShape(
                ("<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"),
                eos="<|endoftext|>",
                bos="<|endoftext|>",
                pad="<|pad|>",
                chat_template=OLMO2_TEMPLATE,
            ),
            _decoder(),
        ),
        ZooModel(
            "granite",
            "granite",
            TokenizerShape(
                ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>"),
                eos="<|end_of_text|>",
                bos="<|end_of_text|>",
                pad="<|end_of_text|>",
                chat_template=GRANITE_TEMPLATE,
                padding_side="left",
            ),
            _decoder(tie_word_embeddings=True),
        ),
        ZooModel("smollm3", "smollm3", _CHATML_TOK, _decoder(no_rope_layer_interval=2)),
        ZooModel(
            "gpt-neox",
            "gpt_neox",
            _GPT2_TOK,
            _decoder(rotary_pct=0.25, use_parallel_residual=True, num_key_value_heads=None),
        ),
        ZooModel(
            "falcon",
            "falcon",
            TokenizerShape(("<|endoftext|>",), eos="<|endoftext|>"),
            {
                "hidden_size": _HIDDEN,
                "num_hidden_layers": _LAYERS,
                "num_attention_heads": _HEADS,
                "num_kv_heads": 1,
                "multi_query": True,
                "max_position_embeddings": ROTARY_LIMIT,
            },
        ),
        # -- causal LMs with learned absolute positions ------------------------------------
        ZooModel(
            "gpt2",
            "gpt2",
            _GPT2_TOK,
            {
                "n_embd": _HIDDEN,
                "n_layer": _LAYERS,
                "n_head": _HEADS,
                "n_inner": _FFN,
                "n_positions": LEARNED_LIMIT,
            },
            **learned,
        ),
        ZooModel(
            "opt",
            "opt",
            # OPT puts </s> before every text as its BOS
            TokenizerShape(
                ("<s>", "<pad>", "</s>", "<unk>"), eos="</s>", bos="</s>", pad="<pad>", add_bos=True
            ),
            {
                "hidden_size": _HIDDEN,
                "num_hidden_layers": _LAYERS,
                "num_attention_heads": _HEADS,
                "ffn_dim": _FFN,
                "word_embed_proj_dim": _HIDDEN,
                "max_position_embeddings": LEARNED_LIMIT,
                "dropout": 0.0,
            },
            **learned,
        ),
        ZooModel(
            "gpt-bigcode",
            "gpt_bigcode",
            _GPT2_TOK,
            {
                "n_embd": _HIDDEN,
                "n_layer": _LAYERS,
                "n_head": _HEADS,
                "n_inner": _FFN,
                "n_positions": LEARNED_LIMIT,
                "multi_query": True,
            },
            **learned,
        ),
        # -- encoders -----------------------------------------------------------------------
        ZooModel("bert", "bert", _BERT_TOK, _ENCODER, "classification", True, True),
        ZooModel(
            "roberta",
            "roberta",
            _ROBERTA_TOK,
            # positions start after the padding id (1): two more rows than the limit
            {**_ENCODER, "max_position_embeddings": LEARNED_LIMIT + 2},
            "classification",
            True,
            True,
        ),
        ZooModel(
            "xlm-roberta",
            "xlm-roberta",
            _ROBERTA_TOK,
            {**_ENCODER, "max_position_embeddings": LEARNED_LIMIT + 2},
            "classification",
            True,
            True,
        ),
        ZooModel(
            "deberta-v2",
            "deberta-v2",
            _BERT_TOK,
            {
                **_ENCODER,
                "relative_attention": True,
                "position_biased_input": False,
                "pos_att_type": ["p2c", "c2p"],
                "max_relative_positions": -1,
                "position_buckets": 32,
                "type_vocab_size": 0,
            },
            "classification",
            False,
            True,
        ),
        ZooModel(
            "distilbert",
            "distilbert",
            _BERT_TOK,
            {
                "dim": _HIDDEN,
                "n_layers": _LAYERS,
                "n_heads": _HEADS,
                "hidden_dim": _FFN,
                "max_position_embeddings": LEARNED_LIMIT,
                "dropout": 0.0,
                "attention_dropout": 0.0,
            },
            "classification",
            True,
            True,
        ),
        ZooModel(
            "electra",
            "electra",
            _BERT_TOK,
            {**_ENCODER, "embedding_size": 32},
            "classification",
            True,
            True,
        ),
        ZooModel(
            "modernbert",
            "modernbert",
            TokenizerShape(
                ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"), pad="[PAD]", encoder=True
            ),
            {
                "hidden_size": _HIDDEN,
                "num_hidden_layers": _LAYERS,
                "num_attention_heads": _HEADS,
                "intermediate_size": _FFN,
                "max_position_embeddings": ROTARY_LIMIT,
                "global_attn_every_n_layers": 2,
                "local_attention": 16,
            },
            "classification",
            False,
            True,
        ),
    ]
    by_name = {m.name: m for m in models}
    # LLMs as sequence classifiers: the same folders, loaded with a fresh score head
    for name in ("llama", "qwen2"):
        base = by_name[name]
        by_name[f"{name}-classifier"] = ZooModel(
            f"{name}-classifier", base.model_type, base.tokenizer, base.config, "classification"
        )
    return by_name


ZOO: dict[str, ZooModel] = _zoo()
"""Every zoo model by name."""

CAUSAL = tuple(n for n, m in ZOO.items() if m.task == "causal_lm")
"""The zoo's causal LMs."""

CLASSIFIERS = tuple(n for n, m in ZOO.items() if m.task == "classification")
"""The zoo's models for classification: encoders and LLMs with a score head."""

LEARNED = tuple(n for n, m in ZOO.items() if m.learned_positions)
"""The zoo models whose learned position table fails past its end."""


def zoo_model(name: str) -> ZooModel:
    """The zoo model called ``name``; a miss lists the zoo."""
    if name not in ZOO:
        raise ConfigError(f"no zoo model {name!r}; the zoo holds: {', '.join(ZOO)}")
    return ZOO[name]


def zoo_overrides(name: str, root: Path | None = None) -> list[str]:
    """Command-line overrides of a run of ``name`` on its task's small data (built once)."""
    from ftlight.testing.helpers import DATA

    model = zoo_model(name)
    folder = model.build(root)
    common = ["model=hf", f"model.name_or_path={folder}", f"task={model.task}", "data=local"]
    if model.task == "causal_lm":
        return [
            *common,
            f"data.train_path={DATA / 'alpaca_train.jsonl'}",
            f"data.val_path={DATA / 'alpaca_val.jsonl'}",
            "task.max_new_tokens=8",
        ]
    return [
        *common,
        "data.format=text_label",
        f"data.train_path={DATA / 'reviews_train.csv'}",
        f"data.val_path={DATA / 'reviews_val.tsv'}",
    ]


def zoo_setups(names: list[str] | None = None, root: Path | None = None) -> list[str]:
    """Register zoo models as ``compose_config`` set-ups named ``zoo-<name>``; return the names.

    For ``StrategyConformance.setups``: the suite then runs on each of them.
    """
    from ftlight.testing.helpers import add_setup

    setups = []
    for name in names if names is not None else list(ZOO):
        add_setup(f"zoo-{name}", zoo_overrides(name, root))
        setups.append(f"zoo-{name}")
    return setups
