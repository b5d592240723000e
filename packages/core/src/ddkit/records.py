"""The record a plugin hook returns for each implementation it provides."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["KINDS", "Record"]

#: The kinds of component a plugin can provide, in the order they are listed.
KINDS: tuple[str, ...] = (
    "schedule",
    "parameterization",
    "model",
    "sampler",
    "guidance",
    "resampler",
    "autoencoder",
)


@attrs.frozen
class Record:
    """One named implementation: what ``ddkit.create(kind, name)`` builds.

    ``factory`` is a callable returning a ready instance, or a ``"module:attribute"``
    string that is imported only on first use, so that listing plugins stays cheap.

    .. versionadded:: 0.1.0
    """

    name: str = attrs.field()
    factory: Callable[..., Any] | str = attrs.field()
    summary: str = attrs.field()
    paper: str = attrs.field(default="", kw_only=True)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not value or value != value.strip().lower() or ":" in value or " " in value:
            raise ValueError(
                f"plugin name must be non-empty, lower-case, without spaces or ':' (got {value!r})"
            )

    @factory.validator
    def _check_factory(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, str):
            if value.count(":") != 1 or not all(value.split(":")):
                raise ValueError(
                    f"a string factory must look like 'package.module:attribute' (got {value!r})"
                )
        elif not callable(value):
            raise TypeError(f"factory must be callable or a 'module:attribute' string (got {value!r})")
