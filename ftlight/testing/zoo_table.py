"""The zoo's table: every architecture with its config and tokenizer, by name."""

from __future__ import annotations

from ftlight.testing.zoo_build import TokenizerShape, ZooModel
from ftlight.testing.zoo_shapes import (
    _BERT_TOK,
    _CHATML_TOK,
    _ENCODER,
    _FFN,
    _GPT2_TOK,
    _HEADS,
    _HIDDEN,
    _LAYERS,
    _LLAMA3_TOK,
    _ROBERTA_TOK,
    GEMMA_TEMPLATE,
    GRANITE_TEMPLATE,
    LEARNED_LIMIT,
    MISTRAL_TEMPLATE,
    OLMO2_TEMPLATE,
    PHI3_TEMPLATE,
    ROTARY_LIMIT,
    _decoder,
)


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
