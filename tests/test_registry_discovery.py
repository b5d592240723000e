"""Entry-point discovery in-process, with fake installed distributions on a temporary sys.path."""

from __future__ import annotations

import pytest

import ddkit
from ddkit import PluginConflictError, UnknownPluginError
from ddkit.registry import PluginWarning, Registry
from ddkit.testing import FakeSite

PLUGIN = """
from ddkit import Record, hookimpl

DDKIT_PLUGIN_API = "1.0"

@hookimpl
def ddkit_samplers():
    return [Record({name!r}, "{module}_impl:Thing", "A {name} sampler.")]
"""
IMPL = "class Thing:\n    def __init__(self, steps: int = 1):\n        self.steps = steps\n"


def add_plugin(site: FakeSite, distribution: str, sampler: str, *, version: str = "0.0.1") -> str:
    """A fake distribution registering ``sampler`` lazily; returns its plugin module's name."""
    module = distribution.replace("-", "_")
    site.add_distribution(
        distribution,
        {module: PLUGIN.format(name=sampler, module=module), f"{module}_impl": IMPL},
        version=version,
        entry_points={distribution: module},
    )
    return module


def only(*distributions: str) -> dict[str, str]:
    return {"DDKIT_PLUGINS": ",".join(distributions)}


def test_an_installed_distribution_is_discovered(ddkit_site: FakeSite) -> None:
    add_plugin(ddkit_site, "toy-plugin", "toy", version="1.4.0")
    registry = Registry.discover(only("toy-plugin"))
    assert registry.names("sampler") == ["toy"]
    assert registry.create("sampler", "toy", steps=2).steps == 2
    description = registry.describe("sampler", "toy")
    assert (description.distribution, description.version) == ("toy-plugin", "1.4.0")
    assert {p.distribution for p in registry.plugins} == {"ddkit-core", "toy-plugin"}
    assert registry.plugins[0].distribution == "ddkit-core"  # core first, always


def test_a_plugin_that_fails_to_import_is_listed_as_broken(ddkit_site: FakeSite) -> None:
    add_plugin(ddkit_site, "good-plugin", "good")
    ddkit_site.add_distribution(
        "bad-plugin", {"bad_plugin": "raise RuntimeError('no GPU here\\nmore')"}, version="0.2"
    )
    ddkit_site.add_distribution("gone-plugin", entry_points={"gone-plugin": "gone_plugin_module"})
    with pytest.warns(PluginWarning) as warned:
        registry = Registry.discover(only("good-plugin", "bad-plugin", "gone-plugin"))
    assert sorted(str(w.message).split(" is ")[0] for w in warned) == [
        "ddkit plugin bad-plugin 0.2",
        "ddkit plugin gone-plugin 0.0.1",
    ]
    errors = {
        row.distribution: (row.kind, row.status, row.error)
        for row in registry.rows()
        if row.status not in ("ok", "not-loaded")
    }
    assert errors == {
        "bad-plugin": (None, "broken", "RuntimeError: no GPU here"),
        "gone-plugin": (None, "broken", "ModuleNotFoundError: No module named 'gone_plugin_module'"),
    }
    assert registry.create("sampler", "good").steps == 1


def test_the_allow_list_loads_only_named_distributions_and_core(ddkit_site: FakeSite) -> None:
    add_plugin(ddkit_site, "toy-a", "alpha")
    add_plugin(ddkit_site, "toy-b", "beta")
    registry = Registry.discover(only(" Toy_A "))
    assert registry.names("sampler") == ["alpha"]
    assert registry.skipped["toy-b"] == (
        "not loaded (DDKIT_PLUGINS=Toy_A): add toy-b to DDKIT_PLUGINS to load it"
    )
    assert "ddkit-core" in {p.distribution for p in registry.plugins}
    with pytest.raises(UnknownPluginError, match="no sampler named 'beta'"):
        registry.create("sampler", "beta")


def test_an_empty_allow_list_loads_only_core(ddkit_site: FakeSite) -> None:
    add_plugin(ddkit_site, "toy-a", "alpha")
    registry = Registry.discover(only())
    assert [p.distribution for p in registry.plugins] == ["ddkit-core"]


def test_the_allow_list_warns_about_a_name_that_is_not_installed(ddkit_site: FakeSite) -> None:
    with pytest.warns(PluginWarning, match="DDKIT_PLUGINS names 'not-installed-plugin'"):
        Registry.discover(only("not-installed-plugin"))


@pytest.mark.parametrize(("value", "autoload"), [("1", False), ("true", False), ("0", True), ("false", True)])
def test_disable_autoload_loads_only_core(ddkit_site: FakeSite, value: str, autoload: bool) -> None:
    add_plugin(ddkit_site, "toy-a", "alpha")
    registry = Registry.discover({"DDKIT_DISABLE_PLUGIN_AUTOLOAD": value, "DDKIT_PLUGINS": "toy-a"})
    assert ("alpha" in registry.names("sampler")) is autoload
    if not autoload:
        assert [p.distribution for p in registry.plugins] == ["ddkit-core"]
        assert f"not loaded (DDKIT_DISABLE_PLUGIN_AUTOLOAD={value})" in registry.skipped["toy-a"]


def test_the_environment_is_read_by_the_process_wide_registry(
    ddkit_site: FakeSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddkit.testing import fresh_registry

    add_plugin(ddkit_site, "toy-a", "alpha")
    monkeypatch.setenv("DDKIT_PLUGINS", "toy-a")
    with fresh_registry(discover=True):
        assert ddkit.names("sampler") == ["alpha"]
    monkeypatch.setenv("DDKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    with fresh_registry(discover=True):
        assert ddkit.names("sampler") == []


def test_same_entry_point_name_in_two_distributions_loads_both(ddkit_site: FakeSite) -> None:
    # pluggy's own loader would silently skip the second; ddkit's does not.
    for distribution, sampler in (("dist-one", "one"), ("dist-two", "two")):
        module = distribution.replace("-", "_")
        ddkit_site.add_distribution(
            distribution,
            {module: PLUGIN.format(name=sampler, module=module), f"{module}_impl": IMPL},
            entry_points={"plugin": module},
        )
    registry = Registry.discover(only("dist-one", "dist-two"))
    assert registry.names("sampler") == ["one", "two"]


def test_two_distributions_with_one_name_conflict(ddkit_site: FakeSite) -> None:
    add_plugin(ddkit_site, "first-plugin", "shared", version="1.0")
    add_plugin(ddkit_site, "second-plugin", "shared", version="2.5")
    registry = Registry.discover(only("first-plugin", "second-plugin"))
    with pytest.raises(PluginConflictError, match=r"first-plugin 1\.0, second-plugin 2\.5"):
        registry.create("sampler", "shared")
    assert registry.create("sampler", "second-plugin:shared").steps == 1


def test_two_entry_points_for_one_module_register_it_once(ddkit_site: FakeSite) -> None:
    add_plugin(ddkit_site, "origin-plugin", "origin")
    ddkit_site.add_distribution("copy-plugin", entry_points={"copy-plugin": "origin_plugin"})
    with pytest.warns(PluginWarning, match="origin-plugin"):
        registry = Registry.discover(only("origin-plugin", "copy-plugin"))
    # Distributions load in name order, so copy-plugin registered the module first.
    broken = {p.distribution: p.error for p in registry.plugins if p.status == "broken"}
    assert broken == {"origin-plugin": "'origin_plugin' is already registered as 'copy-plugin#1'"}
    assert registry.names("sampler") == ["origin"]


def test_an_official_distribution_that_is_skipped_or_broken_says_so(ddkit_site: FakeSite) -> None:
    # A fake ddkit-samplers first on sys.path shadows any installed one.
    ddkit_site.add_distribution(
        "ddkit-samplers", {"fake_ddkit_samplers": "raise ImportError('torch too old')"}
    )
    skipped = Registry.discover(only())
    not_loaded = (
        r"ddkit-samplers, which is installed but not loaded \(DDKIT_PLUGINS=\): add ddkit-samplers to"
    )
    with pytest.raises(UnknownPluginError, match=not_loaded):
        skipped.create("sampler", "ddim")
    with pytest.warns(PluginWarning):
        broken = Registry.discover(only("ddkit-samplers"))
    with pytest.raises(UnknownPluginError, match="installed but broken: ImportError: torch too old"):
        broken.create("sampler", "ddim")


def test_core_registers_itself_without_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ddkit.registry._discovery.metadata.entry_points", lambda group: [])
    registry = Registry.discover({})
    assert [(p.distribution, p.module, p.status) for p in registry.plugins] == [
        ("ddkit-core", "ddkit._builtins", "ok")
    ]
