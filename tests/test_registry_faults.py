"""Plugins that fail in every way a process can, switches that keep plugins out, and saved pipelines.

Issue 20 items 5 and 6: a plugin calling ``sys.exit()`` while importing, in a hook or in a
factory import is ``broken``, not the end of ``ddkit plugins``; a saved pipeline is rebuilt from
the distribution that saved each part even when another plugin registers the same name; and a
name kept out by ``DDKIT_PLUGINS`` / ``DDKIT_DISABLE_PLUGIN_AUTOLOAD`` says so, with the fix.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import ddkit
from ddkit import UnknownPluginError
from ddkit.cli import main
from ddkit.pipeline import Pipeline
from ddkit.registry import PluginWarning, Registry, set_registry
from ddkit.testing import FakeSite, fresh_registry

EXIT_ON_IMPORT = "import sys\nsys.exit(3)\n"
EXIT_IN_HOOK = """
import sys
from ddkit import hookimpl

@hookimpl
def ddkit_samplers():
    sys.exit("hook says bye")
"""
EXIT_IN_FACTORY_IMPORT = """
from ddkit import Record, hookimpl

@hookimpl
def ddkit_samplers():
    return [Record("exiting", "exit_factory_impl:Thing", "Exits when its factory is imported.")]
"""
TOY = """
from ddkit import Record, hookimpl

@hookimpl
def ddkit_samplers():
    return [Record("toy", "toy_plugin_impl:Thing", "A toy sampler.")]
"""
THING = "class Thing:\n    def __init__(self, steps: int = 1):\n        self.steps = steps\n"
# A third party that registers core's schedule name 'linear' (a different schedule under that name).
SHADOW = """
from ddkit import Record, hookimpl

@hookimpl
def ddkit_schedules():
    return [Record("linear", "shadow_plugin_impl:other_linear", "Not core's linear.")]
"""
SHADOW_IMPL = """
from ddkit.diffusion.schedules import cosine

def other_linear(timesteps: int = 1000):
    return cosine(timesteps)
"""
CFG = {
    "schedule": {"name": "linear", "timesteps": 20},
    "model": {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1},
    "sampler": {"name": "ddim", "steps": 4},
}


def _exiting_site(site: FakeSite) -> None:
    site.add_distribution("exit-import", {"exit_import": EXIT_ON_IMPORT})
    site.add_distribution("exit-hook", {"exit_hook": EXIT_IN_HOOK})
    site.add_distribution(
        "exit-factory",
        {"exit_factory": EXIT_IN_FACTORY_IMPORT, "exit_factory_impl": "raise SystemExit(4)\n"},
    )
    site.add_distribution("toy-plugin", {"toy_plugin": TOY, "toy_plugin_impl": THING})


def test_system_exit_from_a_plugin_marks_it_broken_and_the_rest_works(ddkit_site: FakeSite) -> None:
    _exiting_site(ddkit_site)
    with pytest.warns(PluginWarning):
        registry = Registry.discover({"DDKIT_PLUGINS": "exit-import,exit-hook,exit-factory,toy-plugin"})
    status = {p.distribution: (p.status, p.error) for p in registry.plugins}
    assert status["exit-import"] == ("broken", "SystemExit: 3")
    assert status["exit-hook"][0] == "broken"
    assert "SystemExit: hook says bye" in str(status["exit-hook"][1])
    assert status["toy-plugin"] == ("ok", None)
    assert registry.names("sampler") == ["exiting", "toy"]
    assert registry.create("sampler", "toy", steps=3).steps == 3
    # Importing the factory exits: the call fails with an ImportError naming the plugin; nothing exits.
    with pytest.raises(ImportError, match=r"sampler 'exiting' from exit-factory .*SystemExit: 4"):
        registry.create("sampler", "exiting")


def test_keyboard_interrupt_from_a_plugin_still_stops_the_process(ddkit_site: FakeSite) -> None:
    ddkit_site.add_distribution("interrupting", {"interrupting": "raise KeyboardInterrupt\n"})
    with pytest.raises(KeyboardInterrupt):
        Registry.discover({"DDKIT_PLUGINS": "interrupting"})


def test_ddkit_plugins_lists_an_exiting_plugin(
    ddkit_site: FakeSite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _exiting_site(ddkit_site)
    monkeypatch.setenv("DDKIT_PLUGINS", "exit-import,exit-hook,toy-plugin")
    with fresh_registry(discover=False):
        set_registry(None)  # rediscover with the environment above
        assert main(["plugins", "--json"]) == 0
        assert "toy" in ddkit.names("sampler")
    rows = json.loads(capsys.readouterr().out)
    broken = {r["distribution"]: r["status"] for r in rows if r["kind"] is None}
    assert broken["exit-import"] == broken["exit-hook"] == "broken"


def test_unloaded_and_mistyped_plugins_are_listed(
    ddkit_site: FakeSite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ddkit_site.add_distribution("toy-plugin", {"toy_plugin": TOY, "toy_plugin_impl": THING}, version="2.1")
    ddkit_site.add_distribution("shadow-plugin", {"shadow_plugin": SHADOW, "shadow_plugin_impl": SHADOW_IMPL})
    monkeypatch.setenv("DDKIT_PLUGINS", "toy-plugn,shadow-plugin")
    with fresh_registry(discover=False):
        set_registry(None)
        with pytest.warns(PluginWarning, match="'toy-plugn', which is not an installed .*'toy-plugin'"):
            ddkit.names("sampler")
        assert main(["plugins", "--json"]) == 0
        rows = {r["distribution"]: r for r in json.loads(capsys.readouterr().out) if r["kind"] is None}
        assert rows["toy-plugin"]["status"] == "not-loaded"
        assert rows["toy-plugin"]["version"] == "2.1"
        assert "(DDKIT_PLUGINS=toy-plugn,shadow-plugin)" in rows["toy-plugin"]["error"]
        assert rows["toy-plugn"]["status"] == "not-installed"
        assert "did you mean 'toy-plugin'?" in rows["toy-plugn"]["error"]
        assert main(["plugins"]) == 0
        table = capsys.readouterr().out
        assert "[not-installed] DDKIT_PLUGINS names 'toy-plugn'" in table
        assert "[not-loaded] installed but not loaded" in table
        # A third party's name cannot be known without importing it, so the hint says where it may be.
        with pytest.raises(UnknownPluginError) as info:
            ddkit.create("sampler", "toy")
        assert "may come from a plugin that is installed but not loaded: " in str(info.value)
        assert "toy-plugin (not loaded (DDKIT_PLUGINS=toy-plugn,shadow-plugin)" in str(info.value)


def _save(tmp_path: Path) -> Path:
    with fresh_registry(discover=True):
        pipe = Pipeline.from_config(CFG)
        pipe.save(tmp_path / "saved")
    return tmp_path / "saved"


def test_a_plugin_registering_a_builtin_name_does_not_break_a_saved_pipeline(
    ddkit_site: FakeSite, tmp_path: Path
) -> None:
    saved = _save(tmp_path)
    ddkit_site.add_distribution("shadow-plugin", {"shadow_plugin": SHADOW, "shadow_plugin_impl": SHADOW_IMPL})
    with fresh_registry(discover=True):
        with pytest.raises(ddkit.ConfigError, match="registered by 2 plugins"):  # a new config must choose
            Pipeline.from_config(CFG)
        pipe = Pipeline.load(saved)
        assert type(pipe.schedule).__name__ == "NoiseSchedule"
        assert getattr(pipe.schedule, "name", None) == "linear"
        assert pipe.config["schedule"]["name"] == "linear"  # the saved config keeps the plain name


def test_a_saved_part_from_a_plugin_kept_out_by_a_switch_says_installed_but_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = _save(tmp_path)
    for env, value, fix in [
        ("DDKIT_PLUGINS", "ddkit-models", "add ddkit-samplers to DDKIT_PLUGINS"),
        ("DDKIT_DISABLE_PLUGIN_AUTOLOAD", "1", "unset DDKIT_DISABLE_PLUGIN_AUTOLOAD"),
    ]:
        monkeypatch.setenv(env, value)
        with warnings.catch_warnings(), fresh_registry(discover=True):
            warnings.simplefilter("ignore", PluginWarning)
            with pytest.raises(UnknownPluginError) as info:
                Pipeline.load(saved)
        message = str(info.value)
        assert "sampler 'ddim' was provided by ddkit-samplers" in message
        assert f"which is installed but not loaded ({env}={value}): {fix}" in message
        assert "not installed here" not in message
        monkeypatch.delenv(env)


OWN_SCHEDULE = """
from ddkit import Record, hookimpl

@hookimpl
def ddkit_schedules():
    return [Record("shadowed", "{module}_impl:other_linear", "A schedule of its own.")]
"""


def test_a_saved_part_whose_distribution_is_gone_names_it_and_the_other_provider(
    ddkit_site: FakeSite, tmp_path: Path
) -> None:
    import shutil

    info = ddkit_site.add_distribution(
        "first-plugin",
        {"first_plugin": OWN_SCHEDULE.format(module="first_plugin"), "first_plugin_impl": SHADOW_IMPL},
        version="1.2",
    )
    with fresh_registry(discover=True):
        ddkit.Pipeline.from_config({**CFG, "schedule": {"name": "shadowed", "timesteps": 20}}).save(
            tmp_path / "s"
        )
    shutil.rmtree(info)  # first-plugin is uninstalled; second-plugin registers the same name
    ddkit_site.add_distribution(
        "second-plugin",
        {"second_plugin": OWN_SCHEDULE.format(module="second_plugin"), "second_plugin_impl": SHADOW_IMPL},
    )
    with fresh_registry(discover=True), pytest.raises(UnknownPluginError) as raised:
        Pipeline.load(tmp_path / "s")
    message = str(raised.value)
    assert "schedule 'shadowed' was provided by first-plugin 1.2, which is not installed here" in message
    assert "pip install first-plugin==1.2" in message
    assert "second-plugin registers a schedule 'shadowed' too" in message
