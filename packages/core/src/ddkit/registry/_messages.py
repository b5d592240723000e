"""The registry's error messages: what is available, what to install, and how to pick between plugins.

Each message is built from the registry's state passed in explicitly, so that it can say why a
lookup failed (a broken or skipped plugin, an official distribution not installed) and what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence

from ddkit.errors import InputError, InputTypeError
from ddkit.records import KINDS
from ddkit.registry import _discovery
from ddkit.registry._discovery import normalize
from ddkit.registry._entries import Entry, PluginInfo

__all__ = [
    "OFFICIAL_PLUGINS",
    "conflict_message",
    "missing_provider",
    "prefixed",
    "refused",
    "unknown_allowed",
    "unknown_kind",
    "unknown_name",
    "unknown_qualified",
]

#: Names the official plugin distributions provide, so that a missing one can say what to install.
OFFICIAL_PLUGINS: Mapping[str, Mapping[str, str]] = {
    "sampler": dict.fromkeys(
        ("ddpm", "ddim", "plms", "dpm-solver++", "euler", "heun", "euler-ancestral"), "ddkit-samplers"
    ),
    "model": dict.fromkeys(("adm-unet", "adm-superres", "adm-classifier", "mlp"), "ddkit-models"),
    "guidance": dict.fromkeys(("classifier", "classifier-free"), "ddkit-guidance"),
}


def unknown_kind(kind: str) -> str:
    close = difflib.get_close_matches(str(kind).strip().lower(), KINDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown kind {kind!r}{hint}; kinds are: {', '.join(KINDS)}"


def unknown_name(
    kind: str,
    name: str,
    *,
    available: Sequence[str],
    unusable_names: Mapping[tuple[str, str], PluginInfo],
    plugins: Sequence[PluginInfo],
    skipped: Mapping[str, str],
) -> str:
    """Why no ``kind`` is named ``name``: the close match, what is available, and what provides it."""
    official = OFFICIAL_PLUGINS.get(kind, {})
    unusable = {n for k, n in unusable_names if k == kind}
    known = {*available, *official, *unusable}
    close = [] if name in known else difflib.get_close_matches(name, sorted(known), n=1)
    lines = [f"no {kind} named {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")]
    lines.append(f"available {kind}s: {', '.join(available) or '(none)'}")
    mentioned: set[str] = set()
    for candidate in [name, *close]:
        if candidate in available:
            continue
        if (kind, candidate) in unusable_names:
            info = unusable_names[(kind, candidate)]
            mentioned.add(info.distribution)
            lines.append(
                f"{candidate!r} is provided by {info.distribution} {info.version}, "
                f"which is {info.status}: {info.error}"
            )
        elif candidate in official:
            mentioned.add(official[candidate])
            availability = _availability(official[candidate], plugins, skipped)
            lines.append(f"{candidate!r} is provided by {availability}")
        else:
            continue
        break
    else:
        unloaded = [d for d in skipped if d not in mentioned]
        if unloaded and name not in available:
            # A third party's names are unknown until its module is imported, which the switch forbids.
            listed = "; ".join(f"{d} ({skipped[d]})" for d in sorted(unloaded))
            lines.append(f"{name!r} may come from a plugin that is installed but not loaded: {listed}")
    failed = [p for p in plugins if p.status != "ok" and p.distribution not in mentioned]
    if failed:
        listed = "; ".join(f"{p.distribution} {p.version} ({p.status}: {p.error})" for p in failed)
        lines.append(f"plugins that failed to load: {listed}")
    return "\n".join(lines)


def _availability(distribution: str, plugins: Sequence[PluginInfo], skipped: Mapping[str, str]) -> str:
    """Finishes "'ddim' is provided by ..." for an official distribution that did not provide it."""
    for plugin in plugins:
        if normalize(plugin.distribution) == normalize(distribution):
            if plugin.status != "ok":
                state = f"{plugin.status}: {plugin.error}"
                return f"{distribution} {plugin.version}, which is installed but {state}"
            return f"{distribution}, but the installed version {plugin.version} does not register it"
    for name, reason in skipped.items():
        if normalize(name) == normalize(distribution):
            return f"{distribution}, which is installed but {reason}"
    version = _discovery.installed_version(distribution)
    if version is not None:
        return f"{distribution}, which is installed ({version}) but not loaded in this registry"
    return f"{distribution}, which is not installed: pip install {distribution}"


def missing_provider(
    kind: str,
    name: str,
    distribution: str,
    version: str | None,
    *,
    plugins: Sequence[PluginInfo],
    skipped: Mapping[str, str],
    others: Sequence[str],
) -> str:
    """Why the distribution a saved pipeline recorded for ``name`` does not provide it here."""
    pin = f"{distribution}=={version}" if version else distribution
    head = f"{kind} {name!r} was provided by {distribution}" + (f" {version}" if version else "")
    state = None
    for plugin in plugins:
        if normalize(plugin.distribution) == normalize(distribution):
            if plugin.status != "ok":
                state = f"which is installed ({plugin.version}) but {plugin.status}: {plugin.error}"
            else:
                state = (
                    f"but the installed {distribution} {plugin.version} does not register it; "
                    f"install the version it was saved with: pip install {pin}"
                )
            break
    else:
        for skipped_name, reason in skipped.items():
            if normalize(skipped_name) == normalize(distribution):
                state = f"which is installed but {reason}"
                break
    if state is None:
        state = f"which is not installed here; install it with: pip install {pin}"
    text = f"{head}, {state}"
    others = [d for d in others if normalize(d) != normalize(distribution)]
    if others:
        text += (
            f" ({', '.join(others)} registers a {kind} {name!r} too, but a saved pipeline is rebuilt only "
            "from the distribution that saved it)"
        )
    return text


def unknown_allowed(name: str, close: str | None, installed: Sequence[str] | None) -> str:
    """A ``DDKIT_PLUGINS`` entry that names no installed distribution (a typo, most often)."""
    hint = f"; did you mean {close!r}?" if close else ""
    listing = f" (installed: {', '.join(installed)})" if installed is not None else ""
    return f"{_discovery.ALLOW_ENV} names {name!r}, which is not an installed ddkit plugin{hint}{listing}"


def refused(exc: BaseException, label: str, params: Mapping[str, object]) -> Exception:
    """A factory's refusal of ``params`` as a ddkit error that names the component and the values.

    ``TypeError`` stays a type error (:class:`InputTypeError`); a ``ValueError`` or an arithmetic
    failure (``OverflowError``, ``ZeroDivisionError``) becomes an :class:`InputError`.
    """
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, ArithmeticError):
        given = ", ".join(f"{k}={_short(v)}" for k, v in params.items()) or "the defaults"
        return InputError(
            f"{label}: the parameters {given} give no usable numbers ({type(exc).__name__}: {message}); "
            "use values closer to the defaults"
        )
    text = message if message.startswith(label) else f"{label}: {message}"
    return InputTypeError(text) if isinstance(exc, TypeError) else InputError(text)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def unknown_qualified(
    kind: str,
    distribution: str,
    name: str,
    *,
    entries: Mapping[str, Sequence[Entry]],
    plugins: Sequence[PluginInfo],
) -> str:
    """Why ``distribution:name`` resolves to nothing: no such distribution, or no such name in it."""
    loaded = sorted({p.distribution for p in plugins})
    by_normal = {normalize(d): d for d in loaded}
    if normalize(distribution) not in by_normal:
        close = [by_normal[c] for c in difflib.get_close_matches(normalize(distribution), by_normal, n=1)]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (
            f"no plugin distribution {distribution!r} is loaded{hint} "
            f"(loaded: {', '.join(loaded) or '(none)'})"
        )
    provided = sorted(
        n
        for n, candidates in entries.items()
        for e in candidates
        if normalize(e.plugin.distribution) == normalize(distribution)
    )
    close = difflib.get_close_matches(name, provided, n=1)
    hint = f"; did you mean '{distribution}:{close[0]}'?" if close else ""
    return (
        f"{distribution} registers no {kind} named {name!r}{hint} "
        f"({distribution}'s {kind}s: {', '.join(provided) or '(none)'})"
    )


def conflict_message(entries: Iterable[Entry]) -> str:
    ordered = sorted(entries, key=lambda e: (e.plugin.distribution, e.plugin.version))
    first = ordered[0]
    providers = ", ".join(f"{e.plugin.distribution} {e.plugin.version}" for e in ordered)
    distributions = dict.fromkeys(e.plugin.distribution for e in ordered)
    choices = " or ".join(f"'{d}:{first.record.name}'" for d in distributions)
    return (
        f"{first.label} is registered by {len(ordered)} plugins: {providers}; "
        f"pick one with {choices}, or uninstall all but one"
    )


def prefixed(exc: Exception, label: str) -> Exception:
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
