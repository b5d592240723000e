"""The registry's error messages: what is available, what to install, and how to pick between plugins.

Each message is built from the registry's state passed in explicitly, so that it can say why a
lookup failed (a broken or skipped plugin, an official distribution not installed) and what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence

from ddkit.records import KINDS
from ddkit.registry import _discovery
from ddkit.registry._discovery import normalize
from ddkit.registry._entries import Entry, PluginInfo

__all__ = [
    "OFFICIAL_PLUGINS",
    "conflict_message",
    "prefixed",
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
            return f"{distribution}, which is installed but not loaded: {reason}"
    version = _discovery.installed_version(distribution)
    if version is not None:
        return f"{distribution}, which is installed ({version}) but not loaded in this registry"
    return f"{distribution}, which is not installed: pip install {distribution}"


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
