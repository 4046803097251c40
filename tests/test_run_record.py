"""A run's record belongs to that run: a command refused a folder, or one that loses the race
for it, changes nothing there: not Hydra's ``.hydra/``, not the job log ``ftlight.log``, not the
lock file. Through the real command line (Hydra writes those before the run starts)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from ftlight.hydra_record import RunLog
from ftlight.runfolder import LOCK_FILE
from ftlight.sweeps.runs import read_run
from ftlight.testing import QUICK_RUN, setup_overrides

QUICK = [*setup_overrides("tiny-llama"), *QUICK_RUN]
RESULTS_REFUSED = "already holds the results of another run"
LOCK_REFUSED = "another run is writing into"


def _start(tmp_path: Path, run_dir: Path | None, *overrides: str) -> subprocess.Popen:
    """``python -m ftlight`` into ``run_dir`` (None: a sweep; ``overrides`` say where),
    its temporary files in ``tmp_path/tmp``."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
        "TMPDIR": str(tmp_path / "tmp"),  # where Hydra's record waits: checked for leftovers
    }
    env.pop("HYDRA_FULL_ERROR", None)
    flags = [o for o in overrides if o.startswith("-")]  # before the overrides, for argparse
    cmd = [sys.executable, "-m", "ftlight", *flags, *QUICK]
    cmd += [o for o in overrides if not o.startswith("-")]
    cmd += [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _train(tmp_path: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return _finish(_start(tmp_path, run_dir, *overrides))


def _snapshot(folder: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every path under ``folder`` (itself included): its bytes (files), mtime and mode."""
    found = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = path.stat()
        data = path.read_bytes() if path.is_file() else None
        found[str(path.relative_to(folder))] = (data, st.st_mtime_ns, st.st_mode)
    return found


def _no_staging_left(tmp_path: Path) -> None:
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("ftlight-")] == []


def _refused(result: subprocess.CompletedProcess, *messages: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert any(m in result.stderr for m in messages), result.stderr[-3000:]


def _recorded_r(run_dir: Path) -> tuple[int, dict[str, str]]:
    """``strategy.r`` in the folder's ``.hydra/config.yaml``, and its overrides as compared."""
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return config.strategy.r, read_run(run_dir, run_dir.name).overrides


def test_a_refused_run_changes_nothing_in_a_finished_run(tmp_path: Path) -> None:
    """The issue's case: the r=8 run stays r=8 for ``ftlight-compare``, and its log its own."""
    run_dir = tmp_path / "run"
    first = _train(tmp_path, run_dir, "strategy.r=8")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(run_dir)
    second = _train(tmp_path, run_dir, "strategy.r=2", "optimizer.lr=0.5")
    _refused(second, f"{run_dir} {RESULTS_REFUSED}")
    assert _snapshot(run_dir) == before  # .hydra/, ftlight.log, the lock file: as they were
    r, overrides = _recorded_r(run_dir)
    assert r == 8 and overrides["strategy.r"] == "8" and "optimizer.lr" not in overrides
    _no_staging_left(tmp_path)


def test_a_run_that_loses_the_race_for_a_new_folder_leaves_the_winners_record(
    tmp_path: Path,
) -> None:
    """Two runs into one new folder: the one that started second is refused (by the lock, or
    by the results if the first has finished), and the record is the first's."""
    run_dir = tmp_path / "run"
    winner = _start(tmp_path, run_dir, "strategy.r=16")
    deadline = time.monotonic() + 300
    lock = run_dir / LOCK_FILE
    while not (lock.is_file() and lock.read_text().startswith("pid")):  # it holds the folder
        assert winner.poll() is None and time.monotonic() < deadline, _finish(winner).stderr
        time.sleep(0.05)
    loser = _train(tmp_path, run_dir, "strategy.r=4")
    won = _finish(winner)
    assert won.returncode == 0, won.stderr[-3000:]
    _refused(loser, f"{LOCK_REFUSED} {run_dir}", f"{run_dir} {RESULTS_REFUSED}")
    r, overrides = _recorded_r(run_dir)
    assert r == 16 and overrides["strategy.r"] == "16"
    metrics = OmegaConf.load(run_dir / "metrics.json")
    assert metrics.params.trainable == 1024 * 16  # LoRA on tiny-llama: what the record says
    log_text = (run_dir / "ftlight.log").read_text()
    assert "ERROR" not in log_text and str(run_dir) in log_text  # the winner's lines only
    _no_staging_left(tmp_path)


def test_a_run_refused_by_the_lock_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    """A folder another process holds, with nothing in it yet but the lock file."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = (
        "import fcntl, time\n"
        f"f = open({str(run_dir / LOCK_FILE)!r}, 'a+')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.write('pid 4242 on elsewhere'); f.flush()\n"
        "print('locked', flush=True)\n"
        "time.sleep(300)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run_dir)
        result = _train(tmp_path, run_dir)
    finally:
        holder.kill()
        holder.wait()
    _refused(result, f"{LOCK_REFUSED} {run_dir} (pid 4242 on elsewhere)")
    assert _snapshot(run_dir) == before
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
    _no_staging_left(tmp_path)


def test_a_sweep_run_again_into_its_folder_leaves_its_trial_as_it_was(tmp_path: Path) -> None:
    """A trial refused its folder records nothing there either (``trial.json``: the sweep's
    comparison would list the finished trial as failed)."""
    sweep = tmp_path / "sweep"
    command = ["-m", "strategy.r=4", f"hydra.sweep.dir={sweep}"]
    first = _train(tmp_path, None, *command)
    assert first.returncode == 0, first.stderr[-3000:]
    (trial,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    before = _snapshot(trial)
    again = _train(tmp_path, None, *command)
    assert again.returncode != 0 and f"{trial} {RESULTS_REFUSED}" in again.stderr, again.stderr
    assert _snapshot(trial) == before
    assert json.loads((trial / "trial.json").read_text())["status"] == "completed"
    _no_staging_left(tmp_path)


def test_a_resume_records_its_settings_and_continues_its_log(tmp_path: Path) -> None:
    """``ckpt_path=auto`` into its own folder is accepted: its settings replace the first
    attempt's in ``.hydra/`` (as Hydra's own record did), its log lines follow the first's."""
    run_dir = tmp_path / "run"
    first = _train(tmp_path, run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    first_log = (run_dir / "ftlight.log").read_text()
    resumed = _train(tmp_path, run_dir, "trainer.max_steps=3", "ckpt_path=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert overrides[-2:] == ["trainer.max_steps=3", "ckpt_path=auto"]
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_steps == 3
    assert OmegaConf.load(run_dir / "metrics.json").train.steps == 3
    log_text = (run_dir / "ftlight.log").read_text()
    assert log_text.startswith(first_log) and "ckpt_path=auto: resuming from" in log_text
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    _no_staging_left(tmp_path)


# -- the job log handler -----------------------------------------------------------------------
def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("ftlight", logging.INFO, __file__, 1, message, None, None)


def test_the_job_log_holds_its_lines_until_the_run_holds_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "ftlight.log"
    path.write_text("the first attempt's line\n")
    handler = RunLog(str(path))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.handle(_record("before"))
    assert path.read_text() == "the first attempt's line\n"
    handler.open_file()
    handler.handle(_record("after"))
    handler.close()
    assert path.read_text() == "the first attempt's line\nINFO before\nINFO after\n"


def test_a_job_log_never_opened_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ftlight.log"
    handler = RunLog(str(path))
    handler.handle(_record("refused"))
    handler.close()
    handler.open_file()  # too late: the job ended
    handler.handle(_record("after the end"))
    assert not path.exists()
