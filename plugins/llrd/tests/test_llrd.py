"""The ``llrd`` strategy: every weight trains, each block below the top at a smaller rate."""

from __future__ import annotations

import pytest

from ftlight import testing
from ftlight.errors import ConfigError

pytestmark = pytest.mark.usefixtures("ftlight_cache")


def _optimizer(tmp_path, setup: str, *overrides: str):
    from ftlight.build import build_run

    cfg = testing.compose_config(
        ["strategy=llrd", "optimizer.lr=1e-3", "~scheduler", *overrides], tmp_path, setup
    )
    run = build_run(cfg)
    run.module.configure_model()
    names = {id(p): n for n, p in run.module.model.named_parameters()}
    optimizer = run.module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    return {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_rates_fall_by_decay_per_block_below_the_head(tmp_path) -> None:
    """tiny-llama, 2 blocks, decay 0.5: head and final norm 1e-3, block 1 5e-4, block 0
    2.5e-4, the (tied) embedding 1.25e-4. Every parameter is in exactly one group."""
    lrs = _optimizer(tmp_path, "tiny-llama", "strategy.decay=0.5")
    assert lrs["model.norm.weight"] == pytest.approx(1e-3)
    assert lrs["model.layers.1.self_attn.q_proj.weight"] == pytest.approx(5e-4)
    assert lrs["model.layers.1.input_layernorm.weight"] == pytest.approx(5e-4)
    assert lrs["model.layers.0.mlp.down_proj.weight"] == pytest.approx(2.5e-4)
    assert lrs["model.embed_tokens.weight"] == pytest.approx(1.25e-4)
    assert len(lrs) == 2 * 9 + 2  # 9 tensors per block, the embedding and the final norm


def test_classifier_and_pooler_run_at_the_full_rate(tmp_path) -> None:
    lrs = _optimizer(tmp_path, "tiny-bert", "strategy.decay=0.5")
    for name in ("classifier.weight", "bert.pooler.dense.weight"):
        assert lrs[name] == pytest.approx(1e-3)
    assert lrs["bert.encoder.layer.0.attention.self.query.weight"] == pytest.approx(2.5e-4)
    # position and token-type embeddings are not the input embedding: they sit with the head
    # only if nothing claims them; the word embedding is the lowest level
    assert lrs["bert.embeddings.word_embeddings.weight"] == pytest.approx(1.25e-4)


def test_decay_of_one_is_full_fine_tuning(tmp_path) -> None:
    assert set(_optimizer(tmp_path, "tiny-llama", "strategy.decay=1.0").values()) == {1e-3}


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_decay_out_of_range_is_refused(decay: float) -> None:
    from ftlight_llrd import LayerwiseLRDecayStrategy

    with pytest.raises(ConfigError, match=rf"strategy.decay={decay} must be in \(0, 1\]"):
        LayerwiseLRDecayStrategy(decay=decay)


class TestConformance(testing.StrategyConformance):
    strategy = "llrd"
