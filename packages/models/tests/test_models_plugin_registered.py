"""ddkit-models registers itself through the ``ddkit`` entry-point group, as installed.

The checks come from ddkit's kit: the entry point loads with a compatible plugin API,
``ddkit plugins --json`` lists the distribution as ok, and it registers every official
model name core lists for it, each of which loads.
"""

from __future__ import annotations

from ddkit.testing import PluginRegistration


class TestModelsPluginRegistered(PluginRegistration):
    distribution = "ddkit-models"
