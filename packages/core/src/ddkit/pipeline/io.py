"""Save and load a pipeline: safetensors weights, a ``pipeline.toml`` and one integrity manifest.

A saved pipeline is a directory::

    pipeline.toml            every name and parameter, who provided each part, the hashes
    model.safetensors        the trained weights
    ema_<rate>.safetensors   one file per EMA rate (e.g. ema_0.9999.safetensors)
    autoencoder.safetensors  a latent pipeline's autoencoder weights (if it has any)
    guidance<i>-<key>.*      a copy of each guidance's weights (e.g. the classifier's)
    manifest.json            the SHA-256 and size of every file above, written last

Nothing is pickled: weights are safetensors and everything else is TOML. Loading checks,
before building anything, every file against the manifest (``pipeline.toml`` too: an edited
schedule or sampler is refused like edited weights, naming the file) and that every part's
plugin is installed (naming the distribution to install). A save is atomic: it is written
beside the directory and swapped in (:mod:`ddkit._atomic`), so a failure leaves the previous one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ddkit import _atomic
from ddkit.errors import ConfigError, IntegrityError, UnknownPluginError
from ddkit.pipeline import _toml
from ddkit.pipeline.config import PART_KINDS, is_object_marker, recorded_providers, registry_factory
from ddkit.registry import pinned_providers

if TYPE_CHECKING:
    from ddkit.pipeline.pipeline import Pipeline

__all__ = ["CONFIG_FILE", "FORMAT", "MANIFEST", "load", "reseal", "save", "sha256_of"]

CONFIG_FILE = "pipeline.toml"
MODEL_FILE = "model.safetensors"
AUTOENCODER_FILE = "autoencoder.safetensors"
MANIFEST = "manifest.json"
#: The version of the saved layout; a loader refuses a newer one. 2: ``manifest.json`` covers
#: ``pipeline.toml`` and every weights file, guidance weights are copied into the folder.
FORMAT = 2
MANIFEST_FORMAT = 1


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ema_file(rate: str) -> str:
    return f"ema_{rate}.safetensors"


def _weights_bytes(model: nn.Module) -> bytes:
    """``model``'s state as a safetensors file, as ``safetensors.torch.save_model`` lays it out.

    Tied tensors are stored once and named in the metadata, so ``load_model`` restores them.
    """
    from safetensors.torch import _remove_duplicate_names
    from safetensors.torch import save as safetensors_save

    state = model.state_dict()
    metadata: dict[str, str] = {}
    for kept, removed in _remove_duplicate_names(state).items():
        for name in removed:
            metadata[name] = kept
            del state[name]
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return safetensors_save(tensors, metadata=metadata or None)


def _write(path: Path, data: bytes) -> None:
    # One writer for every file of a save: fault-injection tests patch it here.
    _atomic.write_file(path, data)


def _bundle_guidance_weights(config: dict[str, Any], folder: Path) -> list[str]:
    """Copy each guidance's weights file (``classifier = {weights = ...}``) into ``folder``.

    The saved config names the copy relative to the pipeline's folder (``guidance1-classifier
    .safetensors``), so that the save is self-contained, its hash is in the manifest, and
    loading resolves it against the folder rather than the working directory. Returns the names.
    """
    names: list[str] = []
    for i, entry in enumerate(config.get("guidance") or [], start=1):
        if not isinstance(entry, dict):
            continue
        for key, value in entry.items():
            if not isinstance(value, dict) or not isinstance(value.get("weights"), (str, os.PathLike)):
                continue
            source = Path(value["weights"])
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"[[guidance]] #{i} ({entry.get('name')!r}) names {key} weights {str(source)!r}, which "
                    f"cannot be read ({exc.strerror or exc}); fix the path before saving"
                ) from None
            name = f"guidance{i}-{key}{''.join(source.suffixes[-1:]) or '.safetensors'}"
            _write(folder / name, data)
            value["weights"] = name
            names.append(name)
    return names


def _resolve_guidance_weights(config: dict[str, Any], root: Path) -> list[str]:
    """The inverse of :func:`_bundle_guidance_weights`: relative weights paths, resolved in ``root``."""
    names: list[str] = []
    for entry in config.get("guidance") or []:
        if not isinstance(entry, dict):
            continue
        for value in entry.values():
            if isinstance(value, dict) and isinstance(value.get("weights"), str):
                path = Path(value["weights"])
                if not path.is_absolute():
                    names.append(path.as_posix())
                    value["weights"] = str(root / path)
    return names


def _saved_files(directory: Path) -> set[str]:
    """The names of the files a save in ``directory`` consists of (from its manifest or config)."""
    names = {CONFIG_FILE, MANIFEST}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        names.update(json.loads((directory / MANIFEST).read_bytes()).get("files", {}))
    with contextlib.suppress(OSError, ValueError):
        names.update(_toml.load(directory / CONFIG_FILE).get("weights", {}))
    return names


def _check_replaceable(out: Path) -> None:
    """Refuse to replace a directory that holds anything but an earlier save (it would be lost)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"cannot save a pipeline to {out}: it is a file, not a directory")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    ours = _saved_files(out) if CONFIG_FILE in entries else set()
    # Temporary files of the per-file writer of ddkit 0.1, left by a crash.
    foreign = sorted(e for e in entries - ours if not (e.startswith(".") and e.endswith(".tmp")))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(
            f"cannot save a pipeline to {out}: it holds files that Pipeline.save did not write ({shown}), "
            "and a save replaces the whole directory; save to a new or empty directory, or move them away"
        )


def _is_complete_save(directory: Path) -> bool:
    try:
        _verify_manifest(directory)
    except (IntegrityError, ConfigError):
        return False
    return True


def _provenance(kind: str, name: str) -> dict[str, str]:
    """The registered name with the distribution and version that provide it."""
    import ddkit

    out = {"name": name}
    try:
        info = ddkit.describe(kind, name)
    except Exception:  # recorded for information only; the name built a part moments ago
        return out
    for key in ("distribution", "version"):
        value = getattr(info, key, None)
        if isinstance(value, str) and value:
            out[key] = value
    return out


def _provenance_table(config: Mapping[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for section, kind in PART_KINDS.items():
        value = config.get(section)
        if section == "guidance":
            entries = [_provenance(kind, g["name"]) for g in value or [] if "name" in g]
            if entries:
                table[section] = entries
        elif isinstance(value, Mapping) and "name" in value:
            table[section] = _provenance(kind, value["name"])
    return table


def save(pipe: Pipeline, directory: str | Path) -> Path:
    """Write the pipeline to ``directory``, atomically; returns the path of ``pipeline.toml``.

    Everything is written into a temporary sibling directory (each file fsynced, ``manifest.json``
    last), which then replaces ``directory`` by two renames: a full disk, an I/O error or a kill
    at any point leaves the previous save loadable (a kill between the renames leaves it under
    a temporary name that the next save or load puts back) and never a half save. An OSError
    names the file it happened on. ``directory`` must be new, empty or an earlier save.
    """
    import ddkit
    from ddkit.pipeline.pipeline import _plain_config

    out = Path(directory)
    # Leftovers of a killed save are tidied (a save running at the same moment in another
    # process would lose its temporary folder and fail with an OSError; it never corrupts one).
    _atomic.recover_dir(out, _is_complete_save)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic.sibling(out, "tmp")
    tmp.mkdir()
    try:
        _write_save(pipe, tmp, ddkit.__version__, _plain_config(pipe.config))
        _atomic.replace_dir(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            _atomic.remove_dir(tmp)
        raise
    return out / CONFIG_FILE


def _write_save(pipe: Pipeline, folder: Path, version: str, config: dict[str, Any]) -> None:
    """Every file of a save, into the empty ``folder``; the manifest last."""
    files = {MODEL_FILE: pipe.model}
    for rate, average in pipe.ema.items():
        files[_ema_file(rate)] = average
    autoencoder = getattr(pipe, "autoencoder", None)
    if isinstance(autoencoder, nn.Module) and len(autoencoder.state_dict()):
        files[AUTOENCODER_FILE] = autoencoder
    weights: dict[str, Any] = {}
    for filename, module in files.items():
        data = _weights_bytes(module)
        _write(folder / filename, data)
        weights[filename] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        _atomic.fault_point("save:file")
    bundled = _bundle_guidance_weights(config, folder)
    doc: dict[str, Any] = {"ddkit": {"format": FORMAT, "version": version}}
    doc.update(config)
    doc["ema"] = {"rates": list(pipe.ema), "use_ema": bool(pipe.use_ema)}
    doc["provenance"] = _provenance_table(pipe.config)
    doc["weights"] = weights
    _write(folder / CONFIG_FILE, _toml.dumps(doc).encode("utf-8"))
    names = [CONFIG_FILE, *weights, *bundled]
    manifest = {"format": MANIFEST_FORMAT, "files": _atomic.hash_files(folder, names)}
    _write(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    _atomic.fault_point("save:manifest")


def _check_plugins(config: Mapping[str, Any], provenance: Mapping[str, Any]) -> None:
    """Raise UnknownPluginError, naming what to install, for parts no installed plugin provides."""
    missing: list[str] = []
    for section, kind in PART_KINDS.items():
        value = config.get(section)
        entries = value if section == "guidance" else [value]
        recorded = provenance.get(section)
        records: list[Any] = recorded if isinstance(recorded, list) else [recorded]
        for i, entry in enumerate(entries or []):
            if not isinstance(entry, Mapping) or "name" not in entry or is_object_marker(entry):
                continue
            name = entry["name"]
            try:
                registry_factory(kind, name)
            except UnknownPluginError as exc:
                record: Mapping[str, Any] = (
                    records[i] if i < len(records) and isinstance(records[i], Mapping) else {}
                )
                if record.get("distribution"):
                    # Under load()'s pins the registry says why the recorded distribution is missing
                    # (not installed, not loaded because of DDKIT_PLUGINS, broken) and the fix.
                    missing.append(str(exc))
                else:
                    missing.append(
                        f"{kind} {name!r} is provided by no installed plugin (see `ddkit plugins`)"
                    )
    if missing:
        head = "this saved pipeline needs plugins that are not installed:" if len(missing) > 1 else ""
        body = "\n".join(f"  - {m}" for m in missing) if len(missing) > 1 else missing[0]
        raise UnknownPluginError(f"{head}\n{body}" if head else body)


def _verify(directory: Path, weights: Mapping[str, Any], needed: list[str]) -> None:
    for filename in needed:
        if filename not in weights:
            raise IntegrityError(
                f"{CONFIG_FILE} in {directory} records no SHA-256 for {filename}; the directory was not "
                "written by Pipeline.save or its pipeline.toml was edited"
            )
    for filename, entry in weights.items():
        path = directory / filename
        expected = entry.get("sha256") if isinstance(entry, Mapping) else None
        if not isinstance(expected, str):
            raise IntegrityError(f"{CONFIG_FILE} in {directory} has no valid sha256 for {filename}")
        if not path.is_file():
            raise IntegrityError(f"the weights file {path} is missing (it is listed in {CONFIG_FILE})")
        got = sha256_of(path)
        if got != expected:
            size = entry.get("bytes")
            now = path.stat().st_size
            sizes = (
                f" (it has {now} bytes, {size} were saved)" if isinstance(size, int) and size != now else ""
            )
            raise IntegrityError(
                f"the weights file {path} does not match the SHA-256 recorded in {CONFIG_FILE}{sizes}: "
                f"expected {expected}, got {got}; it is truncated, damaged or was changed after saving — "
                "copy it again from the source or save the pipeline again"
            )


def _verify_manifest(root: Path) -> set[str]:
    """Check every file of a save against ``manifest.json``; return the names it lists.

    Raises :class:`IntegrityError` naming the file that is missing, truncated or changed:
    ``pipeline.toml`` is covered, so an edited schedule or sampler is refused like edited weights.
    """
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise IntegrityError(
            f"{root} has no {MANIFEST}: the save was not completed; save the pipeline again"
        ) from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path} cannot be read ({exc}); save the pipeline again") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or CONFIG_FILE not in files:
        raise IntegrityError(f"{path} lists no {CONFIG_FILE}: it was not written by Pipeline.save")
    for name, entry in files.items():
        file = root / name
        expected = entry.get("sha256") if isinstance(entry, Mapping) else None
        if not isinstance(expected, str) or "/" in name or "\\" in name or name.startswith("."):
            raise IntegrityError(f"{path} has an invalid entry {name!r}: it was not written by Pipeline.save")
        if not file.is_file():
            raise IntegrityError(f"the file {file} is missing (it is listed in {MANIFEST})")
        got = sha256_of(file)
        if got != expected:
            size = entry.get("size")
            now = file.stat().st_size
            changed = isinstance(size, int) and size != now
            sizes = f" (it has {now} bytes, {size} were saved)" if changed else ""
            raise IntegrityError(
                f"{file} does not match the SHA-256 recorded in {MANIFEST}{sizes}: it was changed, "
                f"truncated or damaged after saving (expected {expected}, got {got}). A save is refused "
                "whole when any of its files changes: copy it again from the source, or load the "
                "original, change it in Python (pipe.with_sampler(...), ...) and save it again"
            )
    return set(files)


def reseal(directory: str | Path) -> Path:
    """Accept deliberate edits of a save: hash its files into a new ``manifest.json``; return its path.

    Loading refuses any change to a save; a tool (or a test) that rewrites ``pipeline.toml`` on
    purpose calls this afterwards. The files listed now are those the old manifest listed.

    .. versionadded:: 0.2.0
    """
    root = Path(directory)
    names = sorted(_saved_files(root) - {MANIFEST})
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise IntegrityError(f"cannot reseal {root}: {', '.join(missing)} missing")
    path = root / MANIFEST
    manifest = {"format": MANIFEST_FORMAT, "files": _atomic.hash_files(root, names)}
    tmp = root / f".{MANIFEST}.tmp"
    _write(tmp, json.dumps(manifest, indent=1, sort_keys=True).encode())
    os.replace(tmp, path)
    return path


def _require_listed(root: Path, verified: set[str], needed: list[str]) -> None:
    for name in needed:
        if name not in verified:
            raise IntegrityError(
                f"{MANIFEST} in {root} does not list {name}, which {CONFIG_FILE} needs: "
                "the directory was not written by Pipeline.save; save the pipeline again"
            )


def _read_weights(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(module, str(path), strict=False)
    except RuntimeError as exc:  # shapes that differ from the model built from the config
        raise IntegrityError(
            f"the weights in {path} do not fit the model built from {CONFIG_FILE}: {exc}"
        ) from exc
    except Exception as exc:  # an unreadable safetensors header
        raise IntegrityError(f"the weights file {path} cannot be read as safetensors: {exc}") from exc
    if missing or unexpected:
        raise IntegrityError(
            f"the weights in {path} do not fit the model built from {CONFIG_FILE}: missing "
            f"{sorted(missing)[:5] or 'none'}, unexpected {sorted(unexpected)[:5] or 'none'}"
        )


def load(directory: str | Path, **objects: Any) -> Pipeline:
    """Rebuild the pipeline saved in ``directory`` (or named by its ``pipeline.toml``).

    ``objects`` are used as in :meth:`Pipeline.from_config`.

    Parts that were objects when saved (a model passed as ``model=...``) must be passed again.
    """
    from ddkit.pipeline.pipeline import Pipeline

    root = Path(directory)
    if root.is_file() and root.name == CONFIG_FILE:
        root = root.parent
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        # A kill between the two renames of a save leaves the complete copy under a temporary name.
        with contextlib.suppress(OSError):
            _atomic.recover_dir(root, _is_complete_save, tidy=("old", "trash"))
    if not config_path.is_file():
        raise ConfigError(
            f"no {CONFIG_FILE} in {str(root)!r}: give the directory written by Pipeline.save or `ddkit train`"
        )
    verified = _verify_manifest(root) if (root / MANIFEST).exists() else None
    try:
        doc = _toml.load(config_path)
    except _toml.TOMLDecodeError as exc:
        raise IntegrityError(f"{config_path} is not valid TOML: {exc}") from exc
    meta = doc.pop("ddkit", {})
    provenance = doc.pop("provenance", {})
    weights = doc.pop("weights", {})
    ema = doc.pop("ema", {})
    fmt = meta.get("format")
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise ConfigError(
            f"{config_path} has format {fmt!r}, but this ddkit reads format {FORMAT} or older; "
            f"it was written by ddkit {meta.get('version', '?')}: upgrade ddkit-core"
        )
    if verified is None and fmt >= 2:
        raise IntegrityError(
            f"{root} has no {MANIFEST}: the save was not completed or the file was deleted; "
            "save the pipeline again, or copy the whole folder again from the source"
        )
    if verified is None:
        warnings.warn(
            f"{root} was saved by ddkit {meta.get('version', '?')} (format {fmt}), which hashed only the "
            f"weights: changes to its {CONFIG_FILE} cannot be detected; save it again to protect it",
            UserWarning,
            stacklevel=3,
        )
    rates = [str(r) for r in ema.get("rates", [])]
    bundled = _resolve_guidance_weights(doc, root)
    needed = [MODEL_FILE, *(_ema_file(r) for r in rates), *bundled]
    with pinned_providers(recorded_providers(provenance)):  # each part from the distribution that saved it
        _check_plugins(doc, provenance)
        if verified is None:
            _verify(root, weights, needed)
        else:
            _require_listed(root, verified, [*needed, *weights])
        pipe = Pipeline.from_config(doc, **objects)
    from ddkit.conditioning import attach_saved_null_embeddings

    attach_saved_null_embeddings(pipe.model, root / MODEL_FILE)  # learned null embeddings, if trained
    _read_weights(pipe.model, root / MODEL_FILE)
    if AUTOENCODER_FILE in weights:
        if not isinstance(pipe.autoencoder, nn.Module):
            raise IntegrityError(
                f"{root} holds {AUTOENCODER_FILE}, but the pipeline built from {CONFIG_FILE} has no "
                "autoencoder module to load it into; pass autoencoder=<the autoencoder it was saved with>"
            )
        _read_weights(pipe.autoencoder, root / AUTOENCODER_FILE)
    for rate in rates:
        average = copy.deepcopy(pipe.model)
        _read_weights(average, root / _ema_file(rate))
        average.requires_grad_(False)
        pipe.ema[rate] = average
    pipe.use_ema = bool(ema.get("use_ema", True))
    return pipe
