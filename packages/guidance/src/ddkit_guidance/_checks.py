"""Parameter checks shared by the guidances: each error names the parameter, the rule and the value."""

from __future__ import annotations

import math
from numbers import Real

from ddkit.errors import ConfigError

__all__ = ["check_choice", "check_nonnegative", "check_positive_int", "check_unit_interval"]


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_nonnegative(name: str, value: object) -> float:
    """``value`` as a float, or :class:`ConfigError` unless it is a finite number ≥ 0."""
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 0:  # type: ignore[arg-type]
        raise ConfigError(f"'{name}' must be a finite number ≥ 0 (got {value!r})")
    return float(value)  # type: ignore[arg-type]


def check_unit_interval(name: str, value: object) -> float:
    """``value`` as a float, or :class:`ConfigError` unless it is a number in [0, 1]."""
    if not _is_real(value) or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise ConfigError(f"'{name}' must be a number in [0, 1] (got {value!r})")
    return float(value)  # type: ignore[arg-type]


def check_positive_int(name: str, value: object) -> int:
    """``value``, or :class:`ConfigError` unless it is an int ≥ 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"'{name}' must be a positive int (got {value!r})")
    return value


def check_choice(name: str, value: object, options: tuple[str, ...]) -> str:
    """``value``, or :class:`ConfigError` (with a close match, if any) unless it is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        import difflib

        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"'{name}' must be one of {', '.join(map(repr, options))} (got {value!r}){hint}")
    return value
