"""Checkpoints hold the GPU's random state as well as the CPU's, and a resume puts both back
(dropout on a GPU draws from the device's generator). No GPU here: torch.cuda is stood in for."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ftlight.module import FineTuneModule


def _module(device: str) -> SimpleNamespace:
    """What the checkpoint hooks read of a FineTuneModule."""
    strategy = SimpleNamespace(name="lora", trainable_state_dict=lambda model: {})
    strategy.load_trainable_state_dict = lambda model, state: None
    return SimpleNamespace(
        device=torch.device(device),
        strategy=strategy,
        model=None,
        task=SimpleNamespace(name="causal_lm"),
        fingerprint={},
        _resume_rng=None,
        _resume_cuda_rng=None,
    )


def test_gpu_random_state_is_saved_and_restored(monkeypatch) -> None:
    gpu_state = {"now": torch.tensor([1, 2, 3], dtype=torch.uint8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: gpu_state["now"])
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device=None: restored.append((state, device))
    )
    module = _module("cuda:0")
    checkpoint: dict = {}
    FineTuneModule.on_save_checkpoint(module, checkpoint)
    assert torch.equal(checkpoint["ftlight"]["cuda_rng"], gpu_state["now"])
    assert torch.equal(checkpoint["ftlight"]["rng"], torch.get_rng_state())

    checkpoint["state_dict"] = {}
    resumed = _module("cuda:0")
    FineTuneModule.on_load_checkpoint(resumed, checkpoint)
    assert restored == []  # not yet: where training continues
    FineTuneModule._restore_rng(resumed)
    ((state, device),) = restored
    assert torch.equal(state, gpu_state["now"]) and device == torch.device("cuda:0")
    assert resumed._resume_cuda_rng is None


def test_a_cpu_run_saves_no_gpu_state_and_ignores_one(monkeypatch) -> None:
    def no_gpu(*args, **kwargs):
        raise AssertionError("torch.cuda used on a CPU run")

    monkeypatch.setattr(torch.cuda, "get_rng_state", no_gpu)
    monkeypatch.setattr(torch.cuda, "set_rng_state", no_gpu)
    checkpoint: dict = {}
    FineTuneModule.on_save_checkpoint(_module("cpu"), checkpoint)
    assert "cuda_rng" not in checkpoint["ftlight"]
    # a GPU run's checkpoint resumed on the CPU
    checkpoint["ftlight"]["cuda_rng"] = torch.zeros(3, dtype=torch.uint8)
    checkpoint["state_dict"] = {}
    resumed = _module("cpu")
    FineTuneModule.on_load_checkpoint(resumed, checkpoint)
    FineTuneModule._restore_rng(resumed)
    assert resumed._resume_cuda_rng is None
