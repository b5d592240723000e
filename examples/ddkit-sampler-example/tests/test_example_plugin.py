"""The plugin itself: its entry point, its plugin API version, and cheap listing.

``TestInstalledPlugin`` and ``test_installed_metadata_names_the_plugin_module`` read the
installed metadata (``pip install -e .`` first); the other tests register the plugin in-process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import ddkit
from ddkit.registry import Registry
from ddkit.testing import PluginRegistration

import ddkit_sampler_example
from ddkit_sampler_example import _plugin

DISTRIBUTION = "ddkit-sampler-example"


def test_it_declares_the_plugin_api_major_version_ddkit_speaks() -> None:
    assert _plugin.DDKIT_PLUGIN_API.split(".")[0] == ddkit.PLUGIN_API_VERSION.split(".")[0]


def test_its_names_resolve_to_this_distribution(example_registry: Registry) -> None:
    (plugin,) = [p for p in example_registry.plugins if p.distribution == DISTRIBUTION]
    assert (plugin.status, plugin.api, plugin.version) == ("ok", "1.0", ddkit_sampler_example.__version__)
    assert "unipc" in ddkit.names("sampler")
    assert "laplace" in ddkit.names("schedule")
    sampler = ddkit.describe("sampler", "unipc")
    assert (sampler.distribution, sampler.paper.split(",")[0]) == (DISTRIBUTION, "Zhao et al. 2023")
    assert sampler.parameters["order"] == "Literal[1, 2, 3] = 2"
    schedule = ddkit.describe("schedule", "laplace")
    assert schedule.parameters["timesteps"] == "int = 1000"


def test_installed_metadata_names_the_plugin_module() -> None:
    """Run after ``pip install`` (editable is fine): the entry point is what makes ddkit find the plugin."""
    (point,) = [ep for ep in metadata.entry_points(group="ddkit") if ep.name == DISTRIBUTION]
    assert point.value == "ddkit_sampler_example._plugin"
    assert point.dist is not None
    assert point.dist.version == ddkit_sampler_example.__version__


class TestInstalledPlugin(PluginRegistration):
    """ddkit's registration checks: the entry point, ``ddkit plugins --json``, and these names."""

    distribution = DISTRIBUTION
    names: ClassVar[Mapping[str, Sequence[str]]] = {"sampler": ["unipc"], "schedule": ["laplace"]}


def test_listing_imports_neither_the_sampler_nor_the_schedule() -> None:
    source = Path(ddkit_sampler_example.__file__).parent.parent
    script = (
        "import sys, ddkit_sampler_example._plugin as p\n"
        "p.ddkit_samplers(), p.ddkit_schedules()\n"
        "print(sorted(m for m in sys.modules if m.startswith('ddkit_sampler_example')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(source), "PATH": ""},
        timeout=120,
    )
    assert done.stdout.strip() == "['ddkit_sampler_example', 'ddkit_sampler_example._plugin']"
