"""Secrets stay out of files: settings whose names look like credentials are masked.

One rule for everything ftlight writes (Hydra's ``.hydra/*.yaml`` and a sweep's
``multirun.yaml``, the hyper-parameters sent to loggers, the model card, ``metrics.json``, every
log record): a value under a key such as ``api_key``,
``hf_token``, ``access_token``, ``secret`` or ``password`` is replaced by ``MASK``; so is
the value of a ``key=value`` override naming such a key, and any other text that contains one
of those values. Keys that merely mention tokens (``max_new_tokens``, ``pad_token_id``,
``tokenizer``, ``eos_token``) are ordinary settings.

The rule and the masking of values live in ``ftlight.redact_values``, the rewriting of Hydra's
YAML files in ``ftlight.redact_files``; the masking of log records and the Hydra callback here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ftlight.redact_files import redact_yaml_file, redact_yaml_files, redacted_yaml
from ftlight.redact_values import (
    MASK,
    MIN_SCRUB_LENGTH,
    is_secret_key,
    masked_override,
    redact,
    redact_text,
    secrets_in,
)

__all__ = [
    "MASK",
    "SecretMasking",
    "is_secret_key",
    "masked_logs",
    "masked_override",
    "redact",
    "redact_yaml_file",
    "redact_yaml_files",
    "redacted_yaml",
    "secrets_in",
]


#: the secrets of every ``masked_logs`` block now open (a sweep's, then its trial's)
_LOGGED_SECRETS: list[frozenset[str]] = []


def _masked_record_factory(base: Callable[..., logging.LogRecord]) -> Callable:
    """A ``LogRecord`` factory over ``base`` whose records' text has every open secret masked.

    At the record's creation rather than in a handler's filter: Hydra replaces the handlers
    (its own, then each job's ``ftlight.log``) and a filter would go with them.
    """

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        if not _LOGGED_SECRETS:
            return record
        known = set().union(*_LOGGED_SECRETS)
        scrub = sorted((s for s in known if len(s) >= MIN_SCRUB_LENGTH), key=len, reverse=True)
        message = record.getMessage()
        clean = redact_text(message, scrub, by_key=True)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:  # the traceback's text, formatted now, masked once
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact_text(text, scrub, by_key=True)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, scrub, by_key=True)
        return record

    make.ftlight_masks = True  # type: ignore[attr-defined]
    return make


@contextlib.contextmanager
def masked_logs(secrets: Collection[str] = ()) -> Iterator[None]:
    """Every log record made in the block has ``secrets`` (and any secret ``key=value``
    assignment) masked, whichever handler writes it: the console, Hydra's ``ftlight.log``."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "ftlight_masks", False):
        logging.setLogRecordFactory(_masked_record_factory(factory))
    entry = frozenset(secrets)
    _LOGGED_SECRETS.append(entry)
    try:
        yield
    finally:
        _LOGGED_SECRETS.remove(entry)


class SecretMasking(Callback):
    """The Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``) that keeps secrets out
    of what Hydra writes outside the run folder's ``.hydra/``.

    A sweep's log records (the launcher lists each trial's overrides) and each job's (its
    ``ftlight.log``) are masked while they are made; ``multirun.yaml``, which Hydra saves with
    every override as given, is rewritten masked when the first trial starts and again at the
    end. Listed first among the callbacks, its masking covers what the others log.
    """

    def __init__(self) -> None:
        self._sweep = contextlib.ExitStack()
        self._job = contextlib.ExitStack()

    def __getstate__(self) -> dict[str, Any]:
        """Nothing of this process's masking travels: a launcher such as submitit pickles the
        callbacks with each trial, and the trial's process masks its own records."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Mask the sweep's secrets in every record until it ends."""
        self._sweep.enter_context(masked_logs(secrets_in(config)))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Mask the job's secrets in its records; mask ``multirun.yaml`` (saved by now)."""
        secrets = secrets_in(config)
        self._job.enter_context(masked_logs(secrets))
        if config.hydra.get("mode") == RunMode.MULTIRUN:
            redact_yaml_file(Path(config.hydra.sweep.dir) / "multirun.yaml", secrets)

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Stop masking the job's secrets (a sweep's next trial has its own)."""
        self._job.close()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Mask ``multirun.yaml`` once more (a launcher that ran no trial here), then stop."""
        redact_yaml_file(Path(config.hydra.sweep.dir) / "multirun.yaml", secrets_in(config))
        self._sweep.close()
