"""The plugin registry: discovers plugins, builds components by name, and explains every failure.

Every component, core's own included, comes from a module listed under the ``ddkit``
entry-point group. Loading is wrapped: a plugin that fails to import, whose hook raises, or
that targets another plugin API major version is recorded and warned about instead of
breaking the registry, so ``ddkit plugins`` can show it while every other plugin keeps working.

Environment switches, read when the registry is first used (:func:`reset` re-reads them):

``DDKIT_DISABLE_PLUGIN_AUTOLOAD=1``
    load only core's built-ins (the ``ddkit-core`` entry point).
``DDKIT_PLUGINS=dist-a,dist-b``
    load only these distributions, and core; an empty value loads only core.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import numbers
import os
import re
import sys
import threading
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from importlib import metadata
from typing import Any, Literal

import attrs
import pluggy

from ddkit import hookspecs
from ddkit.errors import IncompatiblePluginError, PluginConflictError, UnknownPluginError
from ddkit.records import KINDS, Record

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
    "reset",
    "set_registry",
]

#: The plugin API this ddkit speaks; a plugin declaring another MAJOR version is not loaded.
PLUGIN_API_VERSION = "1.0"
ENTRY_POINT_GROUP = "ddkit"
CORE_DISTRIBUTION = "ddkit-core"
DISABLE_AUTOLOAD_ENV = "DDKIT_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "DDKIT_PLUGINS"

#: Names the official plugin distributions provide, so that a missing one can say what to install.
OFFICIAL_PLUGINS: Mapping[str, Mapping[str, str]] = {
    "sampler": dict.fromkeys(
        ("ddpm", "ddim", "plms", "dpm-solver++", "euler", "heun", "euler-ancestral"), "ddkit-samplers"
    ),
    "model": dict.fromkeys(("adm-unet", "adm-superres", "adm-classifier", "mlp"), "ddkit-models"),
    "guidance": dict.fromkeys(("classifier", "classifier-free"), "ddkit-guidance"),
}

PluginStatus = Literal["ok", "broken", "incompatible"]
RowStatus = Literal["ok", "broken", "incompatible", "conflict"]

_KIND_BY_HOOK = {hook: kind for kind, hook in hookspecs.HOOK_BY_KIND.items()}


class PluginWarning(UserWarning):
    """A plugin was skipped (broken or incompatible); everything else keeps working."""


class _InvalidPlugin(Exception):
    """A plugin that loaded but breaks the hook contract; its message is shown as is."""


@attrs.frozen
class PluginInfo:
    """One registered plugin (an entry point, or an object registered in-process) and its status.

    .. versionadded:: 0.1.0
    """

    distribution: str
    version: str
    #: What was loaded: the entry point's value, or the registered object's name.
    module: str
    status: PluginStatus = "ok"
    #: The first line of the error, for ``broken`` and ``incompatible`` plugins.
    error: str | None = None
    #: The ``DDKIT_PLUGIN_API`` the plugin declares (``None`` when it declares none).
    api: str | None = None
    exception: BaseException | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Entry:
    """A record together with the plugin that registered it."""

    kind: str
    record: Record
    plugin: PluginInfo

    @property
    def label(self) -> str:
        """How messages name this component: ``sampler 'ddim'``."""
        return f"{self.kind} '{self.record.name}'"

    def load(self) -> Callable[..., Any]:
        """The factory, importing a ``"module:attribute"`` one now (that is what listing avoids)."""
        factory = self.record.factory
        if not isinstance(factory, str):
            return factory
        module_name, _, attribute = factory.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise ImportError(
                f"{self.label} from {self.plugin.distribution} {self.plugin.version}: "
                f"cannot load its factory {factory!r}: {_first_line(exc)}"
            ) from exc
        if not callable(obj):
            raise TypeError(f"{self.label}: factory {factory!r} must be callable (got {type(obj).__name__})")
        return typing.cast(Callable[..., Any], obj)


@attrs.frozen
class PluginRow:
    """One line of ``ddkit plugins``: a registered name, or a distribution that registers none.

    A distribution that is broken, incompatible or registers no names appears as a single row
    with ``kind`` and ``name`` set to ``None``; ``error`` holds the first line of its error.
    """

    kind: str | None
    name: str | None
    distribution: str
    version: str
    summary: str
    status: RowStatus
    error: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "summary": self.summary,
            "status": self.status,
            "error": self.error,
        }


@attrs.frozen
class Description:
    """What :func:`describe` returns: where a component comes from and how to build it.

    ``parameters`` maps each keyword the factory accepts to its annotation and default as
    written (``"int = 50"``); a value without ``" = "`` is a required parameter.

    .. versionadded:: 0.1.0
    """

    kind: str
    name: str
    summary: str
    distribution: str
    version: str
    paper: str
    parameters: dict[str, str] = attrs.field(hash=False)
    status: RowStatus


@attrs.frozen
class _Policy:
    """Which distributions to load, from the environment switches (see the module docstring)."""

    autoload: bool
    allowed: frozenset[str] | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> _Policy:
        flag = environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower()
        raw = environ.get(ALLOW_ENV)
        allowed = None if raw is None else frozenset(_normalize(p) for p in raw.split(",") if p.strip())
        return cls(autoload=flag in ("", "0", "false", "no", "off"), allowed=allowed)

    def exclusion(self, distribution: str) -> str | None:
        """Why ``distribution`` is not loaded, or ``None`` when it is."""
        if _normalize(distribution) == CORE_DISTRIBUTION:
            return None
        if not self.autoload:
            return f"{DISABLE_AUTOLOAD_ENV} is set, so only {CORE_DISTRIBUTION} is loaded"
        if self.allowed is not None and _normalize(distribution) not in self.allowed:
            return f"not listed in {ALLOW_ENV}"
        return None


class Registry:
    """Every registered plugin's records, indexed by kind and name.

    Most code uses the module functions (:func:`names`, :func:`create`, :func:`describe`),
    which go through the cached :func:`get_registry`. Tests build their own registry and
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
        """Installed distributions that were not loaded, with the reason (an environment switch)."""
        return types.MappingProxyType(self._skipped)

    # -- loading ---------------------------------------------------------------------------

    def load_entry_points(self, environ: Mapping[str, str]) -> None:
        """Load the ``ddkit`` entry points the environment switches allow; core's always."""
        policy = _Policy.from_environ(environ)
        points = sorted(
            metadata.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda ep: (_normalize(_distribution_name(ep)) != CORE_DISTRIBUTION, _distribution_name(ep)),
        )
        seen: set[str] = set()
        for ep in points:
            distribution = _distribution_name(ep)
            seen.add(_normalize(distribution))
            reason = policy.exclusion(distribution)
            if reason is None:
                self._load_entry_point(ep, distribution)
            else:
                self._skipped[distribution] = reason
        if CORE_DISTRIBUTION not in seen:
            # Running from a source tree without installed metadata: core still registers itself.
            self.register_builtins()
        if policy.autoload and policy.allowed is not None:
            for missing in sorted(policy.allowed - seen):
                warnings.warn(
                    f"{ALLOW_ENV} names {missing!r}, which is not an installed ddkit plugin "
                    f"(installed: {', '.join(sorted(seen))})",
                    PluginWarning,
                    stacklevel=2,
                )

    def register_builtins(self) -> PluginInfo:
        """Register core's built-ins in-process, as the ``ddkit-core`` entry point would."""
        from ddkit import _builtins

        return self.register(_builtins, distribution=CORE_DISTRIBUTION, version=_core_version())

    def register(
        self, plugin: object, *, distribution: str, version: str = "0.0.0", module: str | None = None
    ) -> PluginInfo:
        """Register a plugin module or object and collect its records; returns how that went.

        A plugin whose hooks raise or return something other than records is recorded as
        ``broken`` (with a :class:`PluginWarning`) rather than raising: the registry stays usable.
        """
        if not distribution.strip():
            raise ValueError(f"distribution must be a non-empty name (got {distribution!r})")
        if self._pm.is_registered(plugin):
            raise ValueError(f"{plugin!r} is already registered (as {self._pm.get_name(plugin)!r})")
        module = module or str(getattr(plugin, "__name__", type(plugin).__name__))
        api = getattr(plugin, "DDKIT_PLUGIN_API", None)
        info = PluginInfo(distribution, version, module, api=api if isinstance(api, str) else None)
        problem = _api_problem(api, distribution)
        if isinstance(problem, IncompatiblePluginError):
            info = attrs.evolve(info, status="incompatible", error=str(problem), exception=problem)
            self._remember_names(plugin, info)
            return self._add(info)
        try:
            if problem is not None:
                raise problem
            self._pm.register(plugin, name=f"{distribution}#{len(self._plugins)}")
            records = self._collect(plugin)
        except Exception as exc:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            return self._add(attrs.evolve(info, status="broken", error=_first_line(exc), exception=exc))
        for kind, record in records:
            self._entries[kind].setdefault(record.name, []).append(Entry(kind, record, info))
        return self._add(info)

    def _load_entry_point(self, ep: metadata.EntryPoint, distribution: str) -> PluginInfo:
        version = ep.dist.version if ep.dist is not None else "unknown"
        try:
            plugin = ep.load()
        except Exception as exc:
            info = PluginInfo(distribution, version, ep.value, "broken", _first_line(exc), exception=exc)
            return self._add(info)
        if self._pm.is_registered(plugin):
            error = _InvalidPlugin(f"{ep.value!r} is already registered as {self._pm.get_name(plugin)!r}")
            return self._add(
                PluginInfo(distribution, version, ep.value, "broken", str(error), exception=error)
            )
        return self.register(plugin, distribution=distribution, version=version, module=ep.value)

    def _collect(self, plugin: object) -> list[tuple[str, Record]]:
        """Call each of the plugin's own hooks, checking that every one returns records."""
        collected: list[tuple[str, Record]] = []
        for caller in self._pm.get_hookcallers(plugin) or []:
            if not caller.has_spec():
                close = difflib.get_close_matches(caller.name, _KIND_BY_HOOK, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise _InvalidPlugin(
                    f"implements unknown hook {caller.name!r}{hint} (hooks: {', '.join(_KIND_BY_HOOK)})"
                )
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin or impl.wrapper or impl.hookwrapper:
                    continue
                try:
                    result = impl.function()
                except Exception as exc:
                    raise _InvalidPlugin(f"{caller.name}() raised {_first_line(exc)}") from exc
                collected.extend((_KIND_BY_HOOK[caller.name], r) for r in _check_records(caller.name, result))
        return collected

    def _remember_names(self, plugin: object, info: PluginInfo) -> None:
        """Note which names an incompatible plugin would provide, so lookups can say why they fail."""
        for kind, hook in hookspecs.HOOK_BY_KIND.items():
            try:
                for record in getattr(plugin, hook)():
                    self._unusable_names[(kind, str(record.name))] = info
            except Exception:
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
        """The entry for ``name`` or ``distribution:name``; raises the errors described in :func:`create`."""
        kind = self._kind(kind)
        distribution, _, short = name.strip().lower().rpartition(":")
        candidates = self._entries[kind].get(short, [])
        if distribution:
            candidates = [
                e for e in candidates if _normalize(e.plugin.distribution) == _normalize(distribution)
            ]
            if not candidates:
                raise UnknownPluginError(self._unknown_qualified(kind, distribution, short))
        if not candidates:
            unusable = self._unusable_names.get((kind, short))
            cause = unusable.exception if unusable is not None else None
            raise UnknownPluginError(self._unknown(kind, short)) from cause
        if len(candidates) > 1:
            raise PluginConflictError(_conflict_message(candidates))
        return candidates[0]

    def create(self, kind: str, name: str, /, **params: Any) -> Any:
        """Build ``name`` with ``params``; see :func:`create`."""
        entry = self.resolve(kind, name)
        factory = entry.load()
        _check_params(entry.label, factory, params)
        try:
            return factory(**params)
        except (TypeError, ValueError) as exc:
            renamed = _prefixed(exc, entry.label)
            if renamed is exc:
                raise
            raise renamed from exc

    def describe(self, kind: str, name: str) -> Description:
        """Where ``name`` comes from and its parameters; see :func:`describe`."""
        entry = self.resolve(kind, name)
        conflicted = len(self._entries[entry.kind][entry.record.name]) > 1
        return Description(
            kind=entry.kind,
            name=entry.record.name,
            summary=entry.record.summary,
            distribution=entry.plugin.distribution,
            version=entry.plugin.version,
            paper=entry.record.paper,
            parameters=_parameters(entry.load()),
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
                    error = _conflict_message(entries) if status == "conflict" else None
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
        return rows

    # -- messages --------------------------------------------------------------------------

    def _kind(self, kind: str) -> str:
        if kind in KINDS:
            return kind
        close = difflib.get_close_matches(str(kind).strip().lower(), KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownPluginError(f"unknown kind {kind!r}{hint}; kinds are: {', '.join(KINDS)}")

    def _unknown(self, kind: str, name: str) -> str:
        available = sorted(self._entries[kind])
        official = OFFICIAL_PLUGINS.get(kind, {})
        unusable = {n for k, n in self._unusable_names if k == kind}
        known = {*available, *official, *unusable}
        close = [] if name in known else difflib.get_close_matches(name, sorted(known), n=1)
        lines = [f"no {kind} named {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")]
        lines.append(f"available {kind}s: {', '.join(available) or '(none)'}")
        mentioned: set[str] = set()
        for candidate in [name, *close]:
            if candidate in available:
                continue
            if (kind, candidate) in self._unusable_names:
                info = self._unusable_names[(kind, candidate)]
                mentioned.add(info.distribution)
                lines.append(
                    f"{candidate!r} is provided by {info.distribution} {info.version}, "
                    f"which is {info.status}: {info.error}"
                )
            elif candidate in official:
                mentioned.add(official[candidate])
                lines.append(f"{candidate!r} is provided by {self._availability(official[candidate])}")
            else:
                continue
            break
        failed = [p for p in self._plugins if p.status != "ok" and p.distribution not in mentioned]
        if failed:
            listed = "; ".join(f"{p.distribution} {p.version} ({p.status}: {p.error})" for p in failed)
            lines.append(f"plugins that failed to load: {listed}")
        return "\n".join(lines)

    def _availability(self, distribution: str) -> str:
        """Finishes "'ddim' is provided by ..." for an official distribution that did not provide it."""
        for plugin in self._plugins:
            if _normalize(plugin.distribution) == _normalize(distribution):
                if plugin.status != "ok":
                    state = f"{plugin.status}: {plugin.error}"
                    return f"{distribution} {plugin.version}, which is installed but {state}"
                return f"{distribution}, but the installed version {plugin.version} does not register it"
        for skipped, reason in self._skipped.items():
            if _normalize(skipped) == _normalize(distribution):
                return f"{distribution}, which is installed but not loaded: {reason}"
        version = _installed_version(distribution)
        if version is not None:
            return f"{distribution}, which is installed ({version}) but not loaded in this registry"
        return f"{distribution}, which is not installed: pip install {distribution}"

    def _unknown_qualified(self, kind: str, distribution: str, name: str) -> str:
        loaded = sorted({p.distribution for p in self._plugins})
        by_normal = {_normalize(d): d for d in loaded}
        if _normalize(distribution) not in by_normal:
            close = [
                by_normal[c] for c in difflib.get_close_matches(_normalize(distribution), by_normal, n=1)
            ]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return (
                f"no plugin distribution {distribution!r} is loaded{hint} "
                f"(loaded: {', '.join(loaded) or '(none)'})"
            )
        provided = sorted(
            n
            for n, entries in self._entries[kind].items()
            for e in entries
            if _normalize(e.plugin.distribution) == _normalize(distribution)
        )
        close = difflib.get_close_matches(name, provided, n=1)
        hint = f"; did you mean '{distribution}:{close[0]}'?" if close else ""
        return (
            f"{distribution} registers no {kind} named {name!r}{hint} "
            f"({distribution}'s {kind}s: {', '.join(provided) or '(none)'})"
        )


# -- the process-wide registry --------------------------------------------------------------

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


# -- helpers ---------------------------------------------------------------------------------


def _normalize(distribution: str) -> str:
    """PEP 503 normalisation, so ``DDKit_Samplers`` and ``ddkit-samplers`` are the same distribution."""
    return re.sub(r"[-_.]+", "-", distribution.strip()).lower()


def _distribution_name(ep: metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ep.name


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _core_version() -> str:
    from ddkit import __version__

    return _installed_version(CORE_DISTRIBUTION) or __version__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, _InvalidPlugin):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _api_problem(api: object, distribution: str) -> Exception | None:
    """``None`` when the declared plugin API is usable (or undeclared), else the exception to record."""
    if api is None:
        return None
    if not isinstance(api, str) or not re.fullmatch(r"\d+(\.(\d+|x))?", api.strip()):
        return _InvalidPlugin(f"DDKIT_PLUGIN_API must be a version string like '1.0' (got {api!r})")
    ours = PLUGIN_API_VERSION.split(".")[0]
    if api.strip().split(".")[0] != ours:
        return IncompatiblePluginError(
            f"{distribution} targets ddkit plugin API {api}, but this ddkit speaks plugin API "
            f"{PLUGIN_API_VERSION}; install a version of {distribution} made for API {ours}.x"
        )
    return None


def _check_records(hook: str, result: object) -> list[Record]:
    if not isinstance(result, list | tuple):
        raise _InvalidPlugin(f"{hook}() must return a list of ddkit.Record (got {type(result).__name__})")
    for item in result:
        if not isinstance(item, Record):
            raise _InvalidPlugin(
                f"{hook}() must return ddkit.Record items (got {type(item).__name__} {item!r})"
            )
    return list(result)


def _conflict_message(entries: Iterable[Entry]) -> str:
    ordered = sorted(entries, key=lambda e: (e.plugin.distribution, e.plugin.version))
    first = ordered[0]
    providers = ", ".join(f"{e.plugin.distribution} {e.plugin.version}" for e in ordered)
    distributions = dict.fromkeys(e.plugin.distribution for e in ordered)
    choices = " or ".join(f"'{d}:{first.record.name}'" for d in distributions)
    return (
        f"{first.label} is registered by {len(ordered)} plugins: {providers}; "
        f"pick one with {choices}, or uninstall all but one"
    )


def _prefixed(exc: Exception, label: str) -> Exception:
    """``exc`` with ``label`` before its message and the same type (``exc`` itself, edited, if needed)."""
    message = str(exc)
    if message.startswith(label):
        return exc
    text = f"{label}: {message}"
    try:
        renamed = type(exc)(text)
    except Exception:
        renamed = None
    if renamed is not None and str(renamed) == text:
        return renamed
    exc.args = (text,)  # its attributes stay; only the message changes
    return exc


# -- parameter checking ------------------------------------------------------------------------

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_PLAIN_TYPES: tuple[type, ...] = (str, bytes, list, tuple, dict, set, frozenset)
_ITEM_CONTAINERS: tuple[type, ...] = (list, tuple, set, frozenset, Sequence, Set)


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def _parameters(factory: Callable[..., Any]) -> dict[str, str]:
    """The factory's keyword parameters as ``name -> "annotation = default"`` text, for docs."""
    signature = _signature(factory)
    if signature is None:
        return {}
    described: dict[str, str] = {}
    for p in signature.parameters.values():
        if p.kind in _KEYWORD_KINDS:
            described[p.name] = _describe_parameter(p)
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            described[f"**{p.name}"] = _annotation_text(p.annotation)
    return described


def _annotation_text(annotation: object) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    return annotation if isinstance(annotation, str) else _type_text(annotation)


def _describe_parameter(p: inspect.Parameter) -> str:
    annotation = _annotation_text(p.annotation)
    if p.default is inspect.Parameter.empty:
        return annotation or "required"
    return f"{annotation} = {p.default!r}" if annotation else f"= {p.default!r}"


def _check_params(label: str, factory: Callable[..., Any], params: Mapping[str, Any]) -> None:
    """Reject unknown, missing and wrongly typed keywords before calling the factory."""
    signature = _signature(factory)
    if signature is None:
        return
    parameters = signature.parameters.values()
    accepted = {p.name: p for p in parameters if p.kind in _KEYWORD_KINDS}
    listing = ", ".join(f"{n} ({_describe_parameter(p)})" for n, p in accepted.items()) or "none"
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        for key in params:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"{label}: unknown parameter {key!r}{hint} (accepted: {listing})")
    for p in parameters:
        if p.default is not inspect.Parameter.empty:
            continue
        positional_only = p.kind is inspect.Parameter.POSITIONAL_ONLY
        if positional_only or (p.kind in _KEYWORD_KINDS and p.name not in params):
            raise TypeError(f"{label}: missing required parameter {p.name!r} (accepted: {listing})")
    hints = _type_hints(factory)
    for key, value in params.items():
        if key in hints and key in accepted:
            _check_value(label, key, value, hints[key])


def _check_value(label: str, key: str, value: object, hint: object) -> None:
    if _matches(value, hint) is not False:
        return
    literals = _literal_values(hint)
    if literals is not None:
        allowed = ", ".join(repr(v) for v in literals)
        text = [str(v) for v in literals if isinstance(v, str)]
        close = difflib.get_close_matches(value, text, n=1) if isinstance(value, str) else []
        hint_text = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{label}: parameter {key!r} must be one of {allowed} (got {_short(value)}{hint_text})"
        )
    raise TypeError(
        f"{label}: parameter {key!r} must be {_type_text(hint)} (got {type(value).__name__} {_short(value)})"
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_hints(factory: Callable[..., Any]) -> dict[str, object]:
    """Resolved annotations of the factory (a class's ``__init__`` wins over its class body)."""
    if isinstance(factory, type):
        return {**_safe_hints(factory), **_safe_hints(getattr(factory, "__init__", None))}
    return _safe_hints(factory)


def _safe_hints(obj: object) -> dict[str, object]:
    """``typing.get_type_hints``, or failing that each annotation that resolves on its own."""
    try:
        return dict(typing.get_type_hints(obj))
    except Exception:
        pass
    try:
        raw = inspect.get_annotations(obj) if callable(obj) else {}
    except TypeError:
        return {}
    if isinstance(obj, type):
        module = sys.modules.get(obj.__module__)
        namespace: Mapping[str, Any] = vars(module) if module is not None else {}
    else:
        namespace = getattr(inspect.unwrap(obj), "__globals__", {})  # type: ignore[arg-type]
    resolved: dict[str, object] = {}
    for key, annotation in raw.items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))
            except Exception:
                continue
        resolved[key] = annotation
    return resolved


def _matches(value: object, hint: object) -> bool | None:
    """Whether ``value`` fits ``hint``: ``True``/``False``, or ``None`` when that is not cheap to tell."""
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _matches(value, args[0])
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is typing.Union or origin is types.UnionType:
        verdicts = [_matches(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is not None:
        return _matches_container(value, origin, args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint in _PLAIN_TYPES:
        return isinstance(value, hint)
    return None


def _matches_container(value: object, origin: object, args: tuple[object, ...]) -> bool | None:
    if not isinstance(origin, type) or not issubclass(origin, (*_ITEM_CONTAINERS, Mapping)):
        return None
    if not isinstance(value, origin):
        return False
    if not args or not isinstance(value, Iterable) or isinstance(value, Mapping):
        return True
    items = list(value)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            return False
        verdicts = [_matches(v, a) for v, a in zip(items, args)]
    else:
        verdicts = [_matches(v, args[0]) for v in items]
    return False if False in verdicts else (True if all(verdicts) else None)


def _literal_values(hint: object) -> list[object] | None:
    """The allowed values when ``hint`` is a ``Literal`` (optionally ``| None``), else ``None``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return list(typing.get_args(hint))
    if origin is typing.Union or origin is types.UnionType:
        values: list[object] = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                values.append(None)
                continue
            inner = _literal_values(arg)
            if inner is None:
                return None
            values.extend(inner)
        return values
    return None


def _type_text(hint: object) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_text(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and origin is None:
        return hint.__name__
    return repr(hint).replace("typing.", "").replace("collections.abc.", "")
