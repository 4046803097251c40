"""Every ``_target_`` node against its constructor: no key it does not take, no value of a type
it does not take; and every interpolation resolves.

Hydra reports these only when it builds the object, as the constructor's ``TypeError`` (or a
library's error much later, once weights are loaded) without naming the key.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import types
import typing
from typing import Any, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ftlight.errors import ConfigError
from ftlight.validate.common import show

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def check_resolves(cfg: DictConfig) -> None:
    """Every interpolation of the run's config resolves (``${oc.env:...}``, no cycles)."""
    for key in cfg:
        if key == "hydra":  # Hydra resolved what it needed; the rest is its own business
            continue
        try:
            node = cfg._get_node(key)
            if isinstance(node, DictConfig | ListConfig):
                OmegaConf.to_container(node, resolve=True)
            else:
                cfg[key]  # reading a value resolves it
        except OmegaConfBaseException as err:
            raise ConfigError(interpolation_message(err)) from None


def interpolation_message(err: OmegaConfBaseException) -> str:
    """What an interpolation error means, naming the key and the fix."""
    key = getattr(err, "full_key", None) or "a value"
    text = str(getattr(err, "msg", None) or err).strip().splitlines()[0]
    if "Recursive interpolation" in text:
        return (
            f"{key} refers to itself through ${{...}} interpolations, so it has no value; "
            f"set {key} to a value, or point it at another key"
        )
    if "Environment variable" in text:
        name = text.split("'")[1] if text.count("'") >= 2 else "the variable"
        return (
            f"{key} reads the environment variable {name}, which is not set; export {name}=..., "
            f"or give a default: ${{oc.env:{name},<default>}}"
        )
    return f"{key} cannot be resolved ({text}); fix the ${{...}} interpolation in {key}"


def check_signatures(cfg: DictConfig) -> None:
    """Each node with a ``_target_`` holds only keys its constructor takes, of its types."""
    for path, node in _targets(cfg):
        params = _parameters(_target(node))
        if params is None:
            continue
        names, hints, open_ended = params
        plain = OmegaConf.to_container(node, resolve=True)
        for key in node:
            if key in HYDRA_KEYS:
                continue
            if key not in names:
                if not open_ended:
                    given = show(plain[key]).strip("'")
                    raise ConfigError(unknown_key_message(path, key, node, names, given))
                continue
            value = plain[key]
            if OmegaConf.is_missing(node, key) or (isinstance(value, dict) and "_target_" in value):
                continue  # a value the user must give (reported when built); its own node
            hint = hints.get(key, Any)
            if _fits(value, hint) is False:
                raise ConfigError(_type_message(f"{path}.{key}", value, hint, names[key]))


def unknown_key_message(path: str, key: str, node: Any, names: Any, given: str = "") -> str:
    """``path.key`` is no option of the object built at ``path``: say which are, and the near
    one (``given``: the value, as the user wrote it)."""
    options = sorted(str(n) for n in names)
    close = (
        difflib.get_close_matches(str(key), options, n=1, cutoff=0.5)
        or [o for o in options if str(key).startswith(o) or o.startswith(str(key))][:1]
    )
    value = f"={given}" if given else ""
    near = f" (did you mean {path}.{close[0]}{value}?)" if close else ""
    target = node.get("_target_") if hasattr(node, "get") else None
    return (
        f"{path}.{key}{value}: {path} ({target}) has no option {key!r}{near}; its options "
        f"are {', '.join(options)}"
    )


def options_of(node: Any) -> list[str] | None:
    """The keys the constructor at ``node._target_`` takes; None when it takes any keyword."""
    params = _parameters(_target(node))
    return None if params is None or params[2] else list(params[0])


def _targets(node: Any, path: str = "") -> list[tuple[str, DictConfig]]:
    found = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append((path, node))
        for key, value in node.items_ex(resolve=False):
            if not (path == "" and key == "hydra"):
                found += _targets(value, f"{path}.{key}".lstrip("."))
    return found


def _target(node: Any) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(str(node.get("_target_")))
    except Exception:  # an unimportable target is reported when it is built
        return None


def _parameters(target: Any) -> tuple[dict[str, Any], dict[str, Any], bool] | None:
    """(name -> default, name -> type hint, takes other keywords) of what ``target`` accepts.

    ftlight's own ``**kwargs`` go to a base class (QLoRAStrategy to LoRAStrategy) or to the
    class a factory ``builds``, so those names count; a third party's ``**kwargs`` may go
    anywhere, so other keys are let through there.
    """
    if target is None or not callable(target):
        return None
    chain = (
        [c.__init__ for c in target.__mro__ if "__init__" in vars(c) and c is not object]
        if isinstance(target, type)
        else [target, *([target.builds] if hasattr(target, "builds") else [])]
    )
    names: dict[str, Any] = {}
    hints: dict[str, Any] = {}
    for fn in chain:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return None
        try:
            found = typing.get_type_hints(fn)
        except Exception:  # a hint that names what only a type checker imports: no types
            found = {}
        for p in params:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name == "self":
                continue
            names.setdefault(p.name, p.default)
            if p.name in found:
                hints.setdefault(p.name, found[p.name])
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names, hints, False
        if not str(getattr(fn, "__module__", "")).startswith("ftlight"):
            return names, hints, True
    return names, hints, not chain


def _fits(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` (plain, from YAML) is of type ``hint``; None when it cannot be told."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        verdicts = [_fits(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (list, tuple, collections.abc.Sequence, set, frozenset):
        if not isinstance(value, list):
            return False
        if base is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return False
            verdicts = [_fits(v, a) for v, a in zip(value, args, strict=True)]
        else:
            verdicts = [_fits(v, args[0]) for v in value] if args else []
        return False if False in verdicts else True
    if base in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return None  # a class YAML cannot spell (a dtype, a module): left to the constructor


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    words = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    if hint is type(None):
        return "null"
    if hint in words:
        return words[hint]
    base = origin or hint
    if base in (list, tuple, collections.abc.Sequence, set, frozenset):
        return "a list"
    if base in (dict, collections.abc.Mapping):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _type_message(key: str, value: Any, hint: Any, default: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return f"{key}={show(value)} is not a choice; use one of " + ", ".join(
            str(a) for a in typing.get_args(hint)
        )
    example = (
        f"; e.g. {key}={show(default).strip(chr(39))}"
        if default is not inspect.Parameter.empty and default is not None
        else ""
    )
    return f"{key}={show(value)} must be {_describe(hint)}{example}"
