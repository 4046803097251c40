"""The ``full`` strategy: every weight trains."""

from __future__ import annotations

import pytest

from ftlight import testing as core

pytestmark = pytest.mark.usefixtures("ftlight_cache")

# tiny-llama (conf/model/tiny-llama.yaml): vocab 4 specials + 256 bytes = 260, hidden 32,
# 4 heads of 8 (q, o: 32x32), 2 kv heads (k, v: 32x16), mlp 64, 2 layers, head tied:
#   embedding 260*32 = 8320
#   layer: q 1024 + k 512 + v 512 + o 1024 + gate 2048 + up 2048 + down 2048 + 2 norms 64 = 9280
#   total 8320 + 2*9280 + final norm 32 = 26912 (lm_head is the embedding)
# tiny-bert (conf/model/tiny-bert.yaml): vocab 5 specials + 256 = 261, hidden 32, mlp 64,
# 512 positions, 2 layers, 3 labels in reviews_train.csv:
#   embeddings: words 261*32 8352 + positions 512*32 16384 + types 2*32 64 + LayerNorm 64 = 24864
#   layer: q, k, v, o 4*(32*32+32) 4224 + LN 64 + 32->64 2112 + 64->32 2080 + LN 64 = 8544
#   pooler 32*32+32 = 1056, classifier 32*3+3 = 99
#   total 24864 + 2*8544 + 1056 + 99 = 43107
EXPECTED = {"tiny-llama": (26912, 26912), "tiny-bert": (43107, 43107)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``fitted(task)``: (run, probe) of four steps at lr 1e-2, once per task."""
    runs = {}

    def get(task: str):
        if task not in runs:
            cfg = core.compose_config(
                ["strategy=full", *core.QUICK_FIT, "trainer.max_steps=4"],
                tmp_path_factory.mktemp("full"),
                task,
            )
            runs[task] = core.fit(cfg)
        return runs[task]

    return get


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_parameter_counts(fitted, task: str) -> None:
    _, probe = fitted(task)
    counts = probe.counts
    assert (counts["trainable"], counts["total"]) == EXPECTED[task]
    assert probe.trainable == set(probe.start)  # nothing frozen


def test_loss_falls(tmp_path) -> None:
    """24 steps (12 epochs of the same two batches) of full fine-tuning memorise the data."""
    cfg = core.compose_config(
        ["strategy=full", *core.QUICK_FIT, "trainer.max_steps=24"], tmp_path, "tiny-llama"
    )
    _, probe = core.fit(cfg)
    first, last = probe.epoch_mean_losses()
    assert last < 0.5 * first, probe.losses


class TestConformance(core.StrategyConformance):
    strategy = "full"
