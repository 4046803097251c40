"""The attention kernel of training steps: which one ``auto`` takes, and that it trains alike."""

from __future__ import annotations

import contextlib
from typing import Any

import lightning as L
import pytest
import torch

import ftlight.speed.attention
from ftlight.errors import ConfigError
from ftlight.speed.attention import (
    GQA_SWITCH,
    MATH_MAX_LENGTH,
    attention_kernel,
    choose_kernel,
    grouped_kv,
)

BF16 = torch.bfloat16


@pytest.mark.parametrize(
    ("setting", "device", "dtype", "batch", "length", "heads", "expected"),
    [
        ("auto", "cpu", BF16, 4, 200, 9, "math"),
        ("auto", "cpu", BF16, 4, MATH_MAX_LENGTH, 9, "math"),
        ("auto", "cpu", BF16, 4, MATH_MAX_LENGTH + 1, 9, None),  # flash wins on long rows
        ("auto", "cpu", torch.float32, 4, 200, 9, None),  # and in fp32
        ("auto", "cpu", BF16, 64, 256, 32, None),  # the math kernel's scores would be big
        ("auto", "cpu", BF16, 4, 200, None, "math"),  # a config without a head count
        ("auto", "cuda", BF16, 4, 200, 9, None),  # PyTorch's choice on GPUs
        ("torch", "cpu", BF16, 4, 200, 9, None),
        ("math", "cuda", torch.float32, 64, 4096, 32, "math"),
        ("flash", "cpu", BF16, 4, 200, 9, "flash"),
    ],
)
def test_choose_kernel(setting, device, dtype, batch, length, heads, expected) -> None:
    assert choose_kernel(setting, device, dtype, batch, length, heads) == expected


def test_unknown_kernel_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match="speed.attention_kernel='fast' is not a choice; use one of"
    ):
        choose_kernel("fast", "cpu", BF16, 1, 8, 1)


def test_kernel_context_restores_the_flags() -> None:
    def flags() -> tuple[bool, bool]:
        return torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()

    before = flags()
    with attention_kernel("math"):
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    with pytest.raises(RuntimeError), attention_kernel("flash"):
        assert not torch.backends.cuda.math_sdp_enabled()
        raise RuntimeError("a failing step")
    assert flags() == before


class KernelProbe(L.Callback):
    """Records, at every attention forward of training (recomputation included), the padded
    length and whether only the math kernel was enabled."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.handles: list[Any] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for sub in module.model.modules():
            if type(sub).__name__.endswith("Attention"):
                self.handles.append(sub.register_forward_pre_hook(self._record, with_kwargs=True))

    def _record(self, sub: Any, args: Any, kwargs: Any) -> None:
        if not sub.training:
            return  # an evaluation forward (conftest's Probe takes logits at the end)
        hidden = args[0] if args else kwargs["hidden_states"]
        math_only = (
            torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
        )
        self.calls.append((hidden.shape[1], math_only))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for handle in self.handles:
            handle.remove()


RUN = [
    "eval.before=false",
    "eval.after=false",
    "eval.export=false",
    "trainer.max_steps=3",
    "trainer.precision=bf16-mixed",
    "data.batch_size=2",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
    "callbacks.checkpoint=null",
    "trainer.enable_checkpointing=false",
    "speed.share_prefix=false",  # every row whole: the kernel is chosen by the rows' length
]


def _fit(helpers, tmp_path, *extra: str) -> tuple[KernelProbe, Any]:
    cfg = helpers.compose([*RUN, *extra], tmp_path, "causal_lm")
    probe = KernelProbe()
    _, recorded = helpers.fit(cfg, callbacks=[probe])  # conftest's Probe: losses per step
    return probe, recorded


def test_auto_takes_math_for_short_bf16_rows_and_trains_like_torch(
    helpers, tmp_path, monkeypatch
) -> None:
    # the fixture's batches are 75-80 tokens long (each padded to its longest row): a limit
    # between them gives both kinds
    limit = 78
    longest = "data.pad_to_multiple_of=null"
    monkeypatch.setattr(ftlight.speed.attention, "MATH_MAX_LENGTH", limit)
    auto, auto_run = _fit(helpers, tmp_path / "auto", "speed.attention_kernel=auto", longest)
    lengths = {length for length, _ in auto.calls}
    assert min(lengths) <= limit < max(lengths), lengths
    for length, math_only in auto.calls:
        assert math_only == (length <= limit), length
    torch_, torch_run = _fit(helpers, tmp_path / "torch", "speed.attention_kernel=torch", longest)
    assert not any(math_only for _, math_only in torch_.calls)
    assert [length for length, _ in torch_.calls] == [length for length, _ in auto.calls]
    assert auto_run.losses == pytest.approx(torch_run.losses, rel=2e-2)
    assert torch.backends.cuda.flash_sdp_enabled()  # flags restored after the fit


def test_recomputation_takes_the_steps_kernel(helpers, tmp_path) -> None:
    """Activation checkpointing recomputes the forward in backward: under the same kernel,
    or the recomputed tensors would not match the saved ones."""
    plain, plain_run = _fit(helpers, tmp_path / "plain", "speed.attention_kernel=math")
    ckpt, ckpt_run = _fit(
        helpers,
        tmp_path / "ckpt",
        "speed.attention_kernel=math",
        "speed.activation_checkpointing=true",
    )
    assert all(math_only for _, math_only in ckpt.calls)
    assert len(ckpt.calls) == 2 * len(plain.calls)  # every forward ran again in backward
    assert ckpt_run.losses == pytest.approx(plain_run.losses, abs=1e-5)


def test_grouped_kv_switch_is_set_on_cpu_only_inside_the_block(monkeypatch) -> None:
    import os

    monkeypatch.delenv(GQA_SWITCH, raising=False)
    with grouped_kv("cpu"):
        assert os.environ[GQA_SWITCH] == "1"
    assert GQA_SWITCH not in os.environ
    with pytest.raises(RuntimeError), grouped_kv("cpu"):
        raise RuntimeError("a failing step")
    assert GQA_SWITCH not in os.environ
    with grouped_kv("cuda"):  # a mask with enable_gqa takes CUDA's slow math kernel
        assert GQA_SWITCH not in os.environ
    monkeypatch.setenv(GQA_SWITCH, "0")  # the user's choice stands
    with grouped_kv("cpu"):
        assert os.environ[GQA_SWITCH] == "0"
    assert os.environ[GQA_SWITCH] == "0"


def _count_repeat_kv(monkeypatch) -> list[int]:
    import transformers.integrations.sdpa_attention as sdpa

    calls: list[int] = []
    real = sdpa.repeat_kv
    monkeypatch.setattr(sdpa, "repeat_kv", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_grouped_heads_give_the_expanded_heads_results(tiny_chat_llama, monkeypatch) -> None:
    """A padded batch of a grouped-query model: the same logits and gradients with the
    key/value heads passed grouped as with transformers' per-query-head copies."""
    from transformers import AutoModelForCausalLM

    monkeypatch.delenv(GQA_SWITCH, raising=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama, attn_implementation="sdpa")
    model = model.float()
    config = model.config
    assert config.num_key_value_heads < config.num_attention_heads
    ids = torch.randint(3, config.vocab_size, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, 12:] = 0  # right padding
    calls = _count_repeat_kv(monkeypatch)
    results = []
    for block in (contextlib.nullcontext(), grouped_kv("cpu")):
        model.zero_grad()
        with block:
            logits = model(input_ids=ids, attention_mask=mask).logits
        logits[mask.bool()].logsumexp(-1).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((logits.detach(), grads, len(calls)))
    (expanded, expanded_grads, copies), (grouped, grouped_grads, after) = results
    assert copies == 2 * config.num_hidden_layers  # keys and values of every layer
    assert after == copies  # none when grouped
    valid = mask.bool()
    torch.testing.assert_close(grouped[valid], expanded[valid], rtol=1e-5, atol=1e-5)
    for g, e in zip(grouped_grads, expanded_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


class CopiesPerStep(L.Callback):
    """How many key/value copies each training step made (forward and backward)."""

    def __init__(self, calls: list[int]) -> None:
        self.calls, self.per_step, self._start = calls, [], 0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = len(self.calls)

    def on_train_batch_end(self, *args: Any) -> None:
        self.per_step.append(len(self.calls) - self._start)


@pytest.mark.parametrize("switch", [None, "0"], ids=["default", "user-off"])
def test_cpu_training_steps_pass_grouped_heads(helpers, tmp_path, monkeypatch, switch) -> None:
    """Training steps on a CPU make no per-query-head copies of the keys and values, unless
    the user turned transformers' switch off."""
    if switch is None:
        monkeypatch.delenv(GQA_SWITCH, raising=False)
    else:
        monkeypatch.setenv(GQA_SWITCH, switch)
    probe = CopiesPerStep(_count_repeat_kv(monkeypatch))
    cfg = helpers.compose(
        [*RUN[:3], "trainer.max_steps=2", "data.batch_size=2"], tmp_path, "causal_lm"
    )
    helpers.fit(cfg, callbacks=[probe])
    assert len(probe.per_step) == 2
    if switch is None:
        assert probe.per_step == [0, 0]
    else:  # keys and values of every layer: the shared opening's pass and the rows' pass
        assert all(n >= 2 * 2 for n in probe.per_step), probe.per_step
