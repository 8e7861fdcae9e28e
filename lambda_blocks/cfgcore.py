"""The strict config engine shared by every config in the package (experiments in ``config``, the
autoencoder in ``autoencoder``): type checks that do not convert silently, the canonical JSON and
its content hash, and the ``--set KEY=VALUE`` / overrides-string parsers.

A leaf module: it imports nothing from the package, so any config module can use it without a
cycle.
"""
from __future__ import annotations

import hashlib
import json
import types
import typing
from typing import Any, Mapping

__all__ = ["type_ok", "type_name", "coerce", "check_choice", "canonical", "content_hash", "parse_value",
           "parse_sets", "parse_overrides", "strict_values"]


def type_ok(value: Any, tp: Any) -> bool:
    """Strict check: bool is not int, int is accepted for float, None only for Optional."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    if tp is tuple or origin is tuple:
        return isinstance(value, (tuple, list))
    return True


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any) -> Any:
    """The two conversions a strict config allows: int -> float for a float field, list -> tuple."""
    if tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType) and float in typing.get_args(tp)):
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
    if isinstance(value, list) and (typing.get_origin(tp) is tuple or tp is tuple):
        return tuple(value)
    return value


def check_choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r}; choose one of {list(allowed)}")


def strict_values(values: Mapping[str, Any], types_: Mapping[str, Any], what: str = "config") -> dict:
    """``values`` checked against the field types ``types_`` (unknown key: KeyError listing the valid
    ones; wrong type: TypeError) and coerced (``coerce``)."""
    out = {}
    for k, v in values.items():
        if not isinstance(k, str) or k not in types_:
            raise KeyError(f"unknown {what} key {k!r}; valid keys: {', '.join(sorted(types_))}")
        tp = types_[k]
        if not type_ok(v, tp):
            raise TypeError(f"{k} must be {type_name(tp)}, got {type(v).__name__} {v!r}")
        out[k] = coerce(v, tp)
    return out


def canonical(obj: Any) -> Any:
    """JSON-ready form whose text is stable: floats by ``repr`` (so 1e-3 and 0.001 hash alike)."""
    if isinstance(obj, float):
        return {"__float__": repr(obj)}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj


def content_hash(d: Mapping[str, Any]) -> str:
    """sha1 of the canonical JSON of ``d`` (sorted keys, floats by repr), first 10 hex digits."""
    text = json.dumps(canonical(dict(d)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def parse_value(text: str) -> Any:
    """CLI ``--set key=value`` value: JSON if it parses (numbers, true/false/null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def parse_sets(items) -> dict:
    """CLI ``--set KEY=VALUE`` items -> an overrides dict (values as ``parse_value``; keys are checked
    later by whoever resolves the config). ValueError names an item without ``=``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def parse_overrides(overrides: Mapping[str, Any] | str | None) -> dict:
    """Overrides from a dict, a JSON object string, or ``"key=value; key=value"`` (values as in
    ``parse_value``); ``None`` / ``""`` -> ``{}``. Keys are checked later by whoever resolves them."""
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if not isinstance(overrides, str):
        raise TypeError(f"overrides must be a dict or a string, got {type(overrides).__name__}")
    try:
        val = json.loads(overrides)
    except json.JSONDecodeError:
        val = None
    if isinstance(val, dict):
        return val
    out = {}
    for part in overrides.split(";"):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"override {part!r} is not key=value (separate several with ';')")
        k, v = part.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out
