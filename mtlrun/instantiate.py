"""Build objects from ``_target_`` config nodes, after checking the node against the target's signature.

Hydra's ``_target_`` is the only registry. Before building, every key of the node is checked against the
parameters of the target: an unknown key (a typo) or a value of the wrong type fails with a message that
names the config path, the key, and the accepted keys, rather than a TypeError deep inside a constructor.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from mtlrun.errors import ConfigError, MtlrunError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def resolve_target(node: DictConfig, where: str) -> Any:
    if node is None or "_target_" not in node:
        raise ConfigError(f"{where}: missing _target_ (the class or function to build)")
    try:
        return get_object(node._target_)
    except Exception as err:
        raise ConfigError(f"{where}._target_: cannot import '{node._target_}' ({err})") from None


def _hints(target: Any) -> dict[str, Any]:
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn)
    except Exception:
        return {}


def _matches(value: Any, hint: Any) -> bool:
    """A lenient isinstance for the annotation kinds configs use; unknown annotations always match."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if value is None:
        return False
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, ListConfig | list | tuple):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(_matches(v, args[0]) for v in value)
    if (
        origin is dict
        or hint is dict
        or origin is typing.Mapping
        or str(origin) == "<class 'collections.abc.Mapping'>"
    ):
        return isinstance(value, DictConfig | dict)
    return True


def check_node(node: DictConfig, where: str, runtime: set[str] = frozenset()) -> Any:
    """Check a ``_target_`` node's keys and value types against its target; return the target."""
    target = resolve_target(node, where)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return target
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _hints(target)
    named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]
    settable = [n for n in named if n not in runtime]
    for key in node:
        if key in HYDRA_KEYS:
            continue
        if key in runtime:
            raise ConfigError(f"{where}.{key}: set by mtlrun at run time; remove it from the config")
        if key not in params:
            if accepts_any:
                continue
            close = difflib.get_close_matches(str(key), settable, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"{where}.{key}: unknown option for {node._target_}; {hint}"
                f"valid options: {', '.join(settable) or '(none)'}"
            )
        value = OmegaConf.to_object(node[key]) if OmegaConf.is_config(node[key]) else node[key]
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(
                f"{where}.{key}: expected {_describe(hints[key])}, got {value!r} ({type(value).__name__})"
            )
    partial = node.get("_partial_", False)
    if not partial:
        missing = [
            n
            for n in named
            if params[n].default is inspect.Parameter.empty and n not in node and n not in runtime
        ]
        if missing:
            raise ConfigError(f"{where}: missing required option(s) {missing} for {node._target_}")
    return target


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def build(node: DictConfig, where: str, **runtime: Any) -> Any:
    """Check ``node`` (see `check_node`) and instantiate it with the run-time arguments."""
    check_node(node, where, set(runtime))
    try:
        if not runtime:
            return instantiate(node, _convert_="all")
        # Pass run-time objects to the call itself: merging them into the config would turn dataclass
        # instances (tasks) into config nodes.
        return instantiate(node, _partial_=True, _convert_="all")(**runtime)
    except InstantiationException as err:  # Hydra wraps what the target raised; a user's error stays one
        if isinstance(err.__cause__, MtlrunError):
            raise err.__cause__ from None
        raise
