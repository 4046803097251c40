"""The ``bitfit`` strategy: bias terms (and a fresh classifier) train, nothing else."""

from __future__ import annotations

import pytest

from ftlight import testing
from ftlight.errors import ConfigError

pytestmark = pytest.mark.usefixtures("ftlight_cache")

# A causal LM with biases: tiny-llama with bias terms on every projection.
testing.add_setup("tiny-llama-bias", [*testing.SETUPS["tiny-llama"], "model.bias=true"])

# tiny-llama with biases (hidden 32, kv 16, mlp 64, 2 layers): per layer q 32 + k 16 + v 16
# + o 32 + gate 64 + up 64 + down 32 = 256 biases; two layers 512. The base has 26912 weights
# (see the full plugin's tests) plus these 512: total 27424.
# tiny-bert (43107 weights): per layer q, k, v, o 4*32 + attention LayerNorm 32 + 64 + 32
# + output LayerNorm 32 = 288; two layers 576; embedding LayerNorm 32; pooler 32; the fresh
# classifier in full, 32*3+3 = 99: 576 + 32 + 32 + 99 = 739.
EXPECTED = {"tiny-llama-bias": (512, 27424), "tiny-bert": (739, 43107)}


@pytest.mark.parametrize("setup", sorted(EXPECTED))
def test_parameter_counts(tmp_path, setup: str) -> None:
    cfg = testing.compose_config(
        ["strategy=bitfit", *testing.QUICK_FIT, "trainer.max_steps=2"], tmp_path, setup
    )
    _, probe = testing.fit(cfg)
    assert (probe.counts["trainable"], probe.counts["total"]) == EXPECTED[setup]
    weights = {n for n in probe.trainable if not n.endswith(".bias")}
    assert weights <= {"classifier.weight"}


def test_model_without_biases_is_refused(tmp_path) -> None:
    from ftlight.build import build_run

    cfg = testing.compose_config(["strategy=bitfit"], tmp_path, "tiny-llama")
    with pytest.raises(ConfigError, match="strategy=bitfit .*LlamaForCausalLM has none"):
        build_run(cfg)  # refused on the model's skeleton, before its weights load


def test_loss_falls(tmp_path) -> None:
    cfg = testing.compose_config(
        ["strategy=bitfit", *testing.QUICK_FIT, "trainer.max_steps=12"], tmp_path, "tiny-bert"
    )
    _, probe = testing.fit(cfg)
    first, last = probe.epoch_mean_losses()
    assert last < first, probe.losses


class TestConformance(testing.StrategyConformance):
    strategy = "bitfit"
    setups = ["tiny-llama-bias", "tiny-bert"]
