"""Checkpoint directories that a crash can never leave half-written.

A checkpoint is a directory ``ckpt-000100/``. It is first written as
``ckpt-000100.tmp-XXXX/``: every file is flushed and fsynced, then ``manifest.json``
(the SHA-256 and size of every other file) is written last, the directory is fsynced and
renamed into place with ``os.replace``, and the parent directory is fsynced. Until that
rename the previous checkpoints are untouched; only then are the oldest pruned down to
``keep``. A directory whose manifest is missing or whose hashes do not match is not a
checkpoint: :func:`verify_checkpoint` says which file is wrong.

Rewriting a step that already has a checkpoint renames the old one aside before renaming the
new one in (:func:`ddkit._atomic.replace_dir`); a kill between the two renames leaves both
complete copies under ``.old-``/``.tmp-`` names, which :func:`recover_checkpoints` (run by a
resuming trainer) puts back. Pruning renames every victim to a ``.trash-`` name before deleting
it, so a kill mid-delete never leaves a half-deleted directory that looks like a checkpoint.

Nothing here pickles code: weights go to safetensors, other state to ``torch.save`` of
plain containers read back with ``weights_only=True``, metadata to JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from ddkit import _atomic
from ddkit.errors import IntegrityError

__all__ = [
    "MANIFEST",
    "checkpoint_name",
    "list_checkpoints",
    "load_json",
    "load_state",
    "load_tensors",
    "prune_checkpoints",
    "recover_checkpoints",
    "state_bytes",
    "stranded_checkpoints",
    "tensors_bytes",
    "verify_checkpoint",
    "write_checkpoint",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{6,})$")
_LEFTOVER = re.compile(r"^(ckpt-\d{6,})\.(tmp|old|trash)-[0-9a-f]+$")


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint at ``step``: ``ckpt-000100``."""
    return f"ckpt-{step:06d}"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete-looking checkpoint directories in ``out_dir`` as ``(step, path)``, newest first.

    Names only: use :func:`verify_checkpoint` to know whether one is intact.
    """
    root = Path(out_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = _NAME.match(entry.name)
        if m and entry.is_dir():
            found.append((int(m.group(1)), entry))
    return sorted(found, key=lambda item: item[0], reverse=True)


# -- writing ---------------------------------------------------------------------------


def tensors_bytes(tensors: Mapping[str, Tensor]) -> bytes:
    """A safetensors file holding ``tensors`` (copied to contiguous CPU tensors)."""
    return safetensors_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def state_bytes(state: Any) -> bytes:
    """``torch.save`` of a plain container of tensors, numbers, strings, lists and dicts."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    # One writer for every file of a checkpoint: fault-injection tests patch it here.
    _atomic.write_file(path, data)


def write_checkpoint(
    out_dir: str | Path, step: int, files: Mapping[str, bytes], *, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write ``files`` (name -> content) as checkpoint ``step`` in ``out_dir``, atomically; return its path.

    A checkpoint already at that step (left by an earlier attempt of the same run) is
    replaced only once the new one is complete.
    """
    if MANIFEST in files:
        raise ValueError(f"{MANIFEST!r} is written by write_checkpoint itself; do not pass it in 'files'")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    for name in files:
        if "/" in name or name.startswith("."):
            raise ValueError(f"checkpoint file names must be plain names (got {name!r})")
    tmp = _atomic.sibling(final, "tmp")
    tmp.mkdir()
    try:
        entries: dict[str, dict[str, Any]] = {}
        for name, data in files.items():
            _write_file(tmp / name, data)
            entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            _atomic.fault_point("checkpoint:file")
        manifest = {"format": FORMAT_VERSION, "step": step, "files": entries, "meta": dict(meta or {})}
        _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        _atomic.fault_point("checkpoint:manifest")
        _atomic.replace_dir(tmp, final)
    except OSError:
        # A full disk or an I/O error: the previous checkpoints are untouched; drop the partial one.
        with contextlib.suppress(OSError):
            _atomic.remove_dir(tmp)
        raise
    return final


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints and leftovers of interrupted writes; return them.

    Every victim is first renamed to a ``.trash-`` name (one fsync of ``out_dir`` for all), then
    deleted: a kill at any point leaves only complete checkpoints under checkpoint names. Only the
    run holding ``out_dir`` (see :mod:`ddkit.training.lock`) may call this: a leftover ``.tmp-`` is
    assumed dead.
    """
    if keep < 1:
        raise ValueError(f"'keep' must be >= 1 (got {keep})")
    removed = [path for _, path in list_checkpoints(out_dir)[keep:]]
    root = Path(out_dir)
    if root.is_dir():
        removed += sorted(p for p in root.iterdir() if _LEFTOVER.match(p.name) and p.is_dir())
    trash = []
    for path in removed:
        m = _LEFTOVER.match(path.name)
        if m and m.group(2) == "trash":
            trash.append(path)
            continue
        target = _atomic.sibling(path, "trash")
        os.replace(path, target)
        trash.append(target)
    if trash:
        _atomic.fsync_dir(root)
        _atomic.fault_point("prune:renamed")
    for path in trash:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _is_complete(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except IntegrityError:
        return False
    return True


def stranded_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints left under ``.tmp-``/``.old-`` names by a kill, newest step first.

    They hold a run's progress as surely as listed ones: a new run must not start over them.
    """
    root = Path(out_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if (m := _LEFTOVER.match(p.name)) and m.group(2) != "trash" and p.is_dir() and _is_complete(p)
    ]
    return sorted(found, key=lambda p: p.name, reverse=True)


def recover_checkpoints(out_dir: str | Path) -> list[str]:
    """Put back complete checkpoints that an interrupted rewrite left under ``.tmp-``/``.old-`` names.

    For each step with leftovers whose ``ckpt-NNNNNN`` is missing or fails verification, the
    complete leftover (the new write first, then the old copy) is renamed into place; the other
    leftovers are deleted. Returns the names of the checkpoints put back. Call it only while
    holding the run directory's lock.
    """
    root = Path(out_dir)
    if not root.is_dir():
        return []
    bases = sorted({m.group(1) for p in root.iterdir() if (m := _LEFTOVER.match(p.name)) and p.is_dir()})
    restored = []
    for base in bases:
        final = root / base
        before = final.is_dir() and _is_complete(final)
        _atomic.recover_dir(final, _is_complete)
        if not before and final.is_dir():
            restored.append(base)
    return restored


# -- reading ---------------------------------------------------------------------------


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file of the checkpoint at ``path`` against its manifest; return the manifest.

    Raises :class:`ddkit.IntegrityError` naming the checkpoint and the file that is missing,
    truncated or altered.
    """
    ckpt = Path(path)
    manifest_path = ckpt / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise IntegrityError(
            f"checkpoint {ckpt.name} has no {MANIFEST}: it was not completely written"
        ) from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"checkpoint {ckpt.name}: {MANIFEST} cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"checkpoint {ckpt.name}: {MANIFEST} has no 'files' table")
    if manifest.get("format") != FORMAT_VERSION:
        raise IntegrityError(
            f"checkpoint {ckpt.name} has format {manifest.get('format')!r}; "
            f"this ddkit reads format {FORMAT_VERSION}"
        )
    for name, entry in manifest["files"].items():
        file = ckpt / name
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"checkpoint {ckpt.name}: file {name} is missing") from None
        if len(data) != entry.get("size"):
            raise IntegrityError(
                f"checkpoint {ckpt.name}: file {name} has {len(data)} bytes, "
                f"the manifest says {entry.get('size')} "
                "(truncated or altered)"
            )
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise IntegrityError(
                f"checkpoint {ckpt.name}: file {name} does not match its SHA-256 in the manifest (altered)"
            )
    return manifest


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file."""
    return safetensors_load(Path(path).read_bytes())


def load_state(path: str | Path) -> Any:
    """Read a ``torch.save`` file of plain data, refusing anything that would run code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_bytes())
