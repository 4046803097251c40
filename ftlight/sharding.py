"""FSDP2 (Lightning's ``ModelParallelStrategy``) whose sharded checkpoints hold what ftlight
saves: the trainable state only (adapters and head for PEFT strategies).

Lightning loads a sharded checkpoint folder into the model's whole state dict, so a checkpoint
without the frozen base weights fails with "Missing key in checkpoint state_dict", and the
module's ``on_load_checkpoint`` gets no ``state_dict`` to restore. Here the load asks the
folder for the entries it holds, and hands them to the module as a ``state_dict``, as a
single-file checkpoint does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy


class ModelParallel(ModelParallelStrategy):
    """``ModelParallelStrategy`` that resumes from checkpoints of part of the model."""

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict:
        """A sharded folder: the entries it holds, and the optimizers' states; a single file
        as Lightning loads it."""
        from lightning.fabric.strategies.model_parallel import _METADATA_FILENAME
        from torch.distributed import checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(checkpoint_path))
        if not (path.is_dir() and (path / _METADATA_FILENAME).is_file()):
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        assert self.model is not None
        held = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        every = get_model_state_dict(self.model)
        state = {"state_dict": {k: v for k, v in every.items() if f"state_dict.{k}" in held}}
        dcp.load(state, checkpoint_id=path)
        options = StateDictOptions(cpu_offload=True)
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            optim_state = {key: get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(optim_state, checkpoint_id=path)
            set_optimizer_state_dict(
                self.model, optimizer, optim_state_dict=optim_state[key], options=options
            )
        metadata = torch.load(path / _METADATA_FILENAME, weights_only=True)
        metadata["state_dict"] = state["state_dict"]  # on_load_checkpoint restores it
        return metadata
