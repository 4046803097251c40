"""Which settings hold credentials, and their values masked in configs, documents and text."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

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
MIN_SCRUB_LENGTH = 4
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


def is_reference(value: Any) -> bool:
    """An interpolation such as ``${oc.env:HF_TOKEN}`` names where a secret is, not the secret."""
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def _plain(obj: Any) -> Any:
    """OmegaConf containers as plain ones, interpolations left unresolved."""
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=False)
    return obj


def walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every (path, key, value) of a nested mapping/list; list items have key None."""
    obj = _plain(obj)
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            sub = f"{path}.{key}" if path else str(key)
            yield sub, key, value
            yield from walk(value, sub)
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            sub = f"{path}[{i}]"
            yield sub, None, value
            yield from walk(value, sub)


def secrets_in(obj: Any) -> set[str]:
    """The secret values a config (or overrides list, or YAML document) holds, as text."""
    found: set[str] = set()
    plain = _plain(obj)
    for path, key, value in walk(plain):
        if is_secret_key(key) and isinstance(value, str | int) and not isinstance(value, bool):
            if not is_reference(value):
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
                if is_secret_key(match["key"]) and not is_reference(match["value"]):
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
    scrub = sorted((s for s in secrets if len(s) >= MIN_SCRUB_LENGTH), key=len, reverse=True)
    return _redact(plain, scrub, by_key)


def _redact(obj: Any, scrub: list[str], by_key: bool) -> Any:
    obj = _plain(obj)  # an OmegaConf node inside plain containers: never resolve it
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            hide = by_key and is_secret_key(key) and value not in (None, "")
            out[key] = MASK if hide and not is_reference(value) else _redact(value, scrub, by_key)
        return out
    if isinstance(obj, list | tuple):
        return [_redact(v, scrub, by_key) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, scrub, by_key)
    return obj


def redact_text(text: str, scrub: list[str], by_key: bool) -> str:
    """``text`` with secret assignments and known secret values masked."""
    if by_key and "=" in text:

        def mask(match: re.Match) -> str:
            key, value = match["key"], match["value"]
            if is_secret_key(key) and not is_reference(value):
                quotes = value[len(value.rstrip("'\"")) :]  # a shell-quoted override keeps it
                return f"{key}={MASK}{quotes}"
            return match[0]

        text = _ASSIGNMENT.sub(mask, text)
    for secret in scrub:
        text = text.replace(secret, MASK)
    return text


def masked_override(override: str) -> str:
    """A ``key=value`` override with a secret's value replaced by ``MASK`` (a reference such as
    ``${oc.env:HF_TOKEN}`` is kept: it names where the secret is)."""
    key, sep, value = override.partition("=")
    if sep and value and is_secret_key(key.lstrip("+~")) and not is_reference(value):
        return f"{key}={MASK}"
    return override
