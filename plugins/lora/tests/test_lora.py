"""The ``lora`` strategy: a frozen model plus trainable low-rank adapters."""

from __future__ import annotations

import re

import pytest

from ftlight import testing as core
from ftlight.errors import ConfigError

pytestmark = pytest.mark.usefixtures("ftlight_cache")

# A rank-r adapter on an in x out linear layer adds r*(in + out) weights (A: r x in, B: out x r).
# tiny-llama (hidden 32, kv 16, mlp 64, 2 layers; 26912 weights, see test_full.py), all linear
# layers of the body (lm_head is left out):
#   per layer q 8*(32+32) 512 + k 8*(32+16) 384 + v 384 + o 512 + gate 8*(32+64) 768 + up 768
#   + down 8*(64+32) 768 = 4096; two layers 8192.  Total 26912 + 8192 = 35104.
# tiny-bert (43107 weights), all linear layers outside the classifier, the classifier trained
# in full as a copy (peft modules_to_save; the frozen original stays):
#   per layer q, k, v, o 4*8*(32+32) 2048 + 32->64 768 + 64->32 768 = 3584; two layers 7168
#   pooler 8*(32+32) 512; classifier copy 32*3+3 99.  Trainable 7168 + 512 + 99 = 7779,
#   total 43107 + 7779 = 50886.
EXPECTED = {"tiny-llama": (8192, 35104), "tiny-bert": (7779, 50886)}
ADAPTER = re.compile(r"\.lora_[AB]\.default\.weight$")
HEAD_COPY = re.compile(r"^base_model\.model\.classifier\.modules_to_save\.default\.(weight|bias)$")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``fitted(task)``: (run, probe) of four steps at lr 1e-2, once per task."""
    runs = {}

    def get(task: str):
        if task not in runs:
            cfg = core.compose_config(
                ["strategy=lora", *core.QUICK_FIT, "trainer.max_steps=4"],
                tmp_path_factory.mktemp("lora"),
                task,
            )
            runs[task] = core.fit(cfg)
        return runs[task]

    return get


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_parameter_counts(fitted, task: str) -> None:
    _, probe = fitted(task)
    assert (probe.counts["trainable"], probe.counts["total"]) == EXPECTED[task]
    assert probe.counts["r"] == 8


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_only_adapters_and_head_train(fitted, task: str) -> None:
    _, probe = fitted(task)
    expected = {n for n in probe.start if ADAPTER.search(n)}
    if task == "tiny-bert":
        expected |= {n for n in probe.start if HEAD_COPY.match(n)}
    # llama: 2 layers x 7 linear x (A, B); bert: (2 layers x 6 + pooler) x (A, B) + head copy
    assert len(expected) == {"tiny-llama": 2 * 7 * 2, "tiny-bert": 13 * 2 + 2}[task]
    assert probe.trainable == expected


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_alpha_defaults_to_twice_the_rank(fitted, task: str) -> None:
    run, _ = fitted(task)
    scalings = {
        s["default"]
        for m in run.module.model.modules()
        if isinstance(s := getattr(m, "scaling", None), dict)
    }
    assert scalings == {2.0}


@pytest.mark.parametrize(
    ("overrides", "trainable"),
    [
        (["strategy.r=4"], 4096),  # linear in r: 4 * 1024
        (["strategy.r=16"], 16384),
        # q 8*(32+32) 512 + v 8*(32+16) 384 = 896 per layer, two layers
        (["strategy.target_modules=[q_proj,v_proj]"], 1792),
    ],
)
def test_rank_and_targets_set_the_count(tmp_path, overrides, trainable) -> None:
    from ftlight.build import build_run

    run = build_run(core.compose_config(["strategy=lora", *overrides], tmp_path, "tiny-llama"))
    run.module.configure_model()
    counts = run.strategy.describe(run.module.model)
    assert (counts["trainable"], counts["total"]) == (trainable, 26912 + trainable)


def test_unknown_target_module_is_a_config_error(tmp_path) -> None:
    from ftlight.build import build_run

    cfg = core.compose_config(
        ["strategy=lora", "strategy.target_modules=[nope]"], tmp_path, "tiny-llama"
    )
    run = build_run(cfg)
    with pytest.raises(ConfigError, match=r"strategy.target_modules=\['nope'\] does not fit"):
        run.module.configure_model()


def test_loss_falls(tmp_path) -> None:
    cfg = core.compose_config(
        ["strategy=lora", *core.QUICK_FIT, "trainer.max_steps=12"], tmp_path, "tiny-llama"
    )
    _, probe = core.fit(cfg)
    first, last = probe.epoch_mean_losses()
    assert last < first - 0.1, probe.losses


class TestConformance(core.StrategyConformance):
    strategy = "lora"


def _lora_pair(dropout: float = 0.0):
    """Two copies of one adapted layer stack: peft's own forward, and the fused one."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 6))
    config = LoraConfig(
        r=4, lora_alpha=12, target_modules=["0", "2"], lora_dropout=dropout, init_lora_weights=False
    )
    plain = get_peft_model(body, config)
    fused = copy.deepcopy(plain)
    from ftlight_lora.fused import fuse

    assert fuse(fused) == 2
    return plain, fused


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_fused_forward_matches_peft_in_outputs_and_gradients(bf16: bool) -> None:
    import torch

    plain, fused = _lora_pair()
    x0 = torch.randn(3, 5, 12)
    grads = []
    outs = []
    for model in (plain, fused):
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            with torch.no_grad():  # evaluation's path: the same numbers
                torch.testing.assert_close(model(x), out, rtol=0, atol=0)
        out.float().square().sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        grads[-1]["input"] = x.grad
    assert outs[1].dtype == outs[0].dtype == (torch.bfloat16 if bf16 else torch.float32)

    def close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
        if bf16:  # both round to bf16, at different points: compare as a whole
            error = (got.float() - want.float()).norm() / want.float().norm()
            assert error < 1e-2, (name, float(error))
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)

    close(outs[1], outs[0], "output")
    assert grads[1].keys() == grads[0].keys() and len(grads[0]) == 5  # A, B of both; input
    for name, grad in grads[0].items():
        assert grad.abs().sum() > 0, name
        close(grads[1][name], grad, name)


def test_fused_forward_hands_other_cases_to_peft(monkeypatch) -> None:
    import torch
    from peft.tuners.lora import Linear as LoraLinear

    from ftlight_lora import fused as fused_module

    calls = []
    real = LoraLinear.forward
    monkeypatch.setattr(LoraLinear, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain, fused = _lora_pair()
    x = torch.randn(2, 12)
    fused(x)
    assert calls == []  # the fused path ran
    with fused.disable_adapter(), plain.disable_adapter():  # adapters off: peft's forward
        torch.testing.assert_close(fused(x), plain(x))
    assert len(calls) == 4
    calls.clear()
    _, with_dropout = _lora_pair(dropout=0.5)
    with_dropout(x)
    assert len(calls) == 2  # dropout: peft's forward
    assert fused_module._plain_adapter(fused.base_model.model[0], x.double()) is None


def test_evaluation_folds_fused_trained_adapters_in_place_and_restores_them() -> None:
    """Scoring folds a fused layer's trained adapter into the weight itself (no copy) and
    gives every weight back bit for bit; an adapter that is still zero is skipped."""
    import torch

    from ftlight_lora.merge import merged_lora

    plain, fused = _lora_pair()  # init_lora_weights=False: B is not zero
    layers = [fused.base_model.model[0], fused.base_model.model[2]]
    weights = [layer.get_base_layer().weight for layer in layers]
    bits = [w.detach().clone() for w in weights]
    pointers = [w.data_ptr() for w in weights]
    x = torch.randn(2, 12)
    with torch.no_grad():
        expected = plain(x)
        with merged_lora(fused) as n:
            assert n == 2 and all(layer.merged for layer in layers)
            assert [layer.get_base_layer().weight for layer in layers] == weights
            assert [w.data_ptr() for w in weights] == pointers  # folded in place
            assert not torch.equal(weights[0], bits[0])
            torch.testing.assert_close(fused(x), expected)
    assert not any(layer.merged for layer in layers)
    assert all(torch.equal(w, b) for w, b in zip(weights, bits, strict=True))
    for layer in layers:
        torch.nn.init.zeros_(layer.lora_B["default"].weight)
    with merged_lora(fused) as n:  # untrained: skipped, base layer only, weights untouched
        assert n == 2 and all(layer.merged for layer in layers)
        assert all(torch.equal(w, b) for w, b in zip(weights, bits, strict=True))


def test_evaluation_merges_fused_layers_their_forward_hands_to_peft() -> None:
    """With dropout the fused forward runs peft's: evaluation folds such an adapter too, and
    the weight comes back as it was."""
    import torch

    from ftlight_lora.merge import merged_lora

    _, with_dropout = _lora_pair(dropout=0.5)
    layer = with_dropout.base_model.model[0]
    weight = layer.get_base_layer().weight
    bits = weight.detach().clone()
    with merged_lora(with_dropout) as n:
        assert n == 2 and layer.merged and layer.get_base_layer().weight is weight
        assert not torch.equal(weight, bits)
    assert layer.get_base_layer().weight is weight and torch.equal(weight, bits)


def test_a_fused_model_pickles_and_keeps_its_fused_forward(monkeypatch) -> None:
    """torch.save of the whole model (and spawned processes) pickles the fused layers."""
    import io

    import torch
    from peft.tuners.lora import Linear as LoraLinear

    _, fused = _lora_pair()
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    # bytes this test pickled itself a moment ago, in memory: no file or user input
    loaded = torch.load(buffer, weights_only=False)
    calls = []
    real = LoraLinear.forward
    monkeypatch.setattr(LoraLinear, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 12)
    torch.testing.assert_close(loaded(x), fused(x))
    assert calls == []  # the loaded layers still run the fused path
