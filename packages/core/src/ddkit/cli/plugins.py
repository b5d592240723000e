"""``ddkit plugins``: what each installed plugin registers, and which plugins failed to load."""

from __future__ import annotations

import argparse
import json
import warnings

from ddkit.records import KINDS
from ddkit.registry import PluginRow, PluginWarning, get_registry

__all__ = ["add_arguments", "format_table", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of objects with keys kind, name, distribution, version, summary, "
        "status (ok, broken, incompatible, conflict, not-loaded, not-installed) and error; a "
        "distribution that registers no names (or is broken, incompatible, kept out by "
        "DDKIT_PLUGINS or DDKIT_DISABLE_PLUGIN_AUTOLOAD, or named in DDKIT_PLUGINS but not installed) "
        "is one object with kind and name null",
    )
    parser.add_argument("--kind", choices=KINDS, help="only list components of this kind")


def run(args: argparse.Namespace) -> int:
    """List installed plugins, the components they register, and any that failed to load.

    Broken and incompatible plugins are listed with the first line of their error rather
    than stopping the listing; names registered by two distributions are marked conflict;
    plugins kept out by DDKIT_PLUGINS or DDKIT_DISABLE_PLUGIN_AUTOLOAD are marked not-loaded,
    and a DDKIT_PLUGINS entry naming no installed plugin is marked not-installed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)  # the listing itself shows them
        registry = get_registry()
    rows = registry.rows()
    if args.kind:
        rows = [row for row in rows if row.kind == args.kind]
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
        return 0
    print(format_table(rows))
    return 0


def format_table(rows: list[PluginRow]) -> str:
    """Aligned columns KIND, NAME, DISTRIBUTION, VERSION, SUMMARY; problems flagged in SUMMARY."""
    header = ("KIND", "NAME", "DISTRIBUTION", "VERSION", "SUMMARY")
    lines = [header]
    for row in rows:
        summary = row.summary if row.status == "ok" else f"[{row.status}] {row.error or row.summary}"
        lines.append((row.kind or "-", row.name or "-", row.distribution, row.version, summary))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(line, widths)), line[-1]]).rstrip()
        for line in lines
    )
