"""The ``head`` strategy: the pretrained body frozen, the task head (+ last blocks) trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ftlight import testing as core
from ftlight.errors import ConfigError, FtlightError, ModelError
from ftlight.tasks import CausalLMTask
from ftlight_head import HeadStrategy

pytestmark = pytest.mark.usefixtures("ftlight_cache")

# tiny-llama: 26912 weights with lm_head tied to the 260x32 embedding (see test_full.py). The
# head strategy unties it: the head becomes its own 260*32 = 8320 weights, which train.
#   trainable 8320, total 26912 + 8320 = 35232
#   num_layers=1 adds the last block, 9280: trainable 8320 + 9280 = 17600
# tiny-bert: 43107 weights; the head is the classifier, 32*3+3 = 99, and the pooler's dense
# layer that feeds it (inside the body, bert.pooler.dense), 32*32+32 = 1056: 99 + 1056 = 1155
#   num_layers=1 adds the last encoder layer, 8544: trainable 1155 + 8544 = 9699
EXPECTED = {"tiny-llama": (8320, 35232), "tiny-bert": (1155, 43107)}
EXPECTED_ONE_BLOCK = {"tiny-llama": (17600, 35232), "tiny-bert": (9699, 43107)}
HEAD = {
    "tiny-llama": {"lm_head.weight"},
    "tiny-bert": {
        "classifier.weight",
        "classifier.bias",
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
    },
}
LAST_BLOCK = {"tiny-llama": "model.layers.1.", "tiny-bert": "bert.encoder.layer.1."}


def _fit(tmp_path: Path, task: str, *overrides: str):
    cfg = core.compose_config(
        ["strategy=head", *core.QUICK_FIT, "trainer.max_steps=4", *overrides], tmp_path, task
    )
    return core.fit(cfg)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``fitted(task)``: (run, probe) of four steps at lr 1e-2, once per task."""
    runs = {}

    def get(task: str):
        if task not in runs:
            runs[task] = _fit(tmp_path_factory.mktemp("head"), task)
        return runs[task]

    return get


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_parameter_counts(fitted, task: str) -> None:
    _, probe = fitted(task)
    assert (probe.counts["trainable"], probe.counts["total"]) == EXPECTED[task]
    assert probe.trainable == HEAD[task]


def test_tied_lm_head_is_untied(fitted) -> None:
    """The embedding stays frozen and bitwise unchanged while the head's copy trains."""
    run, probe = fitted("tiny-llama")
    model = run.module.model
    embedding = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is not embedding
    assert not embedding.requires_grad
    start, end = probe.start, probe.end
    assert torch.equal(end["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    # the head started as an exact copy of the embedding, and then moved away from it
    assert torch.equal(start["lm_head.weight"], start["model.embed_tokens.weight"])
    assert not torch.equal(end["lm_head.weight"], start["lm_head.weight"])
    assert model.config.get_text_config().tie_word_embeddings is False


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_num_layers_trains_exactly_the_last_block(tmp_path, task: str) -> None:
    _, probe = _fit(tmp_path, task, "strategy.num_layers=1")
    assert (probe.counts["trainable"], probe.counts["total"]) == EXPECTED_ONE_BLOCK[task]
    block = {n for n in probe.start if n.startswith(LAST_BLOCK[task])}
    assert probe.trainable == HEAD[task] | block
    moved = {n for n in probe.start if not torch.equal(probe.start[n], probe.end[n])}
    assert moved == probe.trainable


def test_num_layers_beyond_the_model_is_refused(tmp_path) -> None:
    from ftlight.build import build_run

    cfg = core.compose_config(["strategy=head", "strategy.num_layers=3"], tmp_path, "tiny-llama")
    run = build_run(cfg)
    with pytest.raises(ConfigError, match="num_layers=3 but LlamaForCausalLM has 2 transformer"):
        run.module.configure_model()


def test_negative_num_layers_is_refused() -> None:
    with pytest.raises(ConfigError, match="num_layers=-1"):
        HeadStrategy(num_layers=-1)


class _Headless(PreTrainedModel):
    """A transformers model with no ``base_model_prefix``: nothing marks a head."""

    config_class = PretrainedConfig

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        self.post_init()


@pytest.mark.parametrize(
    "model", [lambda: _Headless(PretrainedConfig()), lambda: nn.Sequential(nn.Linear(4, 4))]
)
def test_model_without_a_findable_head(model) -> None:
    model = model()
    with pytest.raises(ModelError) as info:
        HeadStrategy().apply(model, CausalLMTask())
    assert isinstance(info.value, FtlightError)
    message = str(info.value)
    assert f"cannot find the task head of {type(model).__name__}" in message
    assert "strategy=lora" in message
    assert all(p.requires_grad for p in model.parameters())  # refused before freezing anything


def test_loss_falls(tmp_path) -> None:
    _, probe = _fit(tmp_path, "tiny-llama", "trainer.max_steps=12")
    first, last = probe.epoch_mean_losses()
    assert last < first - 0.1, probe.losses


class TestConformance(core.StrategyConformance):
    strategy = "head"
