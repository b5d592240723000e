"""Core's own components, registered through the same ``ddkit`` entry-point group as any plugin."""

from __future__ import annotations

from ddkit.hookspecs import hookimpl
from ddkit.records import Record

DDKIT_PLUGIN_API = "1.0"


@hookimpl
def ddkit_schedules() -> list[Record]:
    return []


@hookimpl
def ddkit_parameterizations() -> list[Record]:
    return []


@hookimpl
def ddkit_resamplers() -> list[Record]:
    return []
