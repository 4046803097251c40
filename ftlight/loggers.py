"""A CSV log that a resumed run continues instead of starting over."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ftlight.files import atomic_write_text


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
