"""Checkpoint directories that a crash can never leave half-written.

A checkpoint is a directory ``ckpt-000100/``. It is first written as
``ckpt-000100.tmp-XXXX/``: every file is flushed and fsynced, then ``manifest.json``
(the SHA-256 and size of every other file) is written last, the directory is fsynced and
renamed into place with ``os.replace``, and the parent directory is fsynced. Until that
rename the previous checkpoints are untouched; only then are the oldest pruned down to
``keep``. A directory whose manifest is missing or whose hashes do not match is not a
checkpoint: :func:`verify_checkpoint` says which file is wrong.

Nothing here pickles code: weights go to safetensors, other state to ``torch.save`` of
plain containers read back with ``weights_only=True``, metadata to JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from ddkit.errors import IntegrityError

__all__ = [
    "MANIFEST",
    "checkpoint_name",
    "list_checkpoints",
    "load_json",
    "load_state",
    "load_tensors",
    "prune_checkpoints",
    "state_bytes",
    "tensors_bytes",
    "verify_checkpoint",
    "write_checkpoint",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{6,})$")
_LEFTOVER = re.compile(r"^ckpt-\d{6,}\.(tmp|old)-[0-9a-f]+$")


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
    tmp = root / f"{final.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    entries: dict[str, dict[str, Any]] = {}
    for name, data in files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"checkpoint file names must be plain names (got {name!r})")
        _write_file(tmp / name, data)
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = {"format": FORMAT_VERSION, "step": step, "files": entries, "meta": dict(meta or {})}
    _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    _fsync_dir(tmp)
    aside: Path | None = None
    if final.exists():
        aside = root / f"{final.name}.old-{secrets.token_hex(4)}"
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync_dir(root)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints and leftovers of interrupted writes; return them."""
    if keep < 1:
        raise ValueError(f"'keep' must be >= 1 (got {keep})")
    removed = [path for _, path in list_checkpoints(out_dir)[keep:]]
    root = Path(out_dir)
    if root.is_dir():
        removed += [p for p in root.iterdir() if _LEFTOVER.match(p.name) and p.is_dir()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


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
