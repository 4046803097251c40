"""Counting the real (non-padding) tokens of a batch, the numerator of tokens/s and MFU; the
monitor that times them, across a resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ftlight.data.collate import PackCollator, PadCollator
from ftlight.measure.throughput import ThroughputMonitor, real_tokens

ROWS = [
    {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    {"input_ids": [8, 0], "labels": [8, 0]},  # 0 is also a real token (the pad id is often EOS)
]


def test_padded_batch_counts_its_mask() -> None:
    batch = PadCollator(pad_token_id=0)(ROWS)
    assert int(real_tokens(batch, 0)) == 5


def test_packed_batch_counts_what_the_collator_packed() -> None:
    batch = PackCollator(max_length=8, pad_token_id=0)(ROWS)
    assert "attention_mask" not in batch
    assert int(real_tokens(batch, 0)) == 5


def test_packed_rows_without_a_count_leave_out_the_pad_tail() -> None:
    """Two sequences (3 + 2 tokens) and a 3-token tail of pads with ignored labels."""
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 0, 0, 0, 0]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]]),
        "labels": torch.tensor([[-100, 6, 7, 8, 0, -100, -100, -100]]),
    }
    assert int(real_tokens(batch, 0)) == 5
    batch["labels"][0, -1] = 0  # a labelled last sequence is real, pads or not
    assert int(real_tokens(batch, 0)) == 8


# -- the callback, resumed ---------------------------------------------------------------------
class _Module:
    """What ThroughputMonitor reads of a LightningModule."""

    device = torch.device("cpu")
    model = None

    strategy = SimpleNamespace(describe=lambda model: {"total": 1000, "trainable": 10})

    def log(self, *args, **kwargs) -> None:
        pass


def _steps(monitor, module, first: int, last: int, tokens: int = 10) -> None:
    """Optimizer steps ``first``..``last``, one batch each."""
    for step in range(first, last + 1):
        trainer = SimpleNamespace(global_step=step)
        batch = {"num_tokens": torch.tensor(tokens)}
        monitor.on_train_batch_end(trainer, module, torch.tensor(float(step)), batch, 0)


def test_a_resumed_monitor_reports_the_whole_run(monkeypatch) -> None:
    """A checkpoint carries the loss history and the figures so far; the resumed attempt times
    from its own warm-up (counted from the step it resumed at) and adds up both attempts."""
    import ftlight.measure.throughput as throughput

    monkeypatch.setattr(throughput, "peak_flops", lambda device, dtype=None, **kwargs: 1e12)
    module = _Module()
    first = ThroughputMonitor(warmup_steps=2)
    first.on_train_start(SimpleNamespace(global_step=0), module)
    _steps(first, module, 1, 5)
    state = first.state_dict()
    assert [s for s, _ in state["losses"]] == [1, 2, 3, 4, 5]
    assert state["real_tokens"] == 50 and state["timed_tokens"] == 30  # steps 3-5 timed
    assert state["timed_seconds"] > 0

    resumed = ThroughputMonitor(warmup_steps=2)
    resumed.load_state_dict(state)
    resumed.on_train_start(SimpleNamespace(global_step=5), module)
    _steps(resumed, module, 6, 9)
    resumed.on_train_end(SimpleNamespace(global_step=9), module)
    assert [s for s, _ in resumed.loss_history()] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    summary = resumed.summary
    assert summary["real_tokens"] == 90
    # the second attempt times steps 8-9 (warm-up 6-7): 20 tokens on top of the first's 30
    assert resumed.state_dict()["timed_tokens"] == 50
    assert summary["timed_seconds"] >= state["timed_seconds"]
    assert summary["real_tokens_per_s"] == pytest.approx(50 / summary["timed_seconds"])
    assert summary["mfu"] > 0
