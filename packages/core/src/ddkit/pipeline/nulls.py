"""``None`` in a saved config: TOML has no null, so a parameter set to None is written as ``"none"``.

A missing key means "the factory's default", so dropping a None loses it wherever the default
is something else (a sampler's ``lambda_min = None`` walks the whole chain; its default does
not). :func:`write_nulls` writes such a None as the string ``"none"``; :func:`read_nulls` turns
``"none"`` back into None for a parameter that cannot take ``"none"`` as a value in its own right:
one whose default is not a string, or whose annotation admits None and no free ``str``
(``lambda_min: float | Literal["auto"] | None = "auto"``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["NULL", "read_nulls", "write_nulls"]

#: How a None parameter is written to TOML.
NULL = "none"


def _nullable(factory: Callable[..., Any]) -> set[str]:
    """The parameters whose None must be written out: a default other than None, and no str value "none"."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return set()
    out = set()
    for key, p in params.items():
        if p.default is inspect.Parameter.empty or p.default is None:
            continue
        if not isinstance(p.default, str):
            out.add(key)
            continue
        hint = p.annotation if isinstance(p.annotation, str) else repr(p.annotation)
        if re.search(r"\bNone\b", hint) and not re.search(r"(?<![\w\[\"'])str\b", hint):
            out.add(key)
    return out


def write_nulls(params: Mapping[str, Any], factory: Callable[..., Any] | None) -> dict[str, Any]:
    """``params`` for TOML: None kept as ``"none"`` where the default is not None, else left out."""
    nullable = _nullable(factory) if factory is not None else set()
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            if key in nullable:
                out[key] = NULL
            continue
        out[key] = value
    return out


def read_nulls(params: dict[str, Any], factory: Callable[..., Any]) -> None:
    """Turn ``"none"`` back into None, in place, for the parameters that cannot mean the string."""
    nullable = _nullable(factory)
    for key, value in list(params.items()):
        if value == NULL and key in nullable:
            params[key] = None
