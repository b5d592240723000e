"""``None`` in a saved config: TOML has no null, so a parameter set to None is written as ``"none"``.

A missing key means "the factory's default", so dropping a None loses it wherever the default
is something else (a sampler's ``lambda_min = None`` walks the whole chain; its default does
not). :func:`write_nulls` writes such a None as the string ``"none"``; :func:`read_nulls` turns
``"none"`` back into None for a parameter whose default is not a string (where ``"none"``
could be a value in its own right).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["NULL", "read_nulls", "write_nulls"]

#: How a None parameter is written to TOML.
NULL = "none"


def _defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def write_nulls(params: Mapping[str, Any], factory: Callable[..., Any] | None) -> dict[str, Any]:
    """``params`` for TOML: None kept as ``"none"`` where the default is not None, else left out."""
    defaults = _defaults(factory) if factory is not None else {}
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            if key in defaults and defaults[key] is not None and not isinstance(defaults[key], str):
                out[key] = NULL
            continue
        out[key] = value
    return out


def read_nulls(params: dict[str, Any], factory: Callable[..., Any]) -> None:
    """Turn ``"none"`` back into None, in place, for parameters whose default is not a string."""
    defaults = _defaults(factory)
    for key, value in list(params.items()):
        if value == NULL and key in defaults and not isinstance(defaults[key], str):
            params[key] = None
