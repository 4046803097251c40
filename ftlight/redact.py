"""Secrets stay out of files: settings whose names look like credentials are masked.

One rule for everything ftlight writes (Hydra's ``.hydra/*.yaml`` and a sweep's
``multirun.yaml``, the hyper-parameters sent to loggers, the model card, ``metrics.json``, every
log record): a value under a key such as ``api_key``,
``hf_token``, ``access_token``, ``secret`` or ``password`` is replaced by ``MASK``; so is
the value of a ``key=value`` override naming such a key, and any other text that contains one
of those values. Keys that merely mention tokens (``max_new_tokens``, ``pad_token_id``,
``tokenizer``, ``eos_token``) are ordinary settings.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from ftlight.files import atomic_write_text

log = logging.getLogger("ftlight")

MASK = "***"
"""What a secret value is replaced with."""

#: the last word of a key that names a credential
_SECRET_LAST_WORDS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credential", "credentials"}
)
#: words that make a key secret wherever they stand (``secret_token``, ``password_file``)
_SECRET_ANY_WORDS = frozenset({"secret", "password", "passwd"})
#: ``<word>_token`` names a tokenizer's special token, not a credential
_SPECIAL_TOKENS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask"})
#: shorter secrets are masked under their key only: as substrings they would hit other text
_MIN_SCRUB_LENGTH = 4
#: ``key=value`` inside a string (overrides, Hydra's override_dirname, URL queries)
_ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z_][\w.\-]*)=(?P<value>[^\s,&;]+)")


def is_secret_key(name: object) -> bool:
    """Whether a setting called ``name`` holds a credential (``api_key``, ``hf_token``...)."""
    if not isinstance(name, str):
        return False
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.rsplit(".", 1)[-1])  # camelCase
    words = [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]
    if not words:
        return False
    if _SECRET_ANY_WORDS.intersection(words):
        return True
    if words[-1] not in _SECRET_LAST_WORDS:
        return False
    return not (words[-1] == "token" and len(words) > 1 and words[-2] in _SPECIAL_TOKENS)


def _is_reference(value: Any) -> bool:
    """An interpolation such as ``${oc.env:HF_TOKEN}`` names where a secret is, not the secret."""
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def _plain(obj: Any) -> Any:
    """OmegaConf containers as plain ones, interpolations left unresolved."""
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=False)
    return obj


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every (path, key, value) of a nested mapping/list; list items have key None."""
    obj = _plain(obj)
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            sub = f"{path}.{key}" if path else str(key)
            yield sub, key, value
            yield from _walk(value, sub)
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            sub = f"{path}[{i}]"
            yield sub, None, value
            yield from _walk(value, sub)


def secrets_in(obj: Any) -> set[str]:
    """The secret values a config (or overrides list, or YAML document) holds, as text."""
    found: set[str] = set()
    plain = _plain(obj)
    for path, key, value in _walk(plain):
        if is_secret_key(key) and isinstance(value, str | int) and not isinstance(value, bool):
            if not _is_reference(value):
                found.add(str(value))
            elif isinstance(obj, DictConfig):  # the resolved value, when it can be resolved
                try:
                    resolved = OmegaConf.select(obj, path, throw_on_resolution_failure=True)
                except Exception:  # a missing env var: nothing to hide
                    resolved = None
                if isinstance(resolved, str | int) and not isinstance(resolved, bool):
                    found.add(str(resolved))
        elif isinstance(value, str):
            for match in _ASSIGNMENT.finditer(value):
                if is_secret_key(match["key"]) and not _is_reference(match["value"]):
                    found.add(match["value"])
    return {s for s in found if s and s != MASK}


def redact(obj: Any, secrets: Collection[str] | None = None, by_key: bool = True) -> Any:
    """A plain copy of ``obj`` with every secret masked.

    ``secrets`` are values to mask wherever they appear (default: those ``obj`` itself
    holds). ``by_key=False`` masks only those values, for documents whose keys are not
    settings (metric names).
    """
    plain = _plain(obj)
    if secrets is None:
        secrets = secrets_in(plain)
    scrub = sorted((s for s in secrets if len(s) >= _MIN_SCRUB_LENGTH), key=len, reverse=True)
    return _redact(plain, scrub, by_key)


def _redact(obj: Any, scrub: list[str], by_key: bool) -> Any:
    obj = _plain(obj)  # an OmegaConf node inside plain containers: never resolve it
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            hide = by_key and is_secret_key(key) and value not in (None, "")
            out[key] = MASK if hide and not _is_reference(value) else _redact(value, scrub, by_key)
        return out
    if isinstance(obj, list | tuple):
        return [_redact(v, scrub, by_key) for v in obj]
    if isinstance(obj, str):
        return _redact_text(obj, scrub, by_key)
    return obj


def _redact_text(text: str, scrub: list[str], by_key: bool) -> str:
    """``text`` with secret assignments and known secret values masked."""
    if by_key and "=" in text:

        def mask(match: re.Match) -> str:
            key, value = match["key"], match["value"]
            if is_secret_key(key) and not _is_reference(value):
                quotes = value[len(value.rstrip("'\"")) :]  # a shell-quoted override keeps it
                return f"{key}={MASK}{quotes}"
            return match[0]

        text = _ASSIGNMENT.sub(mask, text)
    for secret in scrub:
        text = text.replace(secret, MASK)
    return text


def redacted_yaml(cfg: DictConfig) -> str:
    """``cfg`` as YAML (interpolations unresolved) with every secret masked."""
    return OmegaConf.to_yaml(OmegaConf.create(redact(cfg, secrets_in(cfg))))


def redact_yaml_files(folder: Path, secrets: Collection[str] = ()) -> list[Path]:
    """Rewrite the YAML files of ``folder`` (Hydra's output subfolder) with secrets masked.

    The secrets of every file count for all of them: ``config.yaml`` holds a value that
    ``hydra.yaml`` repeats inside its override strings. Returns the files rewritten.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    docs = {path: OmegaConf.to_container(OmegaConf.load(path)) for path in folder.glob("*.yaml")}
    found = set(secrets)
    for doc in docs.values():
        found |= secrets_in(doc)
    changed = []
    for path, doc in docs.items():
        clean = redact(doc, found)
        if clean != doc:
            atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(clean)))
            changed.append(path)
    if changed:
        log.info("masked secrets in %s", ", ".join(p.name for p in changed))
    return changed


def masked_override(override: str) -> str:
    """A ``key=value`` override with a secret's value replaced by ``MASK`` (a reference such as
    ``${oc.env:HF_TOKEN}`` is kept: it names where the secret is)."""
    key, sep, value = override.partition("=")
    if sep and value and is_secret_key(key.lstrip("+~")) and not _is_reference(value):
        return f"{key}={MASK}"
    return override


def redact_yaml_file(path: Path, secrets: Collection[str] = ()) -> bool:
    """Rewrite one YAML file (a sweep's ``multirun.yaml``) with secrets masked; whether it
    changed. Every value of a secret setting counts, sweeps (``a,b``) included."""
    path = Path(path)
    if not path.is_file():
        return False
    doc = OmegaConf.to_container(OmegaConf.load(path))
    found = set(secrets) | secrets_in(doc)
    for _, key, value in _walk(doc):  # an override line "+api_key=a,b" sweeps over two secrets
        if key is None and isinstance(value, str):
            name, sep, swept = value.partition("=")
            if sep and is_secret_key(name.lstrip("+~")) and not _is_reference(swept):
                found |= {v for v in swept.split(",") if v and "=" not in v}
    clean = redact(doc, found)
    clean = _mask_override_lines(clean)
    if clean == doc:
        return False
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(clean)))
    log.info("masked secrets in %s", path)
    return True


def _mask_override_lines(obj: Any) -> Any:
    """Lists of override lines with every secret's whole value masked (a sweep's ``a,b``)."""
    if isinstance(obj, Mapping):
        return {k: _mask_override_lines(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [masked_override(v) if isinstance(v, str) else _mask_override_lines(v) for v in obj]
    return obj


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
        scrub = sorted((s for s in known if len(s) >= _MIN_SCRUB_LENGTH), key=len, reverse=True)
        message = record.getMessage()
        clean = _redact_text(message, scrub, by_key=True)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:  # the traceback's text, formatted now, masked once
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = _redact_text(text, scrub, by_key=True)
        if record.stack_info:
            record.stack_info = _redact_text(record.stack_info, scrub, by_key=True)
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
