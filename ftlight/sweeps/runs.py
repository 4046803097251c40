"""Run folders as the comparison reads them: one ``RunRecord`` per folder.

Each run folder is read as it was left: ``metrics.json`` (scores, parameters, throughput),
``.hydra/`` (its overrides and config) and what it exported. A folder without ``metrics.json``
is a run that failed or did not finish, and stays in the comparison as such.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftlight.errors import ConfigError

TRIAL_FILE = "trial.json"
"""What the sweep callback records about a trial beside its run (status, error, peak RSS)."""


@dataclass
class RunRecord:
    """One run folder as the comparison reads it."""

    path: Path
    name: str
    status: str  # ok | failed | incomplete
    note: str = ""
    overrides: dict[str, str] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    trial: dict[str, Any] = field(default_factory=dict)
    saved_bytes: int | None = None
    saved_what: str = ""

    @property
    def ok(self) -> bool:
        """Whether the run finished and wrote its metrics."""
        return self.status == "ok"

    @property
    def strategy(self) -> str:
        """The strategy's name (from the metrics, else the config group chosen)."""
        return str(self.metrics.get("strategy") or self.choices.get("strategy") or "?")

    @property
    def task(self) -> str | None:
        """The task's name, when known."""
        return self.metrics.get("task") or self.choices.get("task")

    @property
    def rank(self) -> int | None:
        """The adapter rank ``strategy.r`` of strategies that have one."""
        value = (self.config.get("strategy") or {}).get("r")
        return value if isinstance(value, int) else None

    @property
    def trainable(self) -> int | None:
        """Trainable parameters."""
        return (self.metrics.get("params") or {}).get("trainable")

    @property
    def total(self) -> int | None:
        """All parameters, adapters included."""
        return (self.metrics.get("params") or {}).get("total")

    def score(self, phase: str, metric: str) -> float | None:
        """``metric`` in ``before`` / ``after`` / ``few_shot``, if measured."""
        if phase == "few_shot":
            return ((self.metrics.get("few_shot") or {}).get("scores") or {}).get(metric)
        return (self.metrics.get(phase) or {}).get(metric)

    @property
    def few_shot_k(self) -> int | None:
        """How many examples the few-shot baseline put in the prompt."""
        return (self.metrics.get("few_shot") or {}).get("k")

    @property
    def train_seconds(self) -> float | None:
        """Wall time of ``fit``."""
        return (self.metrics.get("train") or {}).get("seconds")

    @property
    def tokens_per_s(self) -> float | None:
        """Real (non-padding) training tokens per second."""
        return (self.metrics.get("throughput") or {}).get("real_tokens_per_s")

    @property
    def peak_memory_mb(self) -> float | None:
        """Peak memory as the run reports it (CPU: the process's peak RSS so far)."""
        return (self.metrics.get("throughput") or {}).get("peak_memory_mb")


# -- reading ------------------------------------------------------------------------------
def is_run_folder(path: Path) -> bool:
    """A folder a run wrote: Hydra's ``.hydra/`` or a ``metrics.json``."""
    return (path / ".hydra").is_dir() or (path / "metrics.json").is_file()


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders given directly or found under the given folders (a sweep), in order."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise ConfigError(
                f"{path} is not a folder (looked in {path.resolve()}); give run folders or a "
                "multirun sweep folder that holds them"
            )
        below = [path] if is_run_folder(path) else _runs_below(path)
        if not below:
            raise ConfigError(
                f"{path} holds no run folders (a run folder has .hydra/ or metrics.json); give "
                "the folder ftlight-train wrote, e.g. runs/<date>/<time> or "
                "runs/multirun/<date>/<time>"
            )
        found += [p for p in below if p not in found]
    return found


def _runs_below(folder: Path) -> list[Path]:
    runs: list[Path] = []
    for child in sorted(folder.iterdir(), key=lambda p: _natural(p.name)):
        if child.is_dir() and not child.name.startswith("."):
            runs += [child] if is_run_folder(child) else _runs_below(child)
    return runs


def _natural(name: str) -> list[Any]:
    """Sort key that orders ``2_x`` before ``10_x`` (Hydra numbers the jobs of a sweep)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def read_run(path: Path, name: str) -> RunRecord:
    """Everything the comparison needs from one run folder."""
    hydra = path / ".hydra"
    run = RunRecord(path=path, name=name, status="ok")
    run.overrides = parse_overrides(_read_yaml(hydra / "overrides.yaml") or [])
    run.choices = ((_read_yaml(hydra / "hydra.yaml") or {}).get("hydra") or {}).get(
        "runtime", {}
    ).get("choices") or {}
    run.config = _read_yaml(hydra / "config.yaml") or {}
    run.trial = _read_json(path / TRIAL_FILE) or {}
    metrics = _read_json(path / "metrics.json")
    if metrics is None:
        run.status, run.note = _why_unfinished(path, run.trial)
        return run
    run.metrics = metrics
    run.saved_what, run.saved_bytes = _saved(path, metrics.get("exports") or {})
    return run


def parse_overrides(lines: list[Any]) -> dict[str, str]:
    """``key=value`` lines of ``.hydra/overrides.yaml`` as a dict (``+``/``++`` dropped)."""
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        if key.startswith("~"):
            out[key[1:]] = "(removed)"
        else:
            out[key.lstrip("+")] = value if sep else ""
    return out


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _why_unfinished(path: Path, trial: dict[str, Any]) -> tuple[str, str]:
    if trial.get("status") == "failed":
        return "failed", str(trial.get("error") or "the trial raised an error")
    for log in sorted(path.glob("*.log")):
        errors = [
            line.split("][ERROR] - ", 1)[1].strip() for line in _lines(log) if "][ERROR] - " in line
        ]
        if errors:
            return "failed", errors[-1]
    others = [p for p in path.iterdir() if p.name != ".hydra"]
    if not others:
        return "incomplete", "nothing but .hydra/: stopped before the run started"
    return "incomplete", "no metrics.json: stopped before the end, or still running"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _saved(path: Path, exports: dict[str, str]) -> tuple[str, int | None]:
    """What the run saved for reuse and its size: the adapter when there is one (the merged
    model is a convenience copy), else the model."""
    if not exports:
        return "", None
    name = (
        "adapter"
        if "adapter" in exports
        else "model"
        if "model" in exports
        else next(iter(exports))
    )
    folder = path / name if (path / name).is_dir() else Path(exports[name])
    if not folder.is_dir():
        return f"{name}/", None
    return f"{name}/", sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
