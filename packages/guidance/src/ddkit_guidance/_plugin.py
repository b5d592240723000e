"""The ddkit plugin module of ddkit_guidance: the records it registers."""

from __future__ import annotations

from ddkit import Record, hookimpl

DDKIT_PLUGIN_API = "1.0"


@hookimpl
def ddkit_guidances() -> list[Record]:
    return []
