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

The table of models is ``ftlight.testing.zoo_table``, what they share (sizes, position limits,
chat templates, tokenizers) ``ftlight.testing.zoo_shapes``, and how a model's folder is built
``ftlight.testing.zoo_build``.
"""

from __future__ import annotations

from pathlib import Path

from ftlight.errors import ConfigError
from ftlight.testing.zoo_build import TokenizerShape, ZooModel
from ftlight.testing.zoo_shapes import (
    GEMMA_TEMPLATE,
    GRANITE_TEMPLATE,
    LEARNED_LIMIT,
    LLAMA3_TEMPLATE,
    MISTRAL_TEMPLATE,
    OLMO2_TEMPLATE,
    PHI3_TEMPLATE,
    ROTARY_LIMIT,
)
from ftlight.testing.zoo_table import ZOO

__all__ = [
    "CAUSAL",
    "CLASSIFIERS",
    "GEMMA_TEMPLATE",
    "GRANITE_TEMPLATE",
    "LEARNED",
    "LEARNED_LIMIT",
    "LLAMA3_TEMPLATE",
    "MISTRAL_TEMPLATE",
    "OLMO2_TEMPLATE",
    "PHI3_TEMPLATE",
    "ROTARY_LIMIT",
    "ZOO",
    "TokenizerShape",
    "ZooModel",
    "zoo_model",
    "zoo_overrides",
    "zoo_setups",
]

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
