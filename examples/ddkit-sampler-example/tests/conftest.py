"""Every test sees a fresh registry holding core's built-ins and this plugin, registered in-process.

That is how a plugin is tested without installing it (and without other installed plugins
leaking in): ``ddkit_registry`` comes from ``ddkit.testing.pytest_plugin``.
"""

from __future__ import annotations

import pytest
import torch
from ddkit.registry import Registry

import ddkit_sampler_example
from ddkit_sampler_example import _plugin

torch.set_num_threads(1)

DISTRIBUTION = "ddkit-sampler-example"


@pytest.fixture(autouse=True)
def example_registry(ddkit_registry: Registry) -> Registry:
    ddkit_registry.register(_plugin, distribution=DISTRIBUTION, version=ddkit_sampler_example.__version__)
    return ddkit_registry
