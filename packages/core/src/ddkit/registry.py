"""Entry-point discovery and name lookup (minimal first version; hardened by the registry work)."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

import pluggy

from ddkit import hookspecs
from ddkit.errors import UnknownPluginError
from ddkit.records import KINDS, Record

__all__ = ["PLUGIN_API_VERSION", "create", "describe", "names"]

PLUGIN_API_VERSION = "1.0"

_manager: pluggy.PluginManager | None = None


def _pm() -> pluggy.PluginManager:
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for ep in entry_points(group="ddkit"):
            pm.register(ep.load(), name=ep.name)
        _manager = pm
    return _manager


def _records(kind: str) -> dict[str, Record]:
    if kind not in KINDS:
        raise UnknownPluginError(f"unknown kind {kind!r}; kinds are: {', '.join(KINDS)}")
    hook = getattr(_pm().hook, hookspecs.HOOK_BY_KIND[kind])
    return {r.name: r for batch in hook() for r in batch}


def names(kind: str) -> list[str]:
    return sorted(_records(kind))


def create(kind: str, name: str, **params: Any) -> Any:
    records = _records(kind)
    if name not in records:
        raise UnknownPluginError(f"no {kind} named {name!r}; available: {', '.join(sorted(records))}")
    factory = records[name].factory
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(**params)


def describe(kind: str, name: str) -> dict[str, Any]:
    return {"summary": _records(kind)[name].summary}
