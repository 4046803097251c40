"""Perplexity on general text before and after training: how much a fine-tune forgets.

``eval.general`` names the text: ``builtin`` (a few KB of everyday English prose shipped with
ftlight, ``general_text.yaml``), a UTF-8 text file, or null (off). The text is cut into
windows of ``data.max_length`` tokens and scored with the task's own loss in each evaluation,
before and after training, as ``general/loss`` and ``general/perplexity``; windows are cut to
the model's position limit where that is shorter. Only tasks whose model predicts tokens can be
scored this way (``Task.text_rows``); others skip it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from ftlight.errors import ConfigError
from ftlight.validate.positions import model_limit

log = logging.getLogger("ftlight")

BUILTIN = "builtin"
"""``eval.general`` value of the shipped sample."""

SAMPLE = Path(__file__).with_name("general_text.yaml")
"""The shipped sample: original prose, public domain (CC0)."""

WINDOW = 512
"""Tokens per scored window when ``data.max_length`` is not set."""


class GeneralText:
    """The general text of a run (``eval.general``), scored in each evaluation."""

    def __init__(self, text: str | None, source: str) -> None:
        self.text = text
        self.source = source
        self._noted = False  # the "not measured for this task" note is logged once

    @classmethod
    def from_setting(cls, setting: Any) -> GeneralText:
        """Read ``eval.general``: null or false (off), ``builtin``, or a text file's path."""
        if setting in (None, False, "", "null", "none", "off"):
            return cls(None, "off")
        if setting == BUILTIN:
            return cls(str(yaml.safe_load(SAMPLE.read_text())["text"]), "built-in sample")
        path = Path(str(setting)).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"eval.general={setting!r}: no such file (looked in {path.resolve()}); give a "
                "UTF-8 text file, eval.general=builtin for the shipped sample, or "
                "eval.general=null to measure no general text"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"eval.general={setting!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                "save it as UTF-8 or use eval.general=builtin"
            ) from None
        if not text.strip():
            raise ConfigError(
                f"eval.general={setting!r} is empty; give a file with a few KB of text or use "
                "eval.general=builtin"
            )
        return cls(text, str(path))

    def scores(self, run: Any) -> dict[str, float]:
        """``general/loss`` and ``general/perplexity`` of the run's model as it is now; empty
        when off, or when the task's model does not predict tokens."""
        if self.text is None:
            return {}
        window = run.data.max_length or WINDOW
        limit = model_limit(run.module.model)
        if limit is not None and limit < window:  # a window past the limit cannot be scored
            window = limit
        rows = run.task.text_rows(self.text, run.tokenizer, window)
        if not rows:
            if not self._noted:
                self._noted = True
                log.info(
                    "eval.general: skipped for task=%s, whose model does not predict tokens "
                    "(no perplexity to measure); set eval.general=null to silence this",
                    run.task.name,
                )
            return {}
        values = score_rows(run, rows)
        return {f"general/{k}": values[k] for k in ("loss", "perplexity") if k in values}


def score_rows(
    run: Any, rows: list[dict[str, Any]], split: str = "validation", phase: str | None = None
) -> dict[str, float]:
    """The task's metrics of the run's model on ``rows`` (encoded like the rows of ``split``).

    They go through ``run.evaluate`` exactly as the split would, with nothing logged: the
    run's loggers and its validation-loss history keep only the run's own evaluations.
    """
    trainer, data = run.trainer, run.data
    saved_rows, loggers = data.encoded[split], trainer.loggers
    histories = [
        (cb.val_losses, list(cb.val_losses))
        for cb in trainer.callbacks
        if isinstance(getattr(cb, "val_losses", None), list)
    ]
    data.encoded[split] = rows
    trainer.loggers = []
    try:
        return run.evaluate(split, phase=phase)  # phase: keep its predictions file
    finally:
        data.encoded[split] = saved_rows
        trainer.loggers = loggers
        for history, kept in histories:
            history[:] = kept
