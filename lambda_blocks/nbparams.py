"""Validation of notebook ``parameters`` cells.

papermill injects whatever ``-p name value`` it is given, silently, so every notebook validates its
parameters in the cell right after the ``parameters`` cell::

    params = validate_notebook("10_train_inpaint", globals())

which rejects unknown names (a typo such as ``-p sede 1`` is an error, not a silently ignored
value), wrong types, and values outside their allowed set, before any work starts.
"""
from __future__ import annotations

import types

from .config import PRESETS  # noqa: E402  (one list of presets)


def _csv_of(allowed=None, cast=str, every=None):
    """A comma-separated list; ``"all"`` means ``every()`` (e.g. every registered mixer, in order)."""

    def check(name, value):
        if not isinstance(value, str):
            raise TypeError(f"parameter {name!r} must be a comma-separated string, got {type(value).__name__}")
        if every is not None and value.strip() == "all":
            return list(every())
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise ValueError(f"parameter {name!r} is empty")
        try:
            items = [cast(v) for v in items]
        except ValueError as exc:
            raise ValueError(f"parameter {name!r}: {exc}") from exc
        if allowed is not None:
            bad = [v for v in items if v not in allowed()]
            if bad:
                raise ValueError(f"parameter {name!r}: unknown value(s) {bad}; choose from {sorted(allowed())}")
        return items

    return check


def _arms():
    from .unet import ARMS

    return set(ARMS)


def _sizes():
    from .unet import SIZES

    return set(SIZES)


def _variants():
    from .layers import list_attention

    return set(list_attention())


def _every_mixer():
    from .layers import mixers

    return mixers()


def _every_variant_arm():
    from .unet import variant_arm_names

    return variant_arm_names()


def _one_of(allowed):
    def check(name, value):
        vals = allowed() if callable(allowed) else allowed
        if value not in vals:
            raise ValueError(f"parameter {name!r}={value!r}; choose one of {sorted(vals)}")
        return value

    return check


# notebook -> parameter -> (type, extra check or None)
SCHEMAS: dict[str, dict[str, tuple[type, object]]] = {
    "10_train_inpaint": {
        "preset": (str, _one_of(PRESETS)),
        "arm": (str, _one_of(_arms)),
        "size": (str, _one_of(_sizes)),
        "seed": (int, None),
        "out_root": (str, None),
        "overrides": (str, None),
    },
    "20_profile": {
        "preset": (str, _one_of(PRESETS)),
        "mode": (str, _one_of(("block", "unet"))),
        "variants": (str, _csv_of(_variants, every=_every_mixer)),
        "arms": (str, _csv_of(_arms, every=_every_variant_arm)),
        "sizes": (str, _csv_of(cast=int)),
        "unet_sizes": (str, _csv_of(_sizes)),
        "unet_image_size": (int, None),
        "width": (int, None),
        "threads": (int, None),
        "out_dir": (str, None),
        "out_root": (str, None),
    },
    "40_distillation": {
        "preset": (str, _one_of(PRESETS)),
        "arm": (str, _one_of(_arms)),
        "size": (str, _one_of(_sizes)),
        "seed": (int, None),
        "kd": (bool, None),
        "weighting": (str, _one_of(("adaptive", "fixed"))),
        "out_root": (str, None),
        "overrides": (str, None),
    },
    "30_quality_vs_size": {"preset": (str, _one_of(PRESETS)), "root": (str, None)},
    "90_paper_figures": {"preset": (str, _one_of(PRESETS)), "root": (str, None)},
    "00_lambda_walkthrough": None,  # the fields of explain.WalkthroughParams (built on first use)
}


def _schema(notebook: str) -> dict:
    if SCHEMAS[notebook] is None:  # names and types here; explain.validate_params checks the ranges
        import dataclasses
        import typing

        from .explain import WalkthroughParams

        hints = typing.get_type_hints(WalkthroughParams)
        SCHEMAS[notebook] = {f.name: (hints[f.name], None) for f in dataclasses.fields(WalkthroughParams)}
    return SCHEMAS[notebook]
_IGNORED = {"In", "Out", "exit", "quit", "get_ipython", "open"}


def validate_notebook(notebook: str, namespace: dict) -> dict:
    """Check the parameters found in ``namespace`` (a notebook's globals) against the schema.

    Returns the validated parameters (comma-separated strings parsed into lists).
    """
    if notebook not in SCHEMAS:
        raise KeyError(f"no parameter schema for notebook {notebook!r}; known: {sorted(SCHEMAS)}")
    schema = _schema(notebook)
    names = {
        k for k, v in namespace.items()
        if not k.startswith("_") and k not in _IGNORED and not isinstance(v, (types.ModuleType, types.FunctionType, type))
    }
    unknown = sorted(names - set(schema))
    if unknown:
        raise NameError(f"{notebook}: unknown parameter(s) {unknown}; valid parameters: {sorted(schema)}")
    missing = sorted(set(schema) - names)
    if missing:
        raise NameError(f"{notebook}: parameter(s) {missing} missing from the parameters cell")
    out = {}
    for name, (typ, check) in schema.items():
        value = namespace[name]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise TypeError(f"{notebook}: parameter {name!r} must be {typ.__name__}, got {type(value).__name__} {value!r}")
        out[name] = check(name, value) if check else value
    return out
