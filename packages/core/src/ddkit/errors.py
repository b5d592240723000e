"""Exceptions raised by ddkit. Each names the problem and, where there is one, the fix."""

from __future__ import annotations

__all__ = [
    "CompositionError",
    "ConfigError",
    "IncompatiblePluginError",
    "IntegrityError",
    "PluginConflictError",
    "UnknownPluginError",
]


class UnknownPluginError(LookupError):
    """A kind or name that no installed plugin provides."""


class PluginConflictError(LookupError):
    """Two distributions register the same name for one kind; use ``distribution:name``."""


class IncompatiblePluginError(ImportError):
    """A plugin declares a plugin API major version this ddkit does not speak."""


class ConfigError(ValueError):
    """A configuration that cannot be built: wrong key, wrong type or wrong value."""


class CompositionError(ValueError):
    """Parts that each work alone but not together (e.g. a guidance the sampler cannot take)."""


class IntegrityError(ValueError):
    """A saved file that is truncated, tampered with or from another configuration."""
