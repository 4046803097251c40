"""A callback that holds a run at a known step, so that a test can signal it there."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L

from ftlight.preemption import find_preemption


class PauseAtStep(L.Callback):
    """After optimizer step ``step``, write ``<marker>.<rank>`` (holding the process id) and
    wait, at most ``timeout`` seconds, until a signal asks the run to stop.

    ``ftlight-train +callbacks.pause._target_=ftlight.testing.PauseAtStep
    +callbacks.pause.step=2 +callbacks.pause.marker=/tmp/paused`` holds a run (every rank) at
    step 2; a resumed attempt starts past that step and does not stop there again.
    """

    def __init__(self, step: int, marker: str, timeout: float = 120.0) -> None:
        self.step = step
        self.marker = marker
        self.timeout = timeout
        self._paused = False

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Hold at ``step`` until a signal arrives (or the time is up)."""
        if self._paused or trainer.global_step != self.step:
            return
        self._paused = True
        preemption = find_preemption(trainer)
        Path(f"{self.marker}.{trainer.global_rank}").write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not (preemption and preemption.requested):
            time.sleep(0.05)
