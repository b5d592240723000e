"""``ddkit plugins`` (table and --json), ``ddkit --version`` and the subcommand table."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator

import pytest

from ddkit import PLUGIN_API_VERSION, Record, UnknownPluginError, __version__
from ddkit.cli import COMMANDS, main
from ddkit.hookspecs import hookimpl
from ddkit.registry import PluginWarning, Registry
from ddkit.testing import fake_plugin, fresh_registry
from ddkit.testing.plugin_registration import installed_plugins_json

KEYS = {"kind", "name", "distribution", "version", "summary", "status", "error"}


class Toy:
    pass


class Broken:
    @hookimpl
    def ddkit_models(self) -> list[Record]:
        raise ImportError("xformers is not installed\nlong traceback here")


@pytest.fixture
def populated() -> Iterator[Registry]:
    with fresh_registry(builtins=False) as registry:
        _populate(registry)
        yield registry


def _populate(ddkit_registry: Registry) -> None:
    ddkit_registry.register(
        fake_plugin(sampler=[Record("toy", Toy, "A toy sampler."), Record("dup", Toy, "First dup.")]),
        distribution="toy-dist",
        version="1.0",
    )
    ddkit_registry.register(fake_plugin(sampler=[Record("dup", Toy, "Second dup.")]), distribution="dup-dist")
    with pytest.warns(PluginWarning, match="broken-dist"):
        ddkit_registry.register(Broken(), distribution="broken-dist", version="0.1")
    with pytest.warns(PluginWarning, match="new-dist"):
        ddkit_registry.register(
            fake_plugin(api="2.0", model=[Record("new", Toy, "New.")]), distribution="new-dist"
        )


def plugins_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str | None]]:
    assert main(["plugins", "--json", *args]) == 0
    rows: list[dict[str, str | None]] = json.loads(capsys.readouterr().out)
    return rows


def test_json_lists_every_row_with_its_status(
    populated: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = plugins_json(capsys)
    assert all(set(row) == KEYS for row in rows)
    summary = [(r["kind"], r["name"], r["distribution"], r["status"]) for r in rows]
    assert summary == [
        ("sampler", "dup", "dup-dist", "conflict"),
        ("sampler", "dup", "toy-dist", "conflict"),
        ("sampler", "toy", "toy-dist", "ok"),
        (None, None, "broken-dist", "broken"),
        (None, None, "new-dist", "incompatible"),
    ]
    broken = rows[3]
    assert (
        broken["error"] == broken["summary"] == "ddkit_models() raised ImportError: xformers is not installed"
    )
    assert rows[2]["version"] == "1.0"
    assert rows[2]["summary"] == "A toy sampler."


def test_json_kind_filter(populated: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert {row["name"] for row in plugins_json(capsys, "--kind", "sampler")} == {"dup", "toy"}


def test_table_flags_problems_with_their_first_line(
    populated: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "SUMMARY"]
    assert lines[3].split()[:4] == ["sampler", "toy", "toy-dist", "1.0"]
    assert lines[3].endswith("A toy sampler.")
    broken = next(line for line in lines if "broken-dist" in line)
    assert broken.endswith("[broken] ddkit_models() raised ImportError: xformers is not installed")
    assert "[incompatible] new-dist targets ddkit plugin API 2.0" in next(
        line for line in lines if "new-dist" in line
    )
    assert "[conflict]" in lines[1]
    assert "long traceback" not in "\n".join(lines)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"ddkit {__version__} (plugin API {PLUGIN_API_VERSION})"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "plugins" in capsys.readouterr().err


def test_a_new_subcommand_is_one_table_entry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--who", default="world")

    def run(args: argparse.Namespace) -> int:
        """Say hello."""
        if args.who == "nobody":
            raise UnknownPluginError("no sampler named 'nobody'")
        print(f"hello {args.who}")
        return 0

    monkeypatch.setitem(COMMANDS, "hello", (add_arguments, run))
    assert main(["hello", "--who", "ddkit"]) == 0
    assert capsys.readouterr().out == "hello ddkit\n"
    assert main(["hello", "--who", "nobody"]) == 1
    assert capsys.readouterr().err == "ddkit hello: error: no sampler named 'nobody'\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Say hello." in capsys.readouterr().out


def test_python_dash_m_ddkit_is_the_same_cli() -> None:
    rows = installed_plugins_json({**os.environ, "DDKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert rows
    assert {row["distribution"] for row in rows if row["status"] == "ok"} == {"ddkit-core"}
