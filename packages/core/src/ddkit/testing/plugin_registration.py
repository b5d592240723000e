"""Checks that an installed plugin distribution registers itself: subclass :class:`PluginRegistration`.

::

    from ddkit.testing import PluginRegistration

    class TestRegistered(PluginRegistration):
        distribution = "my-ddkit-plugin"           # its entry point carries the same name
        names = {"sampler": ["my-sampler"]}        # what it must register, by kind

The checks read the installed metadata (an editable install is fine), which is what makes
ddkit find a plugin: the entry point exists, is named after the distribution, loads, and
declares the plugin API major version ddkit speaks; ``ddkit plugins --json`` lists the
distribution with every row ``ok``; and it registers every expected name, each of which
``describe`` loads. They need only ddkit-core, and take a few seconds (one ``ddkit plugins``
run in a fresh interpreter).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any, ClassVar

from ddkit.registry import ALLOW_ENV, ENTRY_POINT_GROUP, OFFICIAL_PLUGINS, PLUGIN_API_VERSION, Registry

__all__ = ["PluginRegistration", "installed_plugins_json"]


def installed_plugins_json(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The rows of ``python -m ddkit plugins --json`` run in a fresh interpreter with ``env``.

    A fresh interpreter sees what is installed, as a user's shell would, not this process's registry.
    """
    done = subprocess.run(
        [sys.executable, "-m", "ddkit", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


class PluginRegistration:
    """The registration checks of one installed distribution; pytest collects them in a ``Test*`` subclass.

    Set ``distribution``. ``names`` maps each kind to the names the distribution must register;
    left at ``None``, it is what :data:`ddkit.registry.OFFICIAL_PLUGINS` lists for the
    distribution (the official plugins), so a third-party plugin sets it.

    .. versionadded:: 0.1.0
    """

    #: The distribution's name, which its ``ddkit`` entry point carries too.
    distribution: ClassVar[str] = ""
    #: The names it must register, by kind (``None``: the official names core lists for it).
    names: ClassVar[Mapping[str, Sequence[str]] | None] = None

    def expected_names(self) -> dict[str, list[str]]:
        """``names``, or the official names core lists for ``distribution``; never empty."""
        if not self.distribution:
            raise TypeError(f"{type(self).__name__}: set 'distribution' to the installed distribution's name")
        if self.names is not None:
            expected = {kind: sorted(names) for kind, names in self.names.items()}
        else:
            expected = {
                kind: sorted(name for name, dist in official.items() if dist == self.distribution)
                for kind, official in OFFICIAL_PLUGINS.items()
            }
        expected = {kind: names for kind, names in expected.items() if names}
        if not expected:
            raise TypeError(
                f"{type(self).__name__}: core lists no official names for {self.distribution!r}; set "
                "'names' to what it must register, e.g. names = {'sampler': ['my-sampler']}"
            )
        return expected

    def test_entry_point_is_named_after_the_distribution_and_loads(self) -> None:
        points = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == self.distribution]
        assert len(points) == 1, (
            f"expected one {ENTRY_POINT_GROUP!r} entry point named {self.distribution!r} (got {points}); "
            "is the distribution installed?"
        )
        (entry_point,) = points
        assert entry_point.dist is not None
        assert entry_point.dist.name == self.distribution, entry_point.dist.name
        module = entry_point.load()
        api = module.DDKIT_PLUGIN_API
        assert api.split(".")[0] == PLUGIN_API_VERSION.split(".")[0], (
            f"{entry_point.value} declares DDKIT_PLUGIN_API = {api!r}; ddkit speaks {PLUGIN_API_VERSION}"
        )

    def test_listed_as_ok_by_ddkit_plugins_json(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DDKIT_")}
        rows = [row for row in installed_plugins_json(env) if row["distribution"] == self.distribution]
        assert rows, f"{self.distribution} is missing from ddkit plugins --json"
        assert [row for row in rows if row["status"] != "ok"] == []

    def test_registers_its_names_and_each_describes(self) -> None:
        expected = self.expected_names()
        registry = Registry.discover({ALLOW_ENV: self.distribution})
        rows = [row for row in registry.rows() if row.distribution == self.distribution]
        for kind, names in expected.items():
            provided = sorted(row.name for row in rows if row.kind == kind and row.name)
            missing = [name for name in names if name not in provided]
            assert missing == [], f"{self.distribution} does not register these {kind}s: {missing}"
            assert all(registry.describe(kind, f"{self.distribution}:{name}").summary for name in provided)
