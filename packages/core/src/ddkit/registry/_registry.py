"""The :class:`Registry`: plugins registered, their records indexed by kind and name, components built."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import types
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

import attrs
import pluggy

from ddkit import hookspecs
from ddkit.errors import (
    DdkitError,
    IncompatiblePluginError,
    InputTypeError,
    PluginConflictError,
    UnknownPluginError,
)
from ddkit.params import check_params, describe_params
from ddkit.records import KINDS
from ddkit.registry import _discovery, _messages
from ddkit.registry._contract import InvalidPlugin, api_problem, collect_records, first_line
from ddkit.registry._discovery import CORE_DISTRIBUTION, Policy, normalize
from ddkit.registry._entries import Description, Entry, PluginInfo, PluginRow, PluginWarning, RowStatus

__all__ = ["Registry", "pinned_providers"]

#: (kind, name) -> the distribution an unqualified lookup of that name must resolve to.
_PINS: contextvars.ContextVar[Mapping[tuple[str, str], str] | None] = contextvars.ContextVar(
    "ddkit_pins", default=None
)


@contextlib.contextmanager
def pinned_providers(providers: Mapping[tuple[str, str], str]) -> Iterator[None]:
    """Resolve each ``(kind, name)`` in ``providers`` from that distribution only, inside the block.

    A provider is a distribution name, optionally with the version it was saved with
    (``"ddkit-samplers==0.1.0"``, used in messages only: any installed version serves).

    A saved pipeline records which distribution provided each part; loading it under these pins
    builds the same parts even when another plugin registers one of the names too, and says
    exactly why when the recorded distribution is missing or not loaded. Names qualified as
    ``distribution:name`` ignore the pins.
    """
    pins = {(kind, name.strip().lower()): dist for (kind, name), dist in providers.items()}
    token = _PINS.set({**(_PINS.get() or {}), **pins})
    try:
        yield
    finally:
        _PINS.reset(token)


class Registry:
    """Every registered plugin's records, indexed by kind and name.

    Most code uses the module functions (:func:`~ddkit.registry.names`,
    :func:`~ddkit.registry.create`, :func:`~ddkit.registry.describe`), which go through the
    cached :func:`~ddkit.registry.get_registry`. Tests build their own registry and
    :meth:`register` objects on it, or use :func:`ddkit.testing.fresh_registry`.

    .. versionadded:: 0.1.0
    """

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: list[PluginInfo] = []
        self._entries: dict[str, dict[str, list[Entry]]] = {kind: {} for kind in KINDS}
        self._unusable_names: dict[tuple[str, str], PluginInfo] = {}
        self._skipped: dict[str, str] = {}
        self._skipped_versions: dict[str, str] = {}
        self._unknown_allowed: dict[str, str | None] = {}

    @classmethod
    def discover(cls, environ: Mapping[str, str] | None = None) -> Registry:
        """A registry loaded from the installed entry points, honouring the environment switches."""
        registry = cls()
        registry.load_entry_points(os.environ if environ is None else environ)
        return registry

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The underlying pluggy manager, for hooks beyond the per-kind record hooks."""
        return self._pm

    @property
    def plugins(self) -> tuple[PluginInfo, ...]:
        """Every plugin registered so far, in load order, whatever its status."""
        return tuple(self._plugins)

    @property
    def skipped(self) -> Mapping[str, str]:
        """Installed distributions that were not loaded, with the switch and how to load them.

        Each reason finishes "installed but ...": ``not loaded (DDKIT_PLUGINS=a): add b to DDKIT_PLUGINS``.
        """
        return types.MappingProxyType(self._skipped)

    @property
    def unknown_allowed(self) -> Mapping[str, str | None]:
        """Names in ``DDKIT_PLUGINS`` that no installed distribution has, each with its closest match."""
        return types.MappingProxyType(self._unknown_allowed)

    # -- loading ---------------------------------------------------------------------------

    def load_entry_points(self, environ: Mapping[str, str]) -> None:
        """Load the ``ddkit`` entry points the environment switches allow; core's always."""
        policy = Policy.from_environ(environ)
        seen: set[str] = set()
        for ep in _discovery.entry_points():
            distribution = _discovery.distribution_name(ep)
            seen.add(normalize(distribution))
            reason = policy.exclusion(distribution)
            if reason is None:
                self._load_entry_point(ep, distribution)
            else:
                self._skipped[distribution] = reason
                self._skipped_versions[distribution] = ep.dist.version if ep.dist is not None else "unknown"
        if CORE_DISTRIBUTION not in seen:
            # Running from a source tree without installed metadata: core still registers itself.
            self.register_builtins()
        if policy.autoload and policy.allowed is not None:
            for missing in sorted(policy.allowed - seen):
                close = difflib.get_close_matches(missing, sorted(seen), n=1, cutoff=0.6)
                self._unknown_allowed[missing] = close[0] if close else None
                warnings.warn(
                    _messages.unknown_allowed(missing, close[0] if close else None, sorted(seen)),
                    PluginWarning,
                    stacklevel=2,
                )

    def register_builtins(self) -> PluginInfo:
        """Register core's built-ins in-process, as the ``ddkit-core`` entry point would."""
        from ddkit import _builtins

        return self.register(_builtins, distribution=CORE_DISTRIBUTION, version=_discovery.core_version())

    def register(
        self, plugin: object, *, distribution: str, version: str = "0.0.0", module: str | None = None
    ) -> PluginInfo:
        """Register a plugin module or object and collect its records; returns how that went.

        A plugin whose hooks raise or return something other than records is recorded as
        ``broken`` (with a :class:`~ddkit.registry.PluginWarning`) rather than raising: the
        registry stays usable.
        """
        if not distribution.strip():
            raise ValueError(f"distribution must be a non-empty name (got {distribution!r})")
        if self._pm.is_registered(plugin):
            raise ValueError(f"{plugin!r} is already registered (as {self._pm.get_name(plugin)!r})")
        module = module or str(getattr(plugin, "__name__", type(plugin).__name__))
        api = getattr(plugin, "DDKIT_PLUGIN_API", None)
        info = PluginInfo(distribution, version, module, api=api if isinstance(api, str) else None)
        problem = api_problem(api, distribution)
        if isinstance(problem, IncompatiblePluginError):
            info = attrs.evolve(info, status="incompatible", error=str(problem), exception=problem)
            self._remember_names(plugin, info)
            return self._add(info)
        try:
            if problem is not None:
                raise problem
            self._pm.register(plugin, name=f"{distribution}#{len(self._plugins)}")
            records = collect_records(self._pm, plugin)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a plugin must not end the process
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            return self._add(attrs.evolve(info, status="broken", error=first_line(exc), exception=exc))
        for kind, record in records:
            self._entries[kind].setdefault(record.name, []).append(Entry(kind, record, info))
        return self._add(info)

    def _load_entry_point(self, ep: metadata.EntryPoint, distribution: str) -> PluginInfo:
        version = ep.dist.version if ep.dist is not None else "unknown"
        try:
            plugin = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a plugin must not end the process
            info = PluginInfo(distribution, version, ep.value, "broken", first_line(exc), exception=exc)
            return self._add(info)
        if self._pm.is_registered(plugin):
            error = InvalidPlugin(f"{ep.value!r} is already registered as {self._pm.get_name(plugin)!r}")
            return self._add(
                PluginInfo(distribution, version, ep.value, "broken", str(error), exception=error)
            )
        return self.register(plugin, distribution=distribution, version=version, module=ep.value)

    def _remember_names(self, plugin: object, info: PluginInfo) -> None:
        """Note which names an incompatible plugin would provide, so lookups can say why they fail."""
        for kind, hook in hookspecs.HOOK_BY_KIND.items():
            try:
                for record in getattr(plugin, hook)():
                    self._unusable_names[(kind, str(record.name))] = info
            except KeyboardInterrupt:
                raise
            except BaseException:  # its names are a courtesy for messages; never worth a crash
                continue

    def _add(self, info: PluginInfo) -> PluginInfo:
        self._plugins.append(info)
        if info.status != "ok":
            warnings.warn(
                f"ddkit plugin {info.distribution} {info.version} is {info.status} "
                f"and was skipped: {info.error}",
                PluginWarning,
                stacklevel=3,
            )
        return info

    # -- lookup ----------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        """The names registered for ``kind``, sorted (a conflicting name appears once)."""
        return sorted(self._entries[self._kind(kind)])

    def resolve(self, kind: str, name: str) -> Entry:
        """The entry for ``name`` or ``distribution:name``.

        Raises the errors described in :func:`~ddkit.registry.create`.
        """
        kind = self._kind(kind)
        if not isinstance(name, str):
            raise InputTypeError(f"a {kind} name must be a string (got {type(name).__name__} {name!r})")
        distribution, _, short = name.strip().lower().rpartition(":")
        candidates = self._entries[kind].get(short, [])
        pinned = None if distribution else (_PINS.get() or {}).get((kind, short))
        if pinned is not None:
            wanted, _, version = pinned.partition("==")
            chosen = [e for e in candidates if normalize(e.plugin.distribution) == normalize(wanted)]
            if not chosen:
                raise UnknownPluginError(self.explain_missing(kind, short, wanted, version or None))
            candidates = chosen
        if distribution:
            candidates = [
                e for e in candidates if normalize(e.plugin.distribution) == normalize(distribution)
            ]
            if not candidates:
                raise UnknownPluginError(
                    _messages.unknown_qualified(
                        kind, distribution, short, entries=self._entries[kind], plugins=self._plugins
                    )
                )
        if not candidates:
            unusable = self._unusable_names.get((kind, short))
            cause = unusable.exception if unusable is not None else None
            raise UnknownPluginError(self._unknown(kind, short)) from cause
        if len(candidates) > 1:
            raise PluginConflictError(_messages.conflict_message(candidates))
        return candidates[0]

    def create(self, kind: str, name: str, /, **params: Any) -> Any:
        """Build ``name`` with ``params``; see :func:`~ddkit.registry.create`."""
        entry = self.resolve(kind, name)
        factory = entry.load()
        check_params(entry.label, factory, params)
        try:
            return factory(**params)
        except DdkitError as exc:
            renamed = _messages.prefixed(exc, entry.label)
            if renamed is exc:
                raise
            raise renamed from exc
        except (TypeError, ValueError, ArithmeticError) as exc:
            # The factory refused these parameters: the registry is where a component meets its
            # caller, so a plain refusal becomes a ddkit error naming the component and the values.
            # A plugin's own exception type is kept (its callers may catch it), prefixed in place.
            if type(exc) in (TypeError, ValueError) or isinstance(exc, ArithmeticError):
                raise _messages.refused(exc, entry.label, params) from exc
            renamed = _messages.prefixed(exc, entry.label)
            if renamed is exc:
                raise
            raise renamed from exc
        except KeyboardInterrupt:
            raise
        except (SystemExit, GeneratorExit) as exc:
            raise RuntimeError(
                f"{entry.label} from {entry.plugin.distribution} {entry.plugin.version}: its factory raised "
                f"{type(exc).__name__}({exc}) instead of returning; report this to the plugin's authors"
            ) from exc

    def describe(self, kind: str, name: str) -> Description:
        """Where ``name`` comes from and its parameters; see :func:`~ddkit.registry.describe`."""
        entry = self.resolve(kind, name)
        conflicted = len(self._entries[entry.kind][entry.record.name]) > 1
        return Description(
            kind=entry.kind,
            name=entry.record.name,
            summary=entry.record.summary,
            distribution=entry.plugin.distribution,
            version=entry.plugin.version,
            paper=entry.record.paper,
            parameters=describe_params(entry.load()),
            status="conflict" if conflicted else "ok",
        )

    def rows(self) -> list[PluginRow]:
        """The ``ddkit plugins`` listing: one row per registered name, then one per nameless plugin.

        Listing never imports a ``"module:attribute"`` factory.
        """
        rows: list[PluginRow] = []
        providing: set[int] = set()
        for kind in KINDS:
            for name, entries in sorted(self._entries[kind].items()):
                status: RowStatus = "conflict" if len(entries) > 1 else "ok"
                for entry in sorted(entries, key=lambda e: (e.plugin.distribution, e.plugin.version)):
                    providing.add(id(entry.plugin))
                    plugin = entry.plugin
                    error = _messages.conflict_message(entries) if status == "conflict" else None
                    rows.append(
                        PluginRow(
                            kind,
                            name,
                            plugin.distribution,
                            plugin.version,
                            entry.record.summary,
                            status,
                            error,
                        )
                    )
        for plugin in self._plugins:
            if id(plugin) not in providing:
                summary = plugin.error or "registers no components"
                rows.append(
                    PluginRow(
                        None, None, plugin.distribution, plugin.version, summary, plugin.status, plugin.error
                    )
                )
        for distribution, reason in sorted(self._skipped.items()):
            version = self._skipped_versions.get(distribution, "unknown")
            text = f"installed but {reason}"
            rows.append(PluginRow(None, None, distribution, version, text, "not-loaded", text))
        for missing, close in sorted(self._unknown_allowed.items()):
            text = _messages.unknown_allowed(missing, close, None)
            rows.append(PluginRow(None, None, missing, "", text, "not-installed", text))
        return rows

    def explain_missing(self, kind: str, name: str, distribution: str, version: str | None = None) -> str:
        """Why ``distribution`` (as a saved pipeline recorded) provides no ``kind`` ``name`` here; the fix."""
        return _messages.missing_provider(
            kind,
            name,
            distribution,
            version,
            plugins=self._plugins,
            skipped=self._skipped,
            others=sorted({e.plugin.distribution for e in self._entries[self._kind(kind)].get(name, [])}),
        )

    # -- messages --------------------------------------------------------------------------

    def _kind(self, kind: str) -> str:
        if kind in KINDS:
            return kind
        raise UnknownPluginError(_messages.unknown_kind(kind))

    def _unknown(self, kind: str, name: str) -> str:
        return _messages.unknown_name(
            kind,
            name,
            available=sorted(self._entries[kind]),
            unusable_names=self._unusable_names,
            plugins=self._plugins,
            skipped=self._skipped,
        )
