"""The plugin registry: discovers plugins, builds components by name, and explains every failure.

Every component, core's own included, comes from a module listed under the ``ddkit``
entry-point group. Loading is wrapped: a plugin that fails to import, whose hook raises, or
that targets another plugin API major version is recorded and warned about instead of
breaking the registry, so ``ddkit plugins`` can show it while every other plugin keeps working.

Environment switches, read when the registry is first used (:func:`reset` re-reads them):

``DDKIT_DISABLE_PLUGIN_AUTOLOAD=1``
    load only core's built-ins (the ``ddkit-core`` entry point).
``DDKIT_PLUGINS=dist-a,dist-b``
    load only these distributions, and core; an empty value loads only core. A name that is
    not installed is warned about with its closest match, and listed by ``ddkit plugins``.

Installed distributions kept out by a switch are listed as ``not-loaded``, and a lookup of a
name they may provide says "installed but not loaded (DDKIT_PLUGINS=...)" rather than "not
installed". A plugin that raises anything while importing or answering its hooks, ``SystemExit``
included (``KeyboardInterrupt`` aside), is recorded as ``broken``.

This module is the public face and holds the process-wide registry; the pieces live in
private modules: ``_discovery`` (entry points and switches), ``_contract`` (what a plugin must
provide), ``_entries`` (what the registry holds and reports), ``_messages`` (its error
messages) and ``_registry`` (the :class:`Registry` itself). Keyword checking is
:mod:`ddkit.params`.
"""

from __future__ import annotations

import threading
from typing import Any

from ddkit.registry._contract import PLUGIN_API_VERSION
from ddkit.registry._discovery import ALLOW_ENV, CORE_DISTRIBUTION, DISABLE_AUTOLOAD_ENV, ENTRY_POINT_GROUP
from ddkit.registry._entries import (
    Description,
    Entry,
    PluginInfo,
    PluginRow,
    PluginWarning,
)
from ddkit.registry._entries import PluginStatus as PluginStatus  # type alias, outside __all__ as before
from ddkit.registry._entries import RowStatus as RowStatus
from ddkit.registry._messages import OFFICIAL_PLUGINS
from ddkit.registry._registry import Registry, pinned_providers

__all__ = [
    "ALLOW_ENV",
    "CORE_DISTRIBUTION",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "OFFICIAL_PLUGINS",
    "PLUGIN_API_VERSION",
    "Description",
    "Entry",
    "PluginInfo",
    "PluginRow",
    "PluginWarning",
    "Registry",
    "create",
    "describe",
    "get_registry",
    "names",
    "pinned_providers",
    "reset",
    "set_registry",
]

_lock = threading.RLock()
_current: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, discovered from entry points on first use and then cached.

    .. versionadded:: 0.1.0
    """
    global _current
    with _lock:
        if _current is None:
            _current = Registry.discover()
        return _current


def set_registry(registry: Registry | None) -> Registry | None:
    """Install ``registry`` as the process-wide one and return the previous one.

    ``None`` makes the next use rediscover plugins.
    """
    global _current
    with _lock:
        previous, _current = _current, registry
    return previous


def reset() -> None:
    """Forget the cached registry, so the next use rediscovers plugins and re-reads the switches."""
    set_registry(None)


def names(kind: str) -> list[str]:
    """The names registered for ``kind``, sorted.

    .. versionadded:: 0.1.0
    """
    return get_registry().names(kind)


def create(kind: str, name: str, /, **params: Any) -> Any:
    """Build the component ``name`` of ``kind`` with keyword ``params`` and return it.

    ``name`` may be qualified as ``distribution:name``. Raises :class:`UnknownPluginError`
    (an unknown kind or name: lists what is available and what to install),
    :class:`PluginConflictError` (two distributions provide ``name``), and ``TypeError`` or
    ``ValueError`` naming the component and the parameter when ``params`` do not fit.

    .. versionadded:: 0.1.0
    """
    return get_registry().create(kind, name, **params)


def describe(kind: str, name: str) -> Description:
    """Summary, distribution, version, paper and parameters of a component (imports its factory).

    .. versionadded:: 0.1.0
    """
    return get_registry().describe(kind, name)
