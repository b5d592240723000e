"""Helpers for testing plugins without installing them: fresh registries and fake distributions.

Everything here works in-process::

    from ddkit import Record
    from ddkit.testing import fake_plugin, fresh_registry

    with fresh_registry() as registry:  # core's built-ins only, nothing installed leaks in
        registry.register(fake_plugin(sampler=[Record("toy", Toy, "A toy.")]), distribution="toy")
        ddkit.create("sampler", "toy")

Under pytest the fixtures ``ddkit_registry`` and ``ddkit_site`` come from
:mod:`ddkit.testing.pytest_plugin` (enable it with ``-p ddkit.testing.pytest_plugin``).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ddkit.testing._registry import fake_plugin, fresh_registry
from ddkit.testing._site import FakeSite

if TYPE_CHECKING:
    from ddkit.testing.sampler_conformance import AnalyticGaussian, SamplerConformance

__all__ = ["AnalyticGaussian", "FakeSite", "SamplerConformance", "fake_plugin", "fresh_registry"]


def __getattr__(name: str) -> Any:
    # The conformance kit imports pytest: load it only when asked for.
    if name in ("AnalyticGaussian", "SamplerConformance"):
        from ddkit.testing import sampler_conformance

        return getattr(sampler_conformance, name)
    raise AttributeError(f"module 'ddkit.testing' has no attribute {name!r}")
