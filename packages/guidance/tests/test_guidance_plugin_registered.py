"""ddkit-guidance registers itself through the ``ddkit`` entry-point group, as installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import ddkit
from ddkit.registry import OFFICIAL_PLUGINS, Registry

DISTRIBUTION = "ddkit-guidance"
KIND = "guidance"


def test_entry_point_is_named_after_the_distribution_and_loads() -> None:
    (entry_point,) = [ep for ep in metadata.entry_points(group="ddkit") if ep.name == DISTRIBUTION]
    assert entry_point.dist is not None
    assert entry_point.dist.name == DISTRIBUTION
    module = entry_point.load()
    assert module.DDKIT_PLUGIN_API.split(".")[0] == ddkit.PLUGIN_API_VERSION.split(".")[0]


def test_listed_as_ok_by_ddkit_plugins_json() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDKIT_")}
    done = subprocess.run(
        [sys.executable, "-m", "ddkit", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [row for row in json.loads(done.stdout) if row["distribution"] == DISTRIBUTION]
    assert rows, f"{DISTRIBUTION} is missing from ddkit plugins --json"
    assert [row for row in rows if row["status"] != "ok"] == []


def test_registers_every_official_name_core_lists_for_it() -> None:
    registry = Registry.discover({"DDKIT_PLUGINS": DISTRIBUTION})
    official = sorted(name for name, dist in OFFICIAL_PLUGINS[KIND].items() if dist == DISTRIBUTION)
    rows = registry.rows()
    provided = sorted(
        row.name for row in rows if row.distribution == DISTRIBUTION and row.kind == KIND and row.name
    )
    assert [name for name in official if name not in provided] == []
    assert all(registry.describe(KIND, f"{DISTRIBUTION}:{name}").summary for name in provided)
