"""Exceptions raised by ddkit. Each names the problem and, where there is one, the fix.

Every one derives from :class:`DdkitError` and from the built-in a caller would catch without
knowing ddkit (``ValueError`` for a bad value, ``TypeError`` for a value of the wrong type,
``LookupError`` for an unknown name), so ``except DdkitError`` tells ddkit's deliberate refusals
from bugs, and older ``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = [
    "CompositionError",
    "ConfigError",
    "DdkitError",
    "IncompatiblePluginError",
    "InputError",
    "InputTypeError",
    "IntegrityError",
    "NonFiniteError",
    "PluginConflictError",
    "UnknownPluginError",
]


class DdkitError(Exception):
    """Base of every error ddkit raises on purpose: the message names the bad value and the fix.

    .. versionadded:: 0.2.0
    """


class UnknownPluginError(DdkitError, LookupError):
    """A kind or name that no installed plugin provides."""


class PluginConflictError(DdkitError, LookupError):
    """Two distributions register the same name for one kind; use ``distribution:name``."""


class IncompatiblePluginError(DdkitError, ImportError):
    """A plugin declares a plugin API major version this ddkit does not speak."""


class ConfigError(DdkitError, ValueError):
    """A configuration that cannot be built: wrong key, wrong type or wrong value."""


class CompositionError(DdkitError, ValueError):
    """Parts that each work alone but not together (e.g. a guidance the sampler cannot take)."""


class IntegrityError(DdkitError, ValueError):
    """A saved file that is truncated, tampered with or from another configuration."""


class InputError(DdkitError, ValueError):
    """A value ddkit cannot use: out of range, not finite, or a shape that does not fit.

    .. versionadded:: 0.2.0
    """


class InputTypeError(DdkitError, TypeError):
    """A value of the wrong type (a float where an int is needed, a string where a tensor is).

    .. versionadded:: 0.2.0
    """


class NonFiniteError(InputError):
    """NaN or infinity where finite numbers are needed: a parameter, ``x_T``, or a model's output.

    .. versionadded:: 0.2.0
    """
