"""Files that are written whole or not at all: temp name, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ftlight")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries to disk, so that a rename in it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems (network mounts) cannot sync a folder; the rename stands
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (written by code that does not sync its own files)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(path)
    fsync_dir(folder)


def temp_name(target: Path) -> str:
    """The prefix of the temporary names used while ``target`` is written."""
    return f".{target.name}.tmp-"


def atomic_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a folder via ``write(tmp)`` next to ``target`` and move it into place at the end.

    A crash leaves at most a hidden temp folder, never a half-written ``target``; a crash
    while an old ``target`` is swapped out leaves it as ``.<name>.old-<pid>``, which
    ``remove_stale_temps`` puts back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_name(target), dir=target.parent))
    try:
        write(tmp)
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
            fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file + rename)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (temp file + rename): readers see all of it or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_name(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Tidy what killed atomic writes left in ``folder`` (not below it); return what changed.

    Temp files and folders (``.<name>.tmp-*``) are deleted. A swapped-out old folder
    (``.<name>.old-<pid>``) is deleted when ``<name>`` exists, and renamed back otherwise:
    then it is the only complete copy. Only call this while no other process writes there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    changed = []
    for path in sorted(folder.glob(".*.tmp-*")):
        log.info("remove the leftover of an interrupted write: %s", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        changed.append(path)
    for path in sorted(folder.glob(".*.old-*")):
        name = path.name[1:].rsplit(".old-", 1)[0]
        target = folder / name
        if target.exists() or target.is_symlink():
            log.info("remove the leftover of an interrupted replace: %s", path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        else:
            log.warning("put back %s, left aside by an interrupted replace", target)
            os.replace(path, target)
        changed.append(path)
    if changed:
        fsync_dir(folder)
    return changed
