"""The registry in-process: lookup, suggestions, conflicts, broken and incompatible plugins, caching."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

import ddkit
from ddkit import IncompatiblePluginError, PluginConflictError, Record, UnknownPluginError
from ddkit.hookspecs import hookimpl
from ddkit.registry import Description, PluginRow, PluginWarning, Registry, get_registry, reset, set_registry
from ddkit.testing import FakeSite, fake_plugin, fresh_registry


class Toy:
    def __init__(self, steps: int = 10, eta: float = 0.0) -> None:
        self.steps = steps
        self.eta = eta


def toy(name: str = "toy", summary: str = "A toy sampler.") -> Record:
    return Record(name, Toy, summary)


def test_names_create_describe(ddkit_registry: Registry) -> None:
    ddkit_registry.register(
        fake_plugin(sampler=[toy(), toy("alpha")]), distribution="toy-dist", version="1.2.3"
    )
    assert ddkit.names("sampler") == ["alpha", "toy"]
    made = ddkit.create("sampler", "toy", steps=3)
    assert isinstance(made, Toy)
    assert made.steps == 3
    assert ddkit.describe("sampler", "toy") == Description(
        kind="sampler",
        name="toy",
        summary="A toy sampler.",
        distribution="toy-dist",
        version="1.2.3",
        paper="",
        parameters={"steps": "int = 10", "eta": "float = 0.0"},
        status="ok",
    )


def test_lookup_is_case_and_space_insensitive(ddkit_registry: Registry) -> None:
    ddkit_registry.register(fake_plugin(sampler=[toy()]), distribution="toy-dist")
    assert isinstance(ddkit.create("sampler", " TOY "), Toy)


def test_unknown_kind_suggests_the_closest(ddkit_registry: Registry) -> None:
    with pytest.raises(
        UnknownPluginError, match=r"unknown kind 'samplers' \(did you mean 'sampler'\?\)"
    ) as info:
        ddkit.names("samplers")
    assert isinstance(info.value, LookupError)
    assert "schedule, parameterization, model, sampler, guidance, resampler" in str(info.value)


def test_unknown_name_lists_available_and_suggests(ddkit_registry: Registry) -> None:
    ddkit_registry.register(fake_plugin(sampler=[toy(), toy("alpha")]), distribution="toy-dist")
    with pytest.raises(UnknownPluginError) as info:
        ddkit.create("sampler", "tyo")
    message = str(info.value)
    assert message.startswith("no sampler named 'tyo'; did you mean 'toy'?")
    assert "available samplers: alpha, toy" in message


def test_official_name_not_installed_says_what_to_install(
    ddkit_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ddkit.registry._discovery.installed_version", lambda distribution: None)
    with pytest.raises(UnknownPluginError) as info:
        ddkit.create("sampler", "ddim")
    message = str(info.value)
    assert "did you mean" not in message  # 'ddim' is a real name, just not installed
    assert (
        "'ddim' is provided by ddkit-samplers, which is not installed: pip install ddkit-samplers" in message
    )
    with pytest.raises(
        UnknownPluginError, match=r"(?s)did you mean 'classifier-free'.*pip install ddkit-guidance"
    ):
        ddkit.create("guidance", "clasifier-fre")


def test_official_name_installed_but_not_in_this_registry(
    ddkit_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ddkit.registry._discovery.installed_version", lambda distribution: "0.1.0")
    with pytest.raises(
        UnknownPluginError, match=r"ddkit-models, which is installed \(0.1.0\) but not loaded"
    ):
        ddkit.create("model", "adm-unet")


def test_qualified_name_picks_a_distribution(ddkit_registry: Registry) -> None:
    ddkit_registry.register(fake_plugin(sampler=[toy()]), distribution="Toy_Dist")
    assert isinstance(ddkit.create("sampler", "toy-dist:toy"), Toy)
    assert ddkit.describe("sampler", "TOY.DIST:toy").distribution == "Toy_Dist"
    with pytest.raises(
        UnknownPluginError, match=r"no plugin distribution 'toy-dits' is loaded; did you mean"
    ):
        ddkit.create("sampler", "toy-dits:toy")
    with pytest.raises(UnknownPluginError, match=r"toy-dist registers no sampler named 'tyo'; did you mean"):
        ddkit.create("sampler", "toy-dist:tyo")


def test_conflict_names_both_distributions_and_other_names_keep_working(ddkit_registry: Registry) -> None:
    ddkit_registry.register(fake_plugin(sampler=[toy(), toy("solo")]), distribution="dist-a", version="1.0")
    ddkit_registry.register(
        fake_plugin(sampler=[toy("toy", "Another toy.")]), distribution="dist-b", version="2.0"
    )
    with pytest.raises(PluginConflictError) as info:
        ddkit.create("sampler", "toy")
    message = str(info.value)
    assert "sampler 'toy' is registered by 2 plugins: dist-a 1.0, dist-b 2.0" in message
    assert "'dist-a:toy' or 'dist-b:toy'" in message
    with pytest.raises(PluginConflictError):
        ddkit.describe("sampler", "toy")
    assert isinstance(ddkit.create("sampler", "solo"), Toy)
    assert ddkit.describe("sampler", "dist-b:toy").summary == "Another toy."
    assert ddkit.describe("sampler", "dist-b:toy").status == "conflict"
    assert ddkit.names("sampler") == ["solo", "toy"]
    statuses = {(row.name, row.distribution): row.status for row in ddkit_registry.rows()}
    assert statuses[("toy", "dist-a")] == statuses[("toy", "dist-b")] == "conflict"
    assert statuses[("solo", "dist-a")] == "ok"


class RaisingHook:
    @hookimpl
    def ddkit_samplers(self) -> list[Record]:
        raise RuntimeError("boom\nsecond line")


def test_a_hook_that_raises_is_broken_not_fatal(ddkit_registry: Registry) -> None:
    ddkit_registry.register(fake_plugin(sampler=[toy()]), distribution="good")
    with pytest.warns(PluginWarning, match="ddkit plugin bad 0.3 is broken and was skipped"):
        info = ddkit_registry.register(RaisingHook(), distribution="bad", version="0.3")
    assert info.status == "broken"
    assert info.error == "ddkit_samplers() raised RuntimeError: boom"
    assert isinstance(ddkit.create("sampler", "toy"), Toy)
    assert PluginRow(None, None, "bad", "0.3", info.error, "broken", info.error) in ddkit_registry.rows()
    with pytest.raises(
        UnknownPluginError, match=r"plugins that failed to load: bad 0.3 \(broken: ddkit_samplers"
    ):
        ddkit.create("sampler", "nothing")


@pytest.mark.parametrize(
    ("plugin", "error"),
    [
        (
            SimpleNamespace(ddkit_samplers=hookimpl(lambda: None)),
            "ddkit_samplers() must return a list of ddkit.Record (got NoneType)",
        ),
        (
            SimpleNamespace(ddkit_samplers=hookimpl(lambda: ["ddim"])),
            "ddkit_samplers() must return ddkit.Record items (got str 'ddim')",
        ),
        (
            SimpleNamespace(ddkit_sampler=hookimpl(lambda: [])),
            "implements unknown hook 'ddkit_sampler'; did you mean 'ddkit_samplers'?",
        ),
        (
            SimpleNamespace(DDKIT_PLUGIN_API=1, ddkit_samplers=hookimpl(lambda: [])),
            "DDKIT_PLUGIN_API must be a version string like '1.0' (got 1)",
        ),
    ],
    ids=["returns-none", "returns-strings", "unknown-hook", "api-not-a-string"],
)
def test_a_plugin_breaking_the_contract_is_broken(
    ddkit_registry: Registry, plugin: object, error: str
) -> None:
    with pytest.warns(PluginWarning):
        info = ddkit_registry.register(plugin, distribution="bad")
    assert info.status == "broken"
    assert info.error is not None
    assert info.error.startswith(error)
    assert not ddkit_registry.plugin_manager.is_registered(plugin)


def test_incompatible_api_major_is_listed_and_not_registered(ddkit_registry: Registry) -> None:
    with pytest.warns(PluginWarning, match="is incompatible"):
        info = ddkit_registry.register(
            fake_plugin(api="2.0", sampler=[toy()]), distribution="future", version="3.0"
        )
    assert info.status == "incompatible"
    assert info.api == "2.0"
    assert info.error is not None
    assert "targets ddkit plugin API 2.0, but this ddkit speaks plugin API 1.0" in info.error
    assert ddkit.names("sampler") == []
    with pytest.raises(
        UnknownPluginError, match=r"'toy' is provided by future 3\.0, which is incompatible"
    ) as raised:
        ddkit.create("sampler", "toy")
    assert isinstance(raised.value.__cause__, IncompatiblePluginError)
    row = next(row for row in ddkit_registry.rows() if row.distribution == "future")
    assert (row.kind, row.name, row.status) == (None, None, "incompatible")


@pytest.mark.parametrize("api", ["1", "1.0", "1.7", "1.x", None])
def test_same_api_major_is_compatible(ddkit_registry: Registry, api: str | None) -> None:
    info = ddkit_registry.register(fake_plugin(api=api, sampler=[toy()]), distribution="now")
    assert info.status == "ok"
    assert ddkit.names("sampler") == ["toy"]


def test_listing_does_not_import_string_factories(ddkit_registry: Registry, ddkit_site: FakeSite) -> None:
    source = "class Thing:\n    def __init__(self, size: int = 1):\n        self.size = size\n"
    ddkit_site.add_distribution("lazy-dist", {"lazy_probe_impl": source})
    plugin = fake_plugin(sampler=[Record("lazy", "lazy_probe_impl:Thing", "Imported on first use.")])
    ddkit_registry.register(plugin, distribution="lazy-dist")
    assert ddkit.names("sampler") == ["lazy"]
    assert [row.name for row in ddkit_registry.rows() if row.kind == "sampler"] == ["lazy"]
    assert "lazy_probe_impl" not in sys.modules
    assert ddkit.create("sampler", "lazy", size=4).size == 4
    assert "lazy_probe_impl" in sys.modules
    assert ddkit.describe("sampler", "lazy").parameters == {"size": "int = 1"}


def test_a_string_factory_that_cannot_be_imported_names_the_component(ddkit_registry: Registry) -> None:
    plugin = fake_plugin(sampler=[Record("ghost", "no_such_module_for_ddkit:Thing", "Missing.")])
    ddkit_registry.register(plugin, distribution="ghost-dist", version="0.1")
    assert ddkit.names("sampler") == ["ghost"]
    with pytest.raises(ImportError, match=r"sampler 'ghost' from ghost-dist 0.1: cannot load its factory"):
        ddkit.create("sampler", "ghost")


def test_register_rejects_the_same_object_twice_and_empty_distributions(ddkit_registry: Registry) -> None:
    plugin = fake_plugin(sampler=[toy()])
    ddkit_registry.register(plugin, distribution="once")
    with pytest.raises(ValueError, match="already registered"):
        ddkit_registry.register(plugin, distribution="twice")
    with pytest.raises(ValueError, match="distribution must be a non-empty name"):
        ddkit_registry.register(fake_plugin(), distribution=" ")


def test_registry_is_cached_until_reset() -> None:
    previous = set_registry(None)
    try:
        first = get_registry()
        assert get_registry() is first
        reset()
        assert get_registry() is not first
    finally:
        set_registry(previous)


def test_reset_rereads_the_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = set_registry(None)
    try:
        monkeypatch.setenv("DDKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
        assert {p.distribution for p in get_registry().plugins} == {"ddkit-core"}
    finally:
        set_registry(previous)


def test_fresh_registry_restores_the_previous_one() -> None:
    outer = Registry()
    previous = set_registry(outer)
    try:
        with fresh_registry() as inner:
            assert get_registry() is inner
            assert [p.distribution for p in inner.plugins] == ["ddkit-core"]
        assert get_registry() is outer
        with fresh_registry(builtins=False) as empty:
            assert empty.plugins == ()
    finally:
        set_registry(previous)


def test_core_builtins_are_listed_even_without_names(ddkit_registry: Registry) -> None:
    rows = ddkit_registry.rows()
    assert {row.distribution for row in rows} == {"ddkit-core"}
    assert all(row.status == "ok" for row in rows)
