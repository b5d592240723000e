"""Files and directories that a crash, a full disk or an I/O error never leaves half-written.

One mechanism serves checkpoints and pipeline saves: everything is written into a temporary
sibling directory (each file flushed and fsynced, a manifest of SHA-256 hashes last), which is
then renamed into place. Replacing an existing directory takes two renames (the old one aside,
the new one in); a kill between them leaves both complete copies under their temporary names,
and :func:`recover_dir` puts the complete one back. Deleting renames to a trash name first, so a
half-deleted directory never looks like a valid one.

``DDKIT_TEST_SLOW_WRITE`` (seconds, test-only) sleeps at every :func:`fault_point`, widening
the windows in which the reliability tests kill a writer; it is never meant for real runs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "SLOW_WRITE_ENV",
    "fault_point",
    "fsync_dir",
    "hash_files",
    "recover_dir",
    "remove_dir",
    "replace_dir",
    "sibling",
    "siblings_of",
    "write_file",
]

#: Test-only: seconds to sleep at every fault point (see the module docstring).
SLOW_WRITE_ENV = "DDKIT_TEST_SLOW_WRITE"
#: Suffixes of the temporary siblings: a write in progress, an old copy set aside, one being deleted.
_SIBLING = re.compile(r"^(?P<base>.+)\.(?P<kind>tmp|old|trash)-[0-9a-f]{8}$")


def fault_point(label: str) -> None:
    """A place where a kill must leave a recoverable state; tests sleep or stop here (``label`` names it)."""
    delay = os.environ.get(SLOW_WRITE_ENV)
    if delay:
        time.sleep(float(delay))


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it; an OSError names the path (``f.write`` alone does not)."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        code = exc.errno if exc.errno is not None else errno.EIO
        raise OSError(code, exc.strerror or os.strerror(code), str(path)) from exc


def fsync_dir(path: Path) -> None:
    """Make renames and new entries in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sibling(final: Path, kind: str) -> Path:
    """A fresh temporary sibling of ``final``: ``<name>.tmp-1a2b3c4d`` (``kind``: tmp, old or trash)."""
    return final.with_name(f"{final.name}.{kind}-{secrets.token_hex(4)}")


def siblings_of(final: Path) -> list[tuple[str, Path]]:
    """``(kind, path)`` of every temporary sibling of ``final`` (a write, an old copy, a deletion)."""
    if not final.parent.is_dir():
        return []
    out = []
    for entry in final.parent.iterdir():
        m = _SIBLING.match(entry.name)
        if m and m.group("base") == final.name and entry.is_dir():
            out.append((m.group("kind"), entry))
    return sorted(out, key=lambda item: item[1].name)


def hash_files(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"sha256": ..., "size": ...}}`` of files in ``directory``."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        digest = hashlib.sha256()
        size = 0
        with open(directory / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
        out[name] = {"sha256": digest.hexdigest(), "size": size}
    return out


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete directory ``tmp`` to ``final``, replacing any directory already there.

    The old copy is renamed aside before the new one is renamed in and deleted after; a kill in
    between leaves both complete copies under temporary names for :func:`recover_dir`. An
    OSError from a rename puts the old copy back before it propagates.
    """
    fsync_dir(tmp)
    aside: Path | None = None
    if final.exists():
        aside = sibling(final, "old")
        os.replace(final, aside)
        fault_point("replace:aside")
    try:
        os.replace(tmp, final)
    except OSError:
        if aside is not None and not final.exists():
            os.replace(aside, final)
        raise
    fsync_dir(final.parent)
    fault_point("replace:swapped")
    if aside is not None:
        with contextlib.suppress(OSError):  # the new copy is in place; a leftover is tidied later
            remove_dir(aside)


def remove_dir(path: Path) -> None:
    """Delete a directory by renaming it to a trash name first, so that it never looks half-valid."""
    if not path.exists():
        return
    m = _SIBLING.match(path.name)
    trash = path if m and m.group("kind") == "trash" else sibling(path, "trash")
    if trash != path:
        os.replace(path, trash)
        fsync_dir(path.parent)
        fault_point("remove:renamed")
    shutil.rmtree(trash, ignore_errors=True)


def recover_dir(
    final: Path, is_complete: Callable[[Path], bool], *, tidy: tuple[str, ...] = ("tmp", "old", "trash")
) -> list[Path]:
    """Put back a complete copy of ``final`` left by an interrupted :func:`replace_dir`; tidy the rest.

    When ``final`` is missing or incomplete, a complete candidate among its temporary siblings
    takes its place: a finished write first (the newest), then an old copy set aside. The remaining
    siblings of the kinds in ``tidy`` are deleted (leave ``"tmp"`` out where another process may
    be writing one). Returns the siblings removed.
    """
    found = siblings_of(final)
    if not found:
        return []
    if not (final.is_dir() and is_complete(final)):
        order = {"tmp": 0, "old": 1}
        candidates = sorted(
            ((k, p) for k, p in found if k in order),
            key=lambda item: (order[item[0]], -item[1].stat().st_mtime_ns),
        )
        for _, candidate in candidates:
            if is_complete(candidate):
                if final.exists():
                    remove_dir(final)
                os.replace(candidate, final)
                fsync_dir(final.parent)
                break
    removed = []
    for kind, path in found:
        if kind in tidy and path.exists():
            remove_dir(path)
            removed.append(path)
    return removed
