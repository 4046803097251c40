"""Writing model folders: weights, tokenizer, ftlight metadata and a model card, atomically."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Any

from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from ftlight.errors import ModelError, StorageError
from ftlight.evaluation.report import model_card
from ftlight.files import atomic_dir
from ftlight.logs import timed
from ftlight.redact import redacted_yaml
from ftlight.speed.allocator import release_free_memory

log = logging.getLogger("ftlight")


class ModelSaver:
    """Saves a model (plain or peft) with its tokenizer and metadata into one folder."""

    def __init__(self, tokenizer: Any, meta: dict[str, Any], card: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.meta = meta
        self.card = card

    def __call__(self, model: nn.Module, target: Path) -> None:
        """Write ``target`` in one piece (temp folder + rename)."""

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "ftlight.json").write_text(json.dumps(self.meta, indent=2, default=str))
            if self.card:
                (tmp / "README.md").write_text(self.card)

        atomic_dir(Path(target), write)


def find_model_dir(path: str | Path) -> Path:
    """A run folder's ``model/`` export, or the folder itself when it holds a model."""
    path = Path(path).expanduser()
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelError(
        f"{path} holds no exported model (no config.json in {path} or {path / 'model'}). "
        "Pass a run folder written by ftlight-train (with eval.export=true) or a model folder."
    )


def trained_model(run: Any) -> nn.Module | None:
    """The trained model as one plain, full-precision module (on rank 0; None elsewhere).

    FSDP2-sharded weights are gathered (a collective: every rank calls this); when frozen
    weights were kept in bf16 for speed, the base is reloaded in full precision and the trained
    tensors are put back on it. That reloaded model takes the trained one's place in the run's
    module (which then holds what was exported), so the two are never in memory together; what
    the malloc holds free goes back to the kernel first, so that the reloaded weights do not
    come on top of what training and evaluation left.
    """
    module, strategy = run.module, run.strategy
    model = module.model
    if not module.sharded and not module.installed.frozen_cast:
        return model if run.trainer.is_global_zero else None
    if module.sharded:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)  # rank 0 gets the full tensors
    else:
        state = strategy.trainable_state_dict(model)  # holds only the trained tensors
    if not run.trainer.is_global_zero:
        return None
    if not module.sharded:  # the bf16 copy goes before the full-precision one loads
        module.model = None
        del model
        gc.collect()
        release_free_memory()
    fresh = strategy.apply(run.source.load(run.task.auto_class(), **run.load_kwargs), run.task)
    if module.sharded:
        fresh.load_state_dict(state)
    else:
        strategy.load_trainable_state_dict(fresh, state)
        module.model = fresh
    return fresh


def export_run(run: Any, model: nn.Module, summary: dict[str, Any]) -> dict[str, Path]:
    """Write what the strategy exports (``adapter/``, ``model/``) with the tokenizer, ftlight's
    metadata and a model card, each folder atomically; the paths written."""
    meta = {
        "base_model": run.source.display_name,
        "strategy": run.strategy.name,
        "task": run.task.name,
        "data": run.data.describe(),
        "params": summary["params"],
        "labels": run.data.labels.names if run.data.labels else None,
        "instruction": run.data.instruction,
    }
    if summary.get("best"):  # eval.best=true: the weights of that validation, not the last
        meta["step"] = summary["best"]["step"]
    card = model_card(
        {**meta, "config_yaml": redacted_yaml(run.cfg)}, summary["before"], summary["after"]
    )
    _keep_decoding(run.task, model)
    try:
        with timed("export", log):
            return run.strategy.export(model, ModelSaver(run.tokenizer, meta, card), run.run_dir)
    except OSError as err:
        raise _export_failed(run.run_dir, err) from err


def _keep_decoding(task: Any, model: nn.Module) -> None:
    """The run's ``task.generation`` overrides go into the exported ``generation_config.json``,
    so that the model decodes after export as it was evaluated."""
    overrides = getattr(getattr(task, "answers", None), "overrides", None)
    if not overrides:
        return
    from ftlight.tasks.generation import decoding_config

    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    inner.generation_config = decoding_config(inner, overrides)


def _export_failed(run_dir: Path, err: OSError) -> StorageError:
    """The error for an export that could not be written (a full disk, a read-only folder):
    each export folder is written whole or not at all, so what is there is complete."""
    done = sorted(f"{p.name}/" for p in run_dir.iterdir() if (p / "ftlight.json").is_file())
    where = f" ({err.filename})" if err.filename else ""
    held = f"it holds the complete {', '.join(done)}" if done else "it holds no export"
    error = StorageError(
        f"the export into {run_dir} failed: {err.strerror or err}{where}. No folder was left "
        f"half-written: {held}, and metrics.json and the checkpoints are kept. Free some space "
        "or make the folder writable, then export again by resuming the run: "
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    )
    error.errno = err.errno
    return error
