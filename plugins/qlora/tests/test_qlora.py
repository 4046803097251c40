"""The ``qlora`` strategy: LoRA adapters over a base model quantised to 4-bit NF4."""

from __future__ import annotations

import re
from pathlib import Path

import bitsandbytes as bnb
import lightning as L
import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from ftlight import testing as core
from ftlight_qlora import QLoRAStrategy

pytestmark = pytest.mark.usefixtures("ftlight_cache")

# The same adapters as strategy=lora (see test_lora.py), and 4-bit weights are counted by
# their unpacked size, so the counts are LoRA's:
#   tiny-llama: 7 adapters per layer, 4096 per layer, 8192 trainable; total 26912 + 8192 = 35104
#   tiny-bert: 7168 + pooler 512 + classifier copy 99 = 7779 trainable; total 43107 + 7779 = 50886
EXPECTED = {"tiny-llama": (8192, 35104), "tiny-bert": (7779, 50886)}
# what stays in float: the freshly initialised classifier and the pooler (llm_int8_skip_modules)
FLOAT_LINEAR = {"tiny-llama": set(), "tiny-bert": {"pooler.dense", "classifier"}}
ADAPTER = re.compile(r"\.lora_[AB]\.default\.weight$")


def _cfg(tmp_path: Path, task: str, *overrides: str):
    return core.compose_config(
        ["strategy=qlora", *core.QUICK_FIT, "trainer.max_steps=4", *overrides], tmp_path, task
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``fitted(task)``: (run, probe) of four steps at lr 1e-2, once per task."""
    runs = {}

    def get(task: str):
        if task not in runs:
            runs[task] = core.fit(_cfg(tmp_path_factory.mktemp("qlora"), task))
        return runs[task]

    return get


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_parameter_counts(fitted, task: str) -> None:
    _, probe = fitted(task)
    assert (probe.counts["trainable"], probe.counts["total"]) == EXPECTED[task]


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_base_layers_are_4bit_and_adapters_train(fitted, task: str) -> None:
    run, probe = fitted(task)
    body = run.module.model.base_model.model
    lora_layers = {n: m for n, m in body.named_modules() if isinstance(m, LoraLayer)}
    assert len(lora_layers) == {"tiny-llama": 14, "tiny-bert": 13}[task]
    float_base = set()
    for name, layer in lora_layers.items():
        base = layer.get_base_layer()
        if name in FLOAT_LINEAR[task]:
            float_base.add(name)
            assert type(base) is nn.Linear
            continue
        assert isinstance(base, bnb.nn.Linear4bit), name
        weight = base.weight
        assert weight.dtype == torch.uint8 and weight.quant_state.quant_type == "nf4"
        assert weight.numel() * 2 == base.in_features * base.out_features  # two weights a byte
        assert not weight.requires_grad
        for adapter in (layer.lora_A["default"], layer.lora_B["default"]):
            assert adapter.weight.requires_grad and adapter.weight.dtype == torch.float32
    assert float_base == FLOAT_LINEAR[task] & set(lora_layers)
    assert {n for n in probe.trainable if ADAPTER.search(n)} == {
        n for n in probe.start if ADAPTER.search(n)
    }


def test_loss_falls(tmp_path) -> None:
    """Default settings (bf16 compute)."""
    _, probe = core.fit(_cfg(tmp_path, "tiny-llama", "trainer.max_steps=12"))
    first, last = probe.epoch_mean_losses()
    assert last < first - 0.1, probe.losses


# -- bitsandbytes' CPU repacking after an eval-mode forward -----------------------------
class _FirstLayerGrad(L.Callback):
    """The gradient norm of layer 0's first adapted linear layer's LoRA A, at the last step."""

    def on_after_backward(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        first = next(m for m in module.model.modules() if isinstance(m, LoraLayer))
        self.norm = first.lora_A["default"].weight.grad.norm().item()


def _first_layer_grad(tmp_path: Path, task: str, evaluate_first: bool) -> float:
    """Three steps (LoRA B is zero at the start, so A's gradient is too); no dropout, so that
    nothing but the evaluation differs between the two runs."""
    from ftlight.build import build_run

    cfg = _cfg(tmp_path, task, "trainer.max_steps=3", "strategy.dropout=0")
    L.seed_everything(cfg.seed, verbose=False)
    run = build_run(cfg)
    grad = _FirstLayerGrad()
    run.trainer.callbacks.append(grad)
    if evaluate_first:
        run.evaluate("validation")  # what train() does before training: eval mode, no grad
    run.trainer.fit(run.module, datamodule=run.data)
    return grad.norm


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_evaluation_before_training_keeps_gradients_flowing(tmp_path, task: str) -> None:
    """On CPU, bitsandbytes repacks 4-bit weights for inference after an eval-mode forward;
    training through that layout loses the gradient to earlier layers (or fails). The first
    layer's LoRA A must get the same gradient with and without an evaluation first."""
    plain = _first_layer_grad(tmp_path / "plain", task, evaluate_first=False)
    after_eval = _first_layer_grad(tmp_path / "eval", task, evaluate_first=True)
    assert plain > 0
    assert after_eval == pytest.approx(plain, rel=1e-6)


@pytest.mark.skipif(
    not bnb.functional.has_avx512bf16(),
    reason="control for the test above: bitsandbytes repacks 4-bit weights only on CPUs with "
    "AVX512-BF16, so without it there is no trap to show (the test above still runs)",
)
def test_the_guard_is_what_keeps_them_flowing(tmp_path, monkeypatch) -> None:
    """The test above can fail: without the strategy's eval-mode guard, an evaluation first
    changes the first layer's gradient or breaks training."""
    monkeypatch.setattr(QLoRAStrategy, "prepare_for_eval", lambda self, model: None)
    plain = _first_layer_grad(tmp_path / "plain", "tiny-llama", evaluate_first=False)
    try:
        after_eval = _first_layer_grad(tmp_path / "eval", "tiny-llama", evaluate_first=True)
    except RuntimeError:
        return  # training through the repacked layout failed outright
    assert after_eval != pytest.approx(plain, rel=1e-3)


class TestConformance(core.StrategyConformance):
    strategy = "qlora"
    # float32 compute: the merged export then matches the 4-bit model to float rounding
    overrides = ["strategy.compute_dtype=float32"]
