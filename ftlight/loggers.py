"""Loggers that follow a run across attempts and sweeps: a CSV log that a resumed run continues
instead of starting over, and a W&B run per run (one per sweep trial, finished at its end; the
same one for every attempt of a requeued or resumed run) with the config the run used.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import re
import sys
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from ftlight.files import atomic_write_text
from ftlight.redact import is_secret_key, redact, secrets_in

log = logging.getLogger("ftlight")

WANDB_ID_VARIABLE = "FTLIGHT_WANDB_ID"
"""An environment variable that names the W&B run to log into (``launch/slurm.sbatch`` sets it)."""


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer, minus deleting ``metrics.csv`` when it opens the folder; the
    columns already in the file are kept."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes an existing ``metrics.csv`` here; the run decides instead
        (``CSVLogger.continue_from``)."""


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` (``logs/metrics.csv``, ``hparams.yaml``) that appends to an
    existing ``metrics.csv``: a resumed run continues its log.

    ``continue_from(step)``, which the run calls before it logs anything, drops the rows a
    previous attempt logged at or after ``step`` (work its checkpoint does not hold), or, with
    ``None`` (a run that starts afresh), the whole file.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (rank 0)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def continue_from(self, step: float | None) -> None:
        """Keep the rows logged before ``step`` (``math.inf``: all of them; ``None``: none)."""
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        if not os.path.isfile(path):
            return
        if step is None:
            os.remove(path)
            if self._experiment is not None:
                self._experiment.metrics_keys = []
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if _step(r) < step]
        atomic_write_text(path, _csv_text(fields, rows))


def _step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


def _csv_text(fields: list[str], rows: list[dict[str, Any]]) -> str:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# -- Weights & Biases ------------------------------------------------------------------------
class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` for the run in ``run_dir``.

    Unset, ``name`` is the run folder's name (in a sweep, the trial's subfolder such as
    ``1_strategy.r=8``), ``group`` the sweep's folder (in a sweep), and ``id``
    ``wandb_run_id(run_dir)``: each run and each trial logs into a W&B run of its own, and every
    attempt of one run (a requeued job, ``ckpt_path=auto``) into the same one. The config it
    records is the one the run used, interpolations resolved (``resolved_config``). Each
    ``ftlight-train`` job finishes its W&B run at its end (``finish_wandb``).
    """

    def __init__(
        self,
        run_dir: str,
        name: str | None = None,
        id: str | None = None,
        group: str | None = None,
        **kwargs: Any,
    ) -> None:
        folder = Path(run_dir)
        super().__init__(
            name=name or folder.name,
            id=id or wandb_run_id(folder),
            group=group or sweep_folder(),
            **kwargs,
        )

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        """Record the config with its interpolations resolved."""
        if isinstance(params, Mapping):
            params = resolved_config(params)
        self._unless_lost(super().log_hyperparams, params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log to W&B while it answers (see ``_unless_lost``)."""
        self._unless_lost(super().log_metrics, metrics, step)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Lightning's (uploads checkpoints with ``log_model``), while W&B answers."""
        self._unless_lost(super().after_save_checkpoint, checkpoint_callback)

    def _unless_lost(self, call: Any, *args: Any) -> None:
        """Make a W&B call; once W&B stops answering, warn once and make no more.

        A scheduler that stops or requeues a job signals every process in it, W&B's service
        process too: the run must still reach its next step and checkpoint.
        """
        if getattr(self, "_lost", False):
            return
        try:
            call(*args)
        except OSError as err:  # the service's connection lost (ConnectionResetError...)
            self._lost = True
            log.warning("W&B stopped answering (%s); this attempt logs no more to W&B", err)


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of the run in ``run_dir``: ``$FTLIGHT_WANDB_ID`` (a sweep's trial adds
    ``-<its number>``), else one derived from the folder's absolute path. Either way every
    attempt of a run gets the same id, and every other run, or trial, another."""
    given = os.environ.get(WANDB_ID_VARIABLE, "").strip()
    if given:
        trial = trial_number()
        raw = f"{given}-{trial}" if trial is not None else given
    else:
        path = str(Path(run_dir).expanduser().resolve())
        raw = "ftlight-" + hashlib.sha1(path.encode()).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")[:64]


def trial_number() -> int | None:
    """This job's number in a Hydra multirun, None outside one."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return int(HydraConfig.get().job.num)


def sweep_folder() -> str | None:
    """The folder of the Hydra multirun this job is a trial of, None outside one."""
    if trial_number() is None:
        return None
    return str(HydraConfig.get().sweep.dir)


def resolved_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (a run's config, secrets masked, interpolations as written) with every
    interpolation resolved, as the run used it.

    An interpolation under a secret's name stays as written (it names where the secret is),
    as does one that cannot be resolved here; a secret value that an interpolation elsewhere
    resolves to is masked.
    """
    cfg = OmegaConf.create(dict(params))
    return redact(_resolved(cfg), secrets_in(cfg))


def _resolved(node: DictConfig | ListConfig) -> Any:
    raw = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, ListConfig):
        return [_resolved_item(node, i, raw[i], False) for i in range(len(node))]
    return {k: _resolved_item(node, k, raw[k], is_secret_key(k)) for k in node.keys()}


def _resolved_item(node: DictConfig | ListConfig, key: Any, raw: Any, secret: bool) -> Any:
    if secret and isinstance(raw, str) and "${" in raw:
        return raw
    try:
        value = node[key]
    except Exception:  # a missing value, a resolver only the job's process has
        return raw
    if isinstance(value, DictConfig | ListConfig):
        return _resolved(value)
    return value


def finish_wandb(outcome: str = "finished") -> None:
    """Finish this process's W&B run, if one is open, as ``finished``, ``failed`` or
    ``preempted`` (stopped with a checkpoint; W&B shows it as preempted until an attempt
    resumes it). A later ``WandbLogger`` in the process then starts a run of its own."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return
    try:
        if outcome == "preempted":
            run.mark_preempting()
        run.finish(exit_code=0 if outcome == "finished" else 1)
    except Exception as err:  # its service stopped with the job: the run's own files hold all
        log.warning("could not finish the W&B run (%s)", err)
        with contextlib.suppress(Exception):
            wandb.teardown()
