"""Mistakes that surface inside Hydra (composing the config, resolving it, creating the run
folder, launching a sweep) reported like ftlight's own errors: one message, exit status 2.

Hydra prints such errors itself, some with a traceback, and exits 1. ``HYDRA_FULL_ERROR=1``
is its documented switch for letting them through to the caller; a user who set it still
gets Hydra's full traceback.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from ftlight.errors import FtlightError
from ftlight.speed.plan import SWITCHES

_STORAGE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}
_STORAGE |= {errno.EEXIST, errno.ELOOP}
"""What a folder the run cannot write looks like: no permission, read-only, full, not a folder."""


def run_reporting(main: Callable[[], Any], prog: str) -> Any:
    """Run a Hydra ``main`` and turn an input mistake into ``prog: <message>`` and exit 2."""
    wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing and exiting 1
    try:
        return main()
    except Exception as err:
        message = None if wants_trace else describe(err)
        if message is None:
            raise
        print(f"{prog}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if not wants_trace:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def describe(err: BaseException) -> str | None:
    """The message for a user's mistake, or None when ``err`` is not one (a bug: traceback)."""
    if isinstance(err, FtlightError):
        return str(err)
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        return _missing_option(err.missing_cfg_file, list(err.options or []))
    if isinstance(err, OverrideParseException):
        first = err.message.strip().splitlines()[0]
        return (
            f"cannot read the override {err.override!r} ({first}). Quote a value that holds "
            "commas, brackets or spaces: key='a, b'; see "
            "https://hydra.cc/docs/advanced/override_grammar/basic/"
        )
    if isinstance(err, ConfigCompositionException):
        cause = err.__cause__
        if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
            return _not_in_struct(err, cause)
        return str(err).strip().replace("\n", " ")
    if isinstance(err, OmegaConfBaseException):
        from ftlight.validate.keys import interpolation_message

        return interpolation_message(err)
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in _STORAGE:
            where = link.filename or "a file of the run"
            return (
                f"cannot write {where} ({link.strerror or link}). The run folder must be a "
                "folder you can write, on a disk with room: choose another with "
                "hydra.run.dir=<folder> (hydra.sweep.dir=<folder> for -m), or fix its "
                "permissions"
            )
    return None


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = err
    while link is not None and link not in seen:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


def _missing_option(missing: str, options: list[str]) -> str:
    group, _, name = missing.rpartition("/")
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    near = f" (did you mean {group}={close[0]}?)" if close else ""
    known = ", ".join(options) or "none"
    return f"{group}={name} is not a choice{near}; use one of {known}"


def _not_in_struct(err: ConfigCompositionException, cause: OmegaConfBaseException) -> str:
    key = str(getattr(cause, "key", ""))
    full = str(getattr(cause, "full_key", key))
    parent = getattr(cause, "parent_node", None)
    path = full.rpartition(".")[0]
    value = re.search(r"use \+\S+?=(.*)$", str(err).strip())
    given = f"{full}={value.group(1)}" if value else full
    from ftlight.validate.keys import options_of, unknown_key_message

    options = options_of(parent) if parent is not None and "_target_" in parent else None
    if options is not None:
        return unknown_key_message(path, key, parent, options, value.group(1) if value else "")
    if not path and key in SWITCHES:  # top-level keys before the speed group
        setting = f"={value.group(1)}" if value else ""
        return (
            f"{given}: the speed switches are in the speed group now; use speed.{key}{setting} "
            "(speed=plain turns every speed part off)"
        )
    keys = sorted(str(k) for k in (parent or {}) if not str(k).startswith("_"))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    near = f" (did you mean {path + '.' if path else ''}{close[0]}?)" if close else ""
    where = path or "the config"
    return f"{given}: {where} has no key {key!r}{near}; its keys are {', '.join(keys)}"
