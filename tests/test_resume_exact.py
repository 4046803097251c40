"""Two processes stopped mid-epoch resume to the uninterrupted run's weights bit for bit (DDP
and FSDP2 on the CPU, through the real command line): each rank's random state, sampler
position and gradient-accumulation position come back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftlight.testing import setup_overrides

pytestmark = pytest.mark.distributed

COLOURS = ["red", "green", "blue", "black", "white", "pink", "grey", "brown"]


def _rows(path: Path) -> Path:
    """24 rows of three lengths: the ranks' batches differ in shape, and so do their draws."""
    rows = [
        {
            "instruction": "Name the colour in the sentence.",
            "input": f"The {animal} is {colour}{'.' * (1 + i % 3)}",
            "output": colour,
        }
        for i, (animal, colour) in enumerate(
            (a, c) for a in ("cat", "dog", "bird") for c in COLOURS
        )
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _command(tmp_path: Path, run: str, *overrides: str) -> list[str]:
    return [
        *(sys.executable, "-m", "ftlight", *setup_overrides("tiny-llama")),
        f"data.train_path={_rows(tmp_path / 'train.jsonl')}",
        "data.batch_size=2",  # 12 batches an epoch, 6 per rank
        "strategy=lora",
        "strategy.dropout=0.1",  # each rank's dropout masks must come back
        *("trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"),
        *("trainer.max_epochs=-1", "optimizer.lr=1e-2", "scheduler=constant"),
        *("scheduler.warmup_ratio=0", "eval.before=false", "eval.after=false"),
        *("eval.general=null", "callbacks.progress=null", "trainer.enable_model_summary=false"),
        f"hydra.run.dir={tmp_path / run}",
        *overrides,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize(
    ("trainer", "accumulate", "steps", "pause"),
    # 6 micro-batches an epoch on each rank: ddp stops at step 7 of 9 (one batch into the
    # second epoch), fsdp, two micro-batches a step, at step 4 of 5 (a step into the second)
    [("ddp", 1, 9, 6), ("fsdp", 2, 5, 3)],
    ids=["ddp", "fsdp-accumulating"],
)
def test_two_processes_stopped_mid_epoch_resume_bit_for_bit(
    tmp_path: Path, trainer: str, accumulate: int, steps: int, pause: int
) -> None:
    env = {**ENV, "FTLIGHT_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    same = [
        f"trainer={trainer}",
        f"trainer.max_steps={steps}",
        f"trainer.accumulate_grad_batches={accumulate}",
    ]
    whole = subprocess.run(
        _command(tmp_path, "whole", *same), env=env, capture_output=True, text=True, timeout=900
    )
    assert whole.returncode == 0, whole.stderr[-3000:]

    marker = tmp_path / "paused"
    held = [
        "+callbacks.pause._target_=ftlight.testing.PauseAtStep",
        f"+callbacks.pause.step={pause}",
        f"+callbacks.pause.marker={marker}",
    ]
    stopped = _command(tmp_path, "stopped", *same, "ckpt_path=auto")
    with open(tmp_path / "first.err", "w") as err:
        proc = subprocess.Popen([*stopped, *held], env=env, stdout=err, stderr=err)
    deadline = time.monotonic() + 600
    while not all(Path(f"{marker}.{rank}").exists() for rank in (0, 1)):
        assert proc.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.2)
    for rank in (0, 1):  # as a scheduler signals every task of a job
        os.kill(int(Path(f"{marker}.{rank}").read_text()), signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    first = (tmp_path / "first.err").read_text()
    assert f"stopped by SIGTERM at step {pause + 1}" in first, first[-3000:]
    assert (pause + 1) % (6 // accumulate) != 0  # mid-epoch, not at its boundary

    resumed = subprocess.run(stopped, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == steps and metrics["train"]["attempts"] == 2
    final, reference = _adapter(tmp_path / "stopped"), _adapter(tmp_path / "whole")
    assert final.keys() == reference.keys() and len(reference) == 28  # A and B of 14 layers
    for name, value in reference.items():
        assert torch.equal(final[name], value), (name, (final[name] - value).abs().max())
