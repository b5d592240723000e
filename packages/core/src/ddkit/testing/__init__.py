"""Helpers for testing plugins without installing them: fresh registries and fake distributions.

Everything here works in-process::

    from ddkit import Record
    from ddkit.testing import fake_plugin, fresh_registry

    with fresh_registry() as registry:  # core's built-ins only, nothing installed leaks in
        registry.register(fake_plugin(sampler=[Record("toy", Toy, "A toy.")]), distribution="toy")
        ddkit.create("sampler", "toy")

Under pytest the fixtures ``ddkit_registry`` and ``ddkit_site`` come from
:mod:`ddkit.testing.pytest_plugin` (enable it with ``-p ddkit.testing.pytest_plugin``).
Test base classes check a plugin: :class:`SamplerConformance` its sampler,
:class:`PluginRegistration` that the installed distribution registers itself.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ddkit.testing._registry import fake_plugin, fresh_registry
from ddkit.testing._site import FakeSite

if TYPE_CHECKING:
    from ddkit.testing.plugin_registration import PluginRegistration
    from ddkit.testing.sampler_conformance import AnalyticGaussian, SamplerConformance

__all__ = [
    "AnalyticGaussian",
    "FakeSite",
    "PluginRegistration",
    "SamplerConformance",
    "fake_plugin",
    "fresh_registry",
]

# The test kits import pytest, torch or subprocess: load each only when asked for.
_LAZY = {
    "AnalyticGaussian": "ddkit.testing.sampler_conformance",
    "SamplerConformance": "ddkit.testing.sampler_conformance",
    "PluginRegistration": "ddkit.testing.plugin_registration",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ddkit.testing' has no attribute {name!r}")
