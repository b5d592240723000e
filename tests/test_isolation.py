"""Real installs in fresh virtual environments (uv): what a user with only some packages sees.

One environment holds ddkit-core alone; another adds throw-away plugin distributions built
here: two that register the same sampler name and one whose import raises. Each environment
is built once per module; the checks run in as few interpreter starts as possible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.isolation

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.21"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "{version}"

[project.entry-points.ddkit]
{name} = "{module}"

[tool.hatch.build.targets.wheel]
packages = ["{module}"]
"""

PLUGIN = """\
from ddkit import Record, hookimpl

DDKIT_PLUGIN_API = "1.0"


@hookimpl
def ddkit_samplers():
    return [Record(name, "{module}.impl:Toy", "A toy from {name}.") for name in {names!r}]
"""

IMPL = """\
class Toy:
    origin = "{name}"
"""


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.fail("uv must be on PATH for the isolation tests (pip install uv; nox -s tests installs it)")
    return found


def find_links() -> list[str]:
    """Same rule as noxfile.py: $DDKIT_TORCH_FIND_LINKS, else /opt/wheels when it exists."""
    folder = os.environ.get("DDKIT_TORCH_FIND_LINKS")
    if folder is None:
        folder = "/opt/wheels" if Path("/opt/wheels").is_dir() else ""
    return ["--find-links", folder] if folder else []


def clean_env() -> dict[str, str]:
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("DDKIT_")}


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=clean_env(), timeout=600, check=False
    )
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done


def make_env(root: Path, *requirements: str | Path) -> Path:
    """A fresh venv at ``root`` with pinned torch and ``requirements``; returns its bin folder."""
    run(uv(), "venv", "--quiet", "--python", sys.executable, root)
    bin_dir = root / ("Scripts" if os.name == "nt" else "bin")
    run(
        uv(), "pip", "install", "--quiet", "--python", bin_dir / "python", *find_links(), TORCH, *requirements
    )
    return bin_dir


def make_plugin(folder: Path, name: str, version: str, *, names: list[str], broken: bool = False) -> Path:
    module = name.replace("-", "_")
    project = folder / name
    (project / module).mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT.format(name=name, version=version, module=module))
    init = "raise RuntimeError('toy-broken cannot start\\nsecond line')\n" if broken else ""
    (project / module / "__init__.py").write_text(
        init or PLUGIN.format(module=module, name=name, names=names)
    )
    (project / module / "impl.py").write_text(IMPL.format(name=name))
    return project


def plugins_json(bin_dir: Path) -> list[dict[str, str | None]]:
    rows: list[dict[str, str | None]] = json.loads(run(bin_dir / "ddkit", "plugins", "--json").stdout)
    return rows


def python_json(bin_dir: Path, script: str) -> dict[str, Any]:
    done = run(bin_dir / "python", "-c", script)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


@pytest.fixture(scope="module")
def core_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    run(uv(), "build", "--quiet", "--wheel", "--out-dir", out, ROOT / "packages" / "core")
    (wheel,) = out.glob("ddkit_core-*.whl")
    return wheel


@pytest.fixture(scope="module")
def core_only(tmp_path_factory: pytest.TempPathFactory, core_wheel: Path) -> Path:
    return make_env(tmp_path_factory.mktemp("core-only") / "venv", core_wheel)


@pytest.fixture(scope="module")
def with_toys(tmp_path_factory: pytest.TempPathFactory, core_wheel: Path) -> Path:
    folder = tmp_path_factory.mktemp("toys")
    projects = [
        make_plugin(folder, "toy-plugin-a", "1.0.0", names=["toy", "only-a"]),
        make_plugin(folder, "toy-plugin-b", "2.0.0", names=["toy"]),
        make_plugin(folder, "toy-broken", "0.1.0", names=[], broken=True),
    ]
    return make_env(folder / "venv", core_wheel, *projects)


CORE_SCRIPT = """
import json, ddkit
result = {"names": {kind: ddkit.names(kind) for kind in ddkit.KINDS}}
try:
    ddkit.create("sampler", "ddim")
except Exception as exc:
    result["error"] = [type(exc).__name__, str(exc)]
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def core_result(core_only: Path) -> dict[str, Any]:
    return python_json(core_only, CORE_SCRIPT)


def test_only_core_lists_core_builtins_and_nothing_else(core_only: Path, core_result: dict[str, Any]) -> None:
    rows = plugins_json(core_only)
    assert rows
    assert {row["distribution"] for row in rows} == {"ddkit-core"}
    assert {row["status"] for row in rows} == {"ok"}
    result = core_result
    listed: dict[str, list[str]] = {}
    for row in rows:
        if row["kind"] is not None and row["name"] is not None:
            listed.setdefault(row["kind"], []).append(row["name"])
    assert {kind: names for kind, names in result["names"].items() if names} == listed


def test_only_core_says_which_package_provides_ddim(core_result: dict[str, Any]) -> None:
    kind, message = core_result["error"]
    assert kind == "UnknownPluginError"
    assert "no sampler named 'ddim'" in message
    assert (
        "'ddim' is provided by ddkit-samplers, which is not installed: pip install ddkit-samplers" in message
    )


TOYS_SCRIPT = """
import json, ddkit
result = {
    "only-a": ddkit.create("sampler", "only-a").origin,
    "qualified": ddkit.create("sampler", "toy-plugin-b:toy").origin,
}
try:
    ddkit.create("sampler", "toy")
except ddkit.PluginConflictError as exc:
    result["conflict"] = str(exc)
print(json.dumps(result))
"""


def test_installed_plugins_appear_and_a_broken_one_is_listed(with_toys: Path) -> None:
    rows = plugins_json(with_toys)
    toys = {
        (r["kind"], r["name"], r["distribution"], r["version"], r["status"])
        for r in rows
        if r["distribution"] != "ddkit-core"
    }
    assert toys == {
        ("sampler", "only-a", "toy-plugin-a", "1.0.0", "ok"),
        ("sampler", "toy", "toy-plugin-a", "1.0.0", "conflict"),
        ("sampler", "toy", "toy-plugin-b", "2.0.0", "conflict"),
        (None, None, "toy-broken", "0.1.0", "broken"),
    }
    (broken,) = [r for r in rows if r["distribution"] == "toy-broken"]
    assert broken["error"] == "RuntimeError: toy-broken cannot start"


def test_installed_plugins_work_and_conflicts_name_both(with_toys: Path) -> None:
    result = python_json(with_toys, TOYS_SCRIPT)
    assert result["only-a"] == "toy-plugin-a"
    assert result["qualified"] == "toy-plugin-b"
    conflict = str(result["conflict"])
    assert "sampler 'toy' is registered by 2 plugins: toy-plugin-a 1.0.0, toy-plugin-b 2.0.0" in conflict
    assert "PluginWarning: ddkit plugin toy-broken 0.1.0 is broken" in str(result["stderr"])
