"""Multi-process runs on CPU (gloo): DDP and FSDP2 sharding, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

FIXTURES = Path(__file__).parent / "fixtures"


def _run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTLIGHT_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable,
        "-m",
        "ftlight",
        "model=tiny-llama",
        "data=local",
        f"data.train_path={FIXTURES / 'alpaca_train.jsonl'}",
        f"data.val_path={FIXTURES / 'alpaca_val.jsonl'}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_steps=4",
        "trainer.max_epochs=-1",
        "task.max_new_tokens=4",
        "callbacks.progress=null",
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_two_process_run_shares_one_folder(tmp_path: Path, trainer: str) -> None:
    proc = _run_cli(tmp_path, f"trainer={trainer}", "strategy=lora")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    # LoRA r=8 on every linear layer of tiny-llama: 4096 per block, 2 blocks
    assert metrics["params"]["trainable"] == 8192
    assert metrics["train"]["steps"] == 4
    assert metrics["after"]["loss"] < metrics["before"]["loss"]
    # one run folder for both ranks; rank 1 wrote no second export or metrics file
    assert (run / "model" / "config.json").is_file()
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert not list(tmp_path.glob("run*/**/metrics.json"))[1:]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "model")
