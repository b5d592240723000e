"""Read TOML with ``tomllib``; write the small shape a pipeline config has with a tiny writer.

The writer covers what configs hold: top-level tables of scalars, arrays and inline tables,
and top-level arrays of tables (``[[guidance]]``). It keeps core free of a TOML-writing
dependency; everything it writes reads back with ``tomllib`` to the same values.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["TOMLDecodeError", "dumps", "load", "loads"]

TOMLDecodeError = tomllib.TOMLDecodeError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def load(path: str | Path) -> dict[str, Any]:
    """Parse the TOML file at ``path``."""
    with open(path, "rb") as f:
        return tomllib.load(f)


def loads(text: str) -> dict[str, Any]:
    """Parse TOML text."""
    return tomllib.loads(text)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes (\" \\ \n \t \uXXXX ...) are all valid in TOML basic strings.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key(str(k))} = {_value(v, f'{where}.{k}')}" for k, v in value.items())
        return "{" + items + "}" if items else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    raise TypeError(
        f"cannot write {where} = {value!r} ({type(value).__name__}) to TOML: only str, int, float, bool, "
        "lists and tables can be stored"
    )


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(isinstance(v, Mapping) for v in value)
    )


def _table_body(table: Mapping[str, Any], where: str) -> list[str]:
    return [f"{_key(str(k))} = {_value(v, f'{where}.{k}')}" for k, v in table.items()]


def dumps(doc: Mapping[str, Any]) -> str:
    """Write ``doc`` as TOML: its scalars, then its ``[table]``s and ``[[array]]``s of tables, in order."""
    lines: list[str] = []
    scalars = {k: v for k, v in doc.items() if not isinstance(v, Mapping) and not _is_table_array(v)}
    lines.extend(_table_body(scalars, ""))
    for key, value in doc.items():
        if isinstance(value, Mapping):
            if lines:
                lines.append("")
            lines.append(f"[{_key(key)}]")
            lines.extend(_table_body(value, key))
        elif _is_table_array(value):
            for item in value:
                if lines:
                    lines.append("")
                lines.append(f"[[{_key(key)}]]")
                lines.extend(_table_body(item, key))
    return "\n".join(lines) + "\n"
