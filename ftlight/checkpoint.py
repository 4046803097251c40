"""Checkpoint I/O that never leaves a half-written file behind and never runs code on load."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ftlight.errors import ConfigError, StorageError
from ftlight.files import fsync_dir, temp_name

#: errno values that mean "the disk (or the user's quota) is full"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class _WriteRecorder:
    """A file wrapper that remembers the OSError a write raised.

    ``torch.save`` turns a failed write into a RuntimeError from its zip writer ("unexpected
    pos ..."), losing the reason; this keeps it, so a full disk can be reported as one.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temp file in the same folder, fsyncs, then renames it;
    loads with ``weights_only=True`` whatever the caller asks."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        """Atomic ``torch.save``; a full disk is a ``StorageError`` and the old file stays."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_name(path), dir=path.parent)
        recorder = None
        try:
            with os.fdopen(fd, "wb") as f:
                recorder = _WriteRecorder(f)
                torch.save(checkpoint, recorder)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if _disk_full(err, recorder.error if recorder else None):
                raise _disk_full_error(path) from err
            raise
        fsync_dir(path.parent)

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """``torch.load`` of tensors and plain values only: a crafted file cannot run code.

        ``weights_only`` is ignored on purpose: Lightning passes ``None`` (meaning "unpickle
        anything") unless told otherwise, and http(s) paths default to that too.
        """
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"ckpt_path={path} is not a checkpoint ftlight can load safely: it holds "
                f"Python objects other than tensors and plain values, which could run code "
                f"when loaded (torch.load with weights_only=True refused it: {reason}). "
                "Resume from a checkpoint written by ftlight-train "
                "(ckpt_path=<run folder>/checkpoints/last.ckpt)."
            ) from None


@contextlib.contextmanager
def only_chosen_checkpoint(trainer: L.Trainer) -> Iterator[None]:
    """In the block, a trainer call made without ``ckpt_path`` loads no checkpoint at all.

    Under SLURM, Lightning turns ``ckpt_path=None`` into the newest ``hpc_ckpt_*.ckpt`` of
    ``default_root_dir`` for every ``fit``, ``validate`` and ``test`` call
    (``_CheckpointConnector._parse_ckpt_path``): an evaluation after a requeue would score
    those weights instead of the model in memory. A checkpoint path that the user manages and
    that is empty makes Lightning use the module as given (``_select_ckpt_path``); the public
    ``trainer.ckpt_path`` setter cannot say "none", hence the connector's own fields.
    """
    connector = trainer._checkpoint_connector
    saved = connector._ckpt_path, connector._user_managed
    connector._ckpt_path, connector._user_managed = None, True
    try:
        yield
    finally:
        connector._ckpt_path, connector._user_managed = saved


def _disk_full(err: BaseException, recorded: OSError | None) -> bool:
    """Whether a failed checkpoint write failed for want of space."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    if recorded is not None:
        return recorded.errno in _DISK_FULL
    # a path-based torch.save reports the failed write only in its message
    return isinstance(err, RuntimeError) and "file write failed" in str(err)


def _disk_full_error(path: Path) -> StorageError:
    """The error for a checkpoint that did not fit on its disk."""
    folder = path.parent
    mount = folder.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MB free there"
    except OSError:
        free = "free space unknown"
    error = StorageError(
        f"no space left on {mount} while writing checkpoint {path}; the previous checkpoint "
        f"is intact ({free}). Free some space and resume with ckpt_path={folder / 'last.ckpt'}, "
        "or keep checkpoints on a larger disk: callbacks.checkpoint.dirpath=<folder>."
    )
    error.errno = errno.ENOSPC
    return error
