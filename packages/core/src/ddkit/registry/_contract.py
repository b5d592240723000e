"""What a plugin must provide: a compatible plugin API version and hooks that return records.

A plugin that breaks the contract is not an error for the caller: the registry records it as
``broken`` or ``incompatible`` with the first line of the reason, which is what these helpers
produce.
"""

from __future__ import annotations

import difflib
import re

import pluggy

from ddkit import hookspecs
from ddkit.errors import IncompatiblePluginError
from ddkit.records import Record

__all__ = [
    "KIND_BY_HOOK",
    "PLUGIN_API_VERSION",
    "InvalidPlugin",
    "api_problem",
    "check_records",
    "collect_records",
    "first_line",
]

#: The plugin API this ddkit speaks; a plugin declaring another MAJOR version is not loaded.
PLUGIN_API_VERSION = "1.0"

KIND_BY_HOOK = {hook: kind for kind, hook in hookspecs.HOOK_BY_KIND.items()}


class InvalidPlugin(Exception):
    """A plugin that loaded but breaks the hook contract; its message is shown as is."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``, after its type name unless it is an :class:`InvalidPlugin`."""
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, InvalidPlugin):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def api_problem(api: object, distribution: str) -> Exception | None:
    """``None`` when the declared plugin API is usable (or undeclared), else the exception to record."""
    if api is None:
        return None
    if not isinstance(api, str) or not re.fullmatch(r"\d+(\.(\d+|x))?", api.strip()):
        return InvalidPlugin(f"DDKIT_PLUGIN_API must be a version string like '1.0' (got {api!r})")
    ours = PLUGIN_API_VERSION.split(".")[0]
    if api.strip().split(".")[0] != ours:
        return IncompatiblePluginError(
            f"{distribution} targets ddkit plugin API {api}, but this ddkit speaks plugin API "
            f"{PLUGIN_API_VERSION}; install a version of {distribution} made for API {ours}.x"
        )
    return None


def collect_records(pm: pluggy.PluginManager, plugin: object) -> list[tuple[str, Record]]:
    """Call each of the registered ``plugin``'s own hooks, checking that every one returns records."""
    collected: list[tuple[str, Record]] = []
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            close = difflib.get_close_matches(caller.name, KIND_BY_HOOK, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidPlugin(
                f"implements unknown hook {caller.name!r}{hint} (hooks: {', '.join(KIND_BY_HOOK)})"
            )
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin or impl.wrapper or impl.hookwrapper:
                continue
            try:
                result = impl.function()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit too: a hook must not end the process
                raise InvalidPlugin(f"{caller.name}() raised {first_line(exc)}") from exc
            collected.extend((KIND_BY_HOOK[caller.name], r) for r in check_records(caller.name, result))
    return collected


def check_records(hook: str, result: object) -> list[Record]:
    if not isinstance(result, list | tuple):
        raise InvalidPlugin(f"{hook}() must return a list of ddkit.Record (got {type(result).__name__})")
    for item in result:
        if not isinstance(item, Record):
            raise InvalidPlugin(
                f"{hook}() must return ddkit.Record items (got {type(item).__name__} {item!r})"
            )
    return list(result)
