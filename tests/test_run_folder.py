"""A run folder belongs to one run: the lock, previous results, leftovers, durable renames and
a full disk while a checkpoint is written."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ftlight.checkpoint import AtomicCheckpointIO
from ftlight.errors import ConfigError, StorageError
from ftlight.files import atomic_dir, atomic_write_bytes
from ftlight.runfolder import LOCK_FILE, RANK_VARIABLES, claim_run_folder

# a short fit that writes checkpoints, no evaluation or export
RUN = [
    "strategy=lora",
    "eval.before=false",
    "eval.after=false",
    "eval.export=false",
    "trainer.max_epochs=-1",
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.warmup_ratio=0",
]


def _cfg(run_dir: Path, ckpt_path: str | None = None):
    """The two settings ``claim_run_folder`` reads."""
    return OmegaConf.create({"run_dir": str(run_dir), "ckpt_path": ckpt_path})


@pytest.fixture
def rank(monkeypatch: pytest.MonkeyPatch):
    """``rank(var, value)``: run as a launched rank; no rank variable set by default."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return lambda name, value: monkeypatch.setenv(name, value)


@pytest.fixture
def held(tmp_path: Path):
    """A run folder whose lock another process holds, until the test ends."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = (
        "import fcntl, sys, time\n"
        f"f = open({str(run_dir / LOCK_FILE)!r}, 'a+')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.write('pid 4242 on elsewhere'); f.flush()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield run_dir
    proc.kill()
    proc.wait()


# -- one run at a time ---------------------------------------------------------------------
def test_a_second_concurrent_run_is_refused(held, compose, rank) -> None:
    from ftlight.train import train

    cfg = compose(RUN, held, "causal_lm")
    with pytest.raises(ConfigError) as err:
        train(cfg)
    msg = str(err.value)
    assert f"another run is writing into {held} (pid 4242 on elsewhere)" in msg
    assert "hydra.run.dir=<new folder>" in msg


def test_the_lock_is_held_for_the_run_and_released_after(tmp_path, rank) -> None:
    with claim_run_folder(_cfg(tmp_path)):
        with pytest.raises(ConfigError, match="another run is writing"):
            with claim_run_folder(_cfg(tmp_path)):
                pass
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()
    with claim_run_folder(_cfg(tmp_path)):  # free again
        pass


@pytest.mark.parametrize(
    ("name", "value"),
    [("LOCAL_RANK", "1"), ("RANK", "3"), ("NODE_RANK", "1"), ("SLURM_PROCID", "1")],
)
def test_other_ranks_share_the_folder(held, rank, name: str, value: str) -> None:
    """Ranks of one distributed run write into rank 0's folder while rank 0 holds it."""
    (held / "metrics.json").write_text("{}")
    (held / ".metrics.json.tmp-abc").write_text("rank 0 is writing this")
    rank(name, value)
    with claim_run_folder(_cfg(held)) as folder:
        assert folder == held
    assert (held / ".metrics.json.tmp-abc").exists()  # only rank 0 tidies


# -- another run's results -----------------------------------------------------------------
def _results(run_dir: Path, kind: str) -> Path:
    if kind == "checkpoints":
        path = run_dir / "checkpoints" / "last.ckpt"
    elif kind == "hpc":  # Lightning's SLURM requeue checkpoint, in default_root_dir
        path = run_dir / "hpc_ckpt_1.ckpt"
    elif kind == "metrics":
        path = run_dir / "metrics.json"
    else:  # an export (a plugin may name its folder anything; ModelSaver writes ftlight.json)
        path = run_dir / "merged" / "ftlight.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("previous run")
    return path


@pytest.mark.parametrize("kind", ["checkpoints", "hpc", "metrics", "export"])
def test_a_folder_with_results_is_refused(compose, tmp_path, rank, kind: str) -> None:
    from ftlight.train import train

    kept = _results(tmp_path, kind)
    with pytest.raises(ConfigError) as err:
        train(compose(RUN, tmp_path, "causal_lm"))
    msg = str(err.value)
    assert f"{tmp_path} already holds the results of another run" in msg
    assert "hydra.run.dir=<new folder>" in msg
    assert f"hydra.run.dir={tmp_path} ckpt_path=auto" in msg
    assert kept.read_text() == "previous run"


def test_hydra_files_alone_are_not_a_previous_run(tmp_path, rank) -> None:
    """Hydra writes ``.hydra/`` before the run starts; an empty checkpoints/ holds nothing."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "checkpoints").mkdir()
    with claim_run_folder(_cfg(tmp_path)):
        pass


def test_a_checkpoint_elsewhere_does_not_resume_here(tmp_path, rank) -> None:
    _results(tmp_path / "run", "checkpoints")
    other = _results(tmp_path / "other", "checkpoints")
    with pytest.raises(ConfigError, match="already holds the results"):
        with claim_run_folder(_cfg(tmp_path / "run", str(other))):
            pass
    for ckpt in (str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "last", "auto"):
        with claim_run_folder(_cfg(tmp_path / "run", ckpt)):
            pass


def test_resuming_in_the_same_folder_works(helpers, tmp_path, rank) -> None:
    """Two steps, then on to three from that folder's last.ckpt (loaded weights_only); a third
    run into the folder without ckpt_path is refused."""
    from ftlight.train import train

    first, _ = helpers.train(helpers.compose([*RUN, "trainer.max_steps=2"], tmp_path, "causal_lm"))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    resumed, probe = helpers.train(
        helpers.compose([*RUN, "trainer.max_steps=3", f"ckpt_path={ckpt}"], tmp_path, "causal_lm")
    )
    assert resumed.trainer.global_step == 3
    assert len(probe.losses) == 1  # continued, not restarted
    with pytest.raises(ConfigError, match="already holds the results"):
        train(helpers.compose([*RUN, "trainer.max_steps=3"], tmp_path, "causal_lm"))


# -- leftovers of killed writes ------------------------------------------------------------
def test_leftovers_of_killed_writes_are_removed_at_start(tmp_path, rank) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    stale = [
        tmp_path / ".metrics.json.tmp-a1b2",
        ckpts / ".last.ckpt.tmp-c3d4",
        tmp_path / ".model.tmp-e5f6",  # a folder (atomic_dir)
    ]
    for path in stale[:2]:
        path.write_bytes(b"half written")
    stale[2].mkdir()
    (stale[2] / "model.safetensors").write_bytes(b"half written")
    # killed between the two renames of a folder replace: the old copy is the only one
    (tmp_path / ".adapter.old-77").mkdir()
    (tmp_path / ".adapter.old-77" / "adapter_config.json").write_text("{}")
    keep = [tmp_path / ".hydra" / "config.yaml", tmp_path / "notes.tmp-1", ckpts / ".keep"]
    for path in keep:
        path.parent.mkdir(exist_ok=True)
        path.write_text("keep")
    elsewhere = tmp_path / "logs" / ".metrics.csv.tmp-x"  # not a folder ftlight tidies
    elsewhere.parent.mkdir()
    elsewhere.write_text("keep")
    with claim_run_folder(_cfg(tmp_path)):
        pass
    assert not [p for p in stale if p.exists()]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / ".adapter.old-77").exists()
    assert all(p.read_text() == "keep" for p in [*keep, elsewhere])


# -- durable renames -----------------------------------------------------------------------
def test_every_atomic_rename_is_followed_by_a_folder_sync(tmp_path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    replace, fsync = os.replace, os.fsync

    def record_replace(src, dst) -> None:
        replace(src, dst)
        events.append(("rename", str(Path(dst).parent)))

    def record_fsync(fd: int) -> None:
        fsync(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "replace", record_replace)
    monkeypatch.setattr(os, "fsync", record_fsync)
    writes = {
        "file": lambda d: atomic_write_bytes(d / "metrics.json", b"{}"),
        "folder": lambda d: atomic_dir(d / "model", lambda t: (t / "a").write_text("x")),
        "folder again": lambda d: atomic_dir(d / "model", lambda t: (t / "b").write_text("y")),
        "checkpoint": lambda d: AtomicCheckpointIO().save_checkpoint({"x": 1}, d / "last.ckpt"),
    }
    for what, write in writes.items():
        folder = tmp_path / what.split()[0]
        folder.mkdir(exist_ok=True)
        events.clear()
        write(folder)
        renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
        assert renames, what
        assert ("sync", str(folder)) in events[renames[-1] + 1 :], (what, events)


# -- a full disk ---------------------------------------------------------------------------
class _FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, file, room: int = 1000) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def _failing_save(error: Exception):
    """A ``torch.save`` that writes part of the file, then raises ``error``."""

    def save(obj, f, *args, **kwargs) -> None:
        f.write(b"half a checkpoint")
        raise error

    return save


TORCH_WRITE_FAILED = (
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
    "data/0: file write failed"
)


@pytest.mark.parametrize("how", ["full file system", "torch write failed", "ENOSPC"])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, how: str) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(4)}, target)
    before = target.read_bytes()
    big = {"step": 2, "w": torch.ones(100_000)}
    if how == "full file system":  # the real torch.save on a disk that fills up
        fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDisk(fdopen(*a, **k)))
    elif how == "torch write failed":  # what a path-based torch.save reports
        monkeypatch.setattr(torch, "save", _failing_save(RuntimeError(TORCH_WRITE_FAILED)))
    else:
        error = OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(torch, "save", _failing_save(error))
    with pytest.raises(StorageError) as err:
        AtomicCheckpointIO().save_checkpoint(big, target)
    monkeypatch.undo()
    msg = str(err.value)
    assert msg.startswith("no space left on /")
    assert f"while writing checkpoint {target}; the previous checkpoint is intact" in msg
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert target.read_bytes() == before
    assert os.listdir(target.parent) == ["last.ckpt"]  # no temp file left
    assert torch.load(target, weights_only=True)["step"] == 1


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch, "save", _failing_save(RuntimeError("some other failure")))
    with pytest.raises(RuntimeError, match="some other failure") as err:
        AtomicCheckpointIO().save_checkpoint({"x": 1}, tmp_path / "last.ckpt")
    assert not isinstance(err.value, StorageError)
    assert os.listdir(tmp_path) == []
