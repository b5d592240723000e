"""The ddkit plugin module of ddkit_models: the records it registers."""

from __future__ import annotations

from ddkit import Record, hookimpl

DDKIT_PLUGIN_API = "1.0"


@hookimpl
def ddkit_models() -> list[Record]:
    return []
