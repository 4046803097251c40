"""What only a CUDA device can show: training in bf16 on the GPU, QLoRA's 4-bit kernels, and a
checkpoint written on the GPU resuming there. Skipped without CUDA (``pytest -m gpu`` on a GPU
machine; ``benchmarks/gpu_check.py`` runs them). ``FTLIGHT_GPU_TESTS_ON_CPU=1`` runs the same
tests on the CPU in fp32, so that they keep working where no GPU is (the check's dry run)."""

from __future__ import annotations

import os

import pytest
import torch

from ftlight.testing.helpers import QUICK_FIT, compose_config, fit, train_with_probe

ON_CPU = os.environ.get("FTLIGHT_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("ftlight_cache"),
]

ON_GPU = (
    ["trainer=cpu", "trainer.precision=32-true"]
    if ON_CPU
    else ["trainer=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"]
) + ["trainer.max_steps=8"]


@pytest.mark.parametrize(("strategy", "setup"), [("lora", "tiny-llama"), ("full", "tiny-bert")])
def test_trains_on_the_gpu_in_bf16(tmp_path, strategy: str, setup: str) -> None:
    """The weights live on CUDA, the loss falls, and frozen weights stay as they were."""
    cfg = compose_config([*ON_GPU, *QUICK_FIT, f"strategy={strategy}"], tmp_path, setup)
    run, probe = fit(cfg)
    model = run.module.model
    assert next(model.parameters()).device.type == DEVICE
    first, last = probe.epoch_mean_losses()
    assert last < first
    frozen = set(probe.start) - probe.trainable
    assert all(torch.equal(probe.start[n], probe.end[n]) for n in frozen)
    assert any(not torch.equal(probe.start[n], probe.end[n]) for n in probe.trainable)


def test_qlora_trains_on_the_gpu(tmp_path) -> None:
    """bitsandbytes' CUDA kernels: 4-bit layers in the base, adapters that learn."""
    import bitsandbytes as bnb

    cfg = compose_config([*ON_GPU, *QUICK_FIT, "strategy=qlora"], tmp_path, "tiny-llama")
    run, probe = fit(cfg)
    layers = [m for m in run.module.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.device.type == DEVICE for m in layers)
    first, last = probe.epoch_mean_losses()
    assert last < first


def test_a_gpu_checkpoint_resumes_on_the_gpu(tmp_path) -> None:
    """Two steps, then ``ckpt_path=`` on to four: the weights of four steps in one go."""
    steps = [
        *ON_GPU,
        "trainer.precision=32-true",
        "trainer.max_steps=4",
        "trainer.max_epochs=-1",
        "optimizer.lr=1e-2",
        "scheduler=constant",
        "scheduler.warmup_ratio=0",
        "eval.before=false",
        "eval.after=false",
        "eval.export=false",
    ]

    def run(name: str, *extra: str):
        return train_with_probe(compose_config([*steps, *extra], tmp_path / name, "tiny-llama"))

    _, whole = run("whole")
    first, _ = run("first", "trainer.max_steps=2")
    resumed, probe = run("resumed", f"ckpt_path={first.run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed.trainer.global_step == 4 and len(probe.losses) == 2
    assert probe.trainable == whole.trainable and probe.trainable
    for name in whole.trainable:
        torch.testing.assert_close(probe.end[name], whole.end[name], atol=1e-6, rtol=0)
