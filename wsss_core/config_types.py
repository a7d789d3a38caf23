"""Typed conversion of params.yaml mappings to the dataclasses of wsss_core.config: an unknown
key, a wrong type or a value outside a `Literal` is one ConfigError line naming the key and what
is allowed (also used for `train.method_options` by the registry)."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal

from .errors import ConfigError

PARAMS_FILE = "params.yaml"


def _check(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{PARAMS_FILE}: {where}: {problem}")


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            type(None): "null"}.get(tp, str(tp))


def _convert(tp, value, where: str, source: str):
    origin = typing.get_origin(tp)
    fail = ConfigError(f"{source}: {where}: expected {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(option, value, where, source)
            except ConfigError:
                continue
        raise fail
    if origin is list:
        if not isinstance(value, list):
            raise fail
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if tp is dict:  # free-form options, checked by whoever consumes them
        if not isinstance(value, dict):
            raise fail
        return value
    if tp is type(None):
        if value is not None:
            raise fail
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise fail
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")


def _build(cls, raw, where: str, source: str):
    label = where or "top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {label}: expected a mapping, got {raw!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in fields:
            dotted = f"{where}.{key}" if where else str(key)
            raise ConfigError(
                f"{source}: unknown key '{dotted}' (allowed: {', '.join(fields)})"
            )
    obj = cls(**_convert_values(cls, raw, where, source))
    if hasattr(obj, "validate"):
        obj.validate(where or "params")
    return obj



def _convert_values(cls, raw: dict, where: str, source: str) -> dict:
    """The entries of `raw` converted to the types of `cls`'s fields (keys already checked)."""
    hints = typing.get_type_hints(cls)
    return {name: _convert(hints[name], value, f"{where}.{name}" if where else name, source)
            for name, value in raw.items()}


def convert_fields(cls, raw: dict, where: str, owner: str = "", source: str = PARAMS_FILE) -> dict:
    """Check a free-form mapping (e.g. `train.method_options`) against the fields of dataclass
    `cls`: an unknown key or a value of the wrong type is a one-line ConfigError naming the key
    path `<where>.<key>` (and `owner`, e.g. "method 'cdl_b'"). Returns the converted values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {raw!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in fields:
            of = f" of {owner}" if owner else ""
            raise ConfigError(f"{source}: {where}.{key}: unknown key{of} (allowed: "
                              f"{', '.join(fields)})")
    return _convert_values(cls, raw, where, source)
