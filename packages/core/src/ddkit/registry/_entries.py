"""What the registry holds and reports: plugins, their entries, listing rows and descriptions."""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable
from typing import Any, Literal

import attrs

from ddkit.records import Record
from ddkit.registry._contract import first_line

__all__ = ["Description", "Entry", "PluginInfo", "PluginRow", "PluginStatus", "PluginWarning", "RowStatus"]

PluginStatus = Literal["ok", "broken", "incompatible"]
#: ``not-loaded``: installed but kept out by an environment switch; ``not-installed``: named in
#: ``DDKIT_PLUGINS`` but not installed (a typo, most often).
RowStatus = Literal["ok", "broken", "incompatible", "conflict", "not-loaded", "not-installed"]


class PluginWarning(UserWarning):
    """A plugin was skipped (broken or incompatible); everything else keeps working."""


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
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: importing a factory must not end the process
            raise ImportError(
                f"{self.label} from {self.plugin.distribution} {self.plugin.version}: "
                f"cannot load its factory {factory!r}: {first_line(exc)}"
            ) from exc
        if not callable(obj):
            raise TypeError(f"{self.label}: factory {factory!r} must be callable (got {type(obj).__name__})")
        return typing.cast(Callable[..., Any], obj)


@attrs.frozen
class PluginRow:
    """One line of ``ddkit plugins``: a registered name, or a distribution that registers none.

    A distribution that is broken, incompatible, not loaded (an environment switch), named in
    ``DDKIT_PLUGINS`` but not installed, or that registers no names appears as a single row with
    ``kind`` and ``name`` set to ``None``; ``error`` holds the first line of its error.
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
    """What :func:`~ddkit.registry.describe` returns: where a component comes from and how to build it.

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
