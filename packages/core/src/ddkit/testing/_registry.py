"""Fresh, isolated registries and in-memory plugin modules for tests."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ddkit import registry as _registry
from ddkit.hookspecs import HOOK_BY_KIND, hookimpl
from ddkit.records import Record
from ddkit.registry import PLUGIN_API_VERSION, Registry

__all__ = ["fake_plugin", "fresh_registry"]


@contextmanager
def fresh_registry(*, discover: bool = False, builtins: bool = True) -> Iterator[Registry]:
    """Make a new :class:`~ddkit.registry.Registry` the process-wide one until the block ends.

    ``discover=True`` loads the installed entry points (honouring ``DDKIT_PLUGINS`` and
    ``DDKIT_DISABLE_PLUGIN_AUTOLOAD`` as they are now); otherwise the registry holds core's
    built-ins only (or nothing, with ``builtins=False``), so installed plugins cannot leak
    into a test. The previous registry is restored afterwards, even on error.
    """
    if discover:
        registry = Registry.discover()
    else:
        registry = Registry()
        if builtins:
            registry.register_builtins()
    previous = _registry.set_registry(registry)
    try:
        yield registry
    finally:
        _registry.set_registry(previous)


def fake_plugin(
    name: str = "fake_plugin", *, api: str | None = PLUGIN_API_VERSION, **records: Sequence[Record]
) -> types.ModuleType:
    """A plugin module built in memory, with one hook per keyword: ``fake_plugin(sampler=[...])``.

    ``api`` becomes the module's ``DDKIT_PLUGIN_API`` (``None``: declare none).
    """
    module = types.ModuleType(name)
    if api is not None:
        module.DDKIT_PLUGIN_API = api  # type: ignore[attr-defined]
    for kind, batch in records.items():
        if kind not in HOOK_BY_KIND:
            raise ValueError(f"fake_plugin: unknown kind {kind!r} (kinds: {', '.join(HOOK_BY_KIND)})")
        setattr(module, HOOK_BY_KIND[kind], hookimpl(_returning(tuple(batch))))
    return module


def _returning(batch: tuple[Record, ...]) -> Callable[[], list[Record]]:
    def hook() -> list[Record]:
        return list(batch)

    return hook
