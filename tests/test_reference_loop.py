"""ftlight's training against a loop written by hand in plain PyTorch and transformers.

Full fine-tuning through ftlight (its data order, Lightning's loop, its schedule, gradient
clipping and precision) must be the textbook loop: the same model from the same weights, fed
the batches ftlight fed, with ``torch.optim.AdamW``, transformers' own linear schedule (what
``transformers.Trainer`` uses by default), ``clip_grad_norm_`` and the model's own loss, gives
the same loss at every step and the same weights at the end. Whatever separates ftlight's
score from a plain loop's on the same rows is then the draws a seed makes (the data order, a
new head's weights, dropout masks), not the training itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import transformers

from ftlight.module import MODEL_INPUTS
from ftlight.testing import NoDropout, Probe, compose_config
from ftlight.testing.helpers import fit

STEPS = 6
# the Trainer's defaults: linear decay from the peak rate, no warm-up, clipping at 1.0
SCHEDULE = [
    f"trainer.max_steps={STEPS}",
    "trainer.max_epochs=-1",
    "trainer.check_val_every_n_epoch=1000",
    "trainer.enable_checkpointing=false",
    "callbacks.checkpoint=null",
    "trainer.gradient_clip_val=1.0",
    "strategy=full",
    "optimizer.weight_decay=0.01",
    "scheduler=linear",
    "scheduler.warmup_ratio=0",
]


class Batches(L.Callback):
    """The weights before the first step and every batch the model was given, as given."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.batches: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = {k: v.detach().clone() for k, v in module.model.state_dict().items()}

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, i: int
    ) -> None:
        self.batches.append({k: batch[k].clone() for k in MODEL_INPUTS if k in batch})


def hand_loop(
    config: Any, auto_class: type, start: dict[str, torch.Tensor], batches: list[dict], lr: float
) -> tuple[list[float], float, dict[str, torch.Tensor]]:
    """The textbook loop over ``batches``: the loss of each step, the first batch's loss after
    the last step, and the final weights."""
    model = auto_class.from_config(config)
    model.load_state_dict(start)
    for layer in model.modules():  # the ftlight run has every dropout at zero too
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, 0, len(batches))
    losses = []
    for batch in batches:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        again = float(model(**batches[0], use_cache=False).loss)
    return losses, again, {k: v.detach() for k, v in model.state_dict().items()}


def _compare(
    overrides: list[str], tmp_path: Path, setup: str | None, weight_atol: float, lr: float = 5e-3
) -> None:
    cfg = compose_config([*SCHEDULE, f"optimizer.lr={lr}", *overrides], tmp_path, setup)
    seen, probe = Batches(), Probe()
    run, _ = fit(cfg, callbacks=[NoDropout(), seen, probe])
    assert len(seen.batches) == len(probe.losses) == STEPS
    model_class = run.task.auto_class()
    losses, again, end = hand_loop(
        run.module.model.config, model_class, seen.start, seen.batches, lr
    )
    torch.testing.assert_close(
        torch.tensor(probe.losses), torch.tensor(losses), rtol=1e-5, atol=1e-6
    )
    assert again < losses[0]  # the loop learned its first batch: the comparison says something
    ours = {k: v.detach() for k, v in run.module.model.state_dict().items()}
    assert ours.keys() == end.keys()
    moved = 0
    for name, value in end.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=weight_atol, msg=name)
        moved += int(not torch.equal(value, seen.start[name]))
    assert moved > len(end) // 2  # full fine-tuning moved the weights being compared


def test_classifier_full_matches_hand_loop(tmp_path: Path) -> None:
    _compare(["data.batch_size=4"], tmp_path, "tiny-bert", weight_atol=1e-6)


@pytest.mark.parametrize("speed", ["plain", "auto"])
def test_causal_lm_full_matches_hand_loop(speed: str, tmp_path: Path) -> None:
    # speed=auto projects only the labelled positions and fuses the head's loss: the same
    # loss up to summation order
    atol = 1e-6 if speed == "plain" else 1e-4
    _compare([f"speed={speed}", "data.batch_size=4"], tmp_path, "tiny-llama", weight_atol=atol)


@pytest.mark.slow
def test_real_minilm_classifier_full_matches_hand_loop(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 on the demo classification task (the paired-accuracy set-up)."""
    overrides = [
        "experiment=demo-classify",
        "model=minilm-l6",
        "data.train_size=96",
        "data.val_size=16",
        "data.batch_size=16",
        "eval.general=null",
    ]
    _compare(overrides, tmp_path, None, weight_atol=1e-5, lr=5e-5)
