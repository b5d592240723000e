"""Which installed ``ddkit`` entry points are loaded: the group, the environment switches, versions.

Distribution names are compared after PEP 503 normalisation, so that the allow-list, qualified
names (``ddkit-samplers:ddim``) and entry-point metadata agree however a name is spelled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import metadata

import attrs

__all__ = [
    "ALLOW_ENV",
    "CORE_DISTRIBUTION",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "Policy",
    "core_version",
    "distribution_name",
    "entry_points",
    "installed_version",
    "normalize",
]

ENTRY_POINT_GROUP = "ddkit"
CORE_DISTRIBUTION = "ddkit-core"
DISABLE_AUTOLOAD_ENV = "DDKIT_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "DDKIT_PLUGINS"


@attrs.frozen
class Policy:
    """Which distributions to load, from the environment switches (see :mod:`ddkit.registry`)."""

    autoload: bool
    allowed: frozenset[str] | None
    #: The switches as set, for messages: ``DDKIT_PLUGINS=toy-a`` or ``DDKIT_DISABLE_PLUGIN_AUTOLOAD=1``.
    setting: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Policy:
        flag = environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower()
        raw = environ.get(ALLOW_ENV)
        allowed = None if raw is None else frozenset(normalize(p) for p in raw.split(",") if p.strip())
        autoload = flag in ("", "0", "false", "no", "off")
        if not autoload:
            setting = f"{DISABLE_AUTOLOAD_ENV}={environ.get(DISABLE_AUTOLOAD_ENV, '').strip()}"
        else:
            setting = f"{ALLOW_ENV}={(raw or '').strip()}" if raw is not None else ""
        return cls(autoload=autoload, allowed=allowed, setting=setting)

    def exclusion(self, distribution: str) -> str | None:
        """Why ``distribution`` is not loaded and how to load it, or ``None`` when it is loaded.

        The text finishes "installed but ...": ``not loaded (DDKIT_PLUGINS=a): add b to DDKIT_PLUGINS``.
        """
        if normalize(distribution) == CORE_DISTRIBUTION:
            return None
        if not self.autoload:
            return f"not loaded ({self.setting}): unset {DISABLE_AUTOLOAD_ENV} to load it"
        if self.allowed is not None and normalize(distribution) not in self.allowed:
            return f"not loaded ({self.setting}): add {distribution} to {ALLOW_ENV} to load it"
        return None


def entry_points() -> list[metadata.EntryPoint]:
    """The installed ``ddkit`` entry points, core's first (others may build on it), then by distribution."""
    return sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (normalize(distribution_name(ep)) != CORE_DISTRIBUTION, distribution_name(ep)),
    )


def normalize(distribution: str) -> str:
    """PEP 503 normalisation, so ``DDKit_Samplers`` and ``ddkit-samplers`` are the same distribution."""
    return re.sub(r"[-_.]+", "-", distribution.strip()).lower()


def distribution_name(ep: metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ep.name


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def core_version() -> str:
    from ddkit import __version__

    return installed_version(CORE_DISTRIBUTION) or __version__
