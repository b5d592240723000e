"""Save and load a pipeline: safetensors weights, a ``pipeline.toml`` and a SHA-256 per weights file.

A saved pipeline is a directory::

    pipeline.toml            every name and parameter, who provided each part, the hashes
    model.safetensors        the trained weights
    ema_<rate>.safetensors   one file per EMA rate (e.g. ema_0.9999.safetensors)
    autoencoder.safetensors  a latent pipeline's autoencoder weights (if it has any)

Nothing is pickled: weights are safetensors and everything else is TOML. Loading checks,
before building anything, that every part's plugin is installed (naming the distribution
to install) and that every weights file matches its recorded hash.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ddkit.errors import ConfigError, IntegrityError, UnknownPluginError
from ddkit.pipeline import _toml
from ddkit.pipeline.config import PART_KINDS, is_object_marker, registry_factory

if TYPE_CHECKING:
    from ddkit.pipeline.pipeline import Pipeline

__all__ = ["CONFIG_FILE", "FORMAT", "load", "save", "sha256_of"]

CONFIG_FILE = "pipeline.toml"
MODEL_FILE = "model.safetensors"
AUTOENCODER_FILE = "autoencoder.safetensors"
#: The version of the saved layout; a loader refuses a newer one.
FORMAT = 1


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ema_file(rate: str) -> str:
    return f"ema_{rate}.safetensors"


def _write_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    # Write to a temporary file and rename, so a crash never leaves a half-written file behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_model(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    """Write the pipeline to ``directory`` (created if needed); returns the path of ``pipeline.toml``."""
    import ddkit
    from ddkit.pipeline.pipeline import _plain_config

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = {MODEL_FILE: pipe.model}
    for rate, average in pipe.ema.items():
        files[_ema_file(rate)] = average
    autoencoder = getattr(pipe, "autoencoder", None)
    if isinstance(autoencoder, nn.Module) and len(autoencoder.state_dict()):
        files[AUTOENCODER_FILE] = autoencoder
    weights: dict[str, Any] = {}
    for filename, module in files.items():
        path = out / filename
        _write_weights(module, path)
        weights[filename] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    doc: dict[str, Any] = {"ddkit": {"format": FORMAT, "version": ddkit.__version__}}
    doc.update(_plain_config(pipe.config))
    doc["ema"] = {"rates": list(pipe.ema), "use_ema": bool(pipe.use_ema)}
    doc["provenance"] = _provenance_table(pipe.config)
    doc["weights"] = weights
    text = _toml.dumps(doc)
    config_path = out / CONFIG_FILE
    tmp = config_path.with_name(f".{CONFIG_FILE}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, config_path)
    return config_path


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
            except UnknownPluginError:
                record: Mapping[str, Any] = (
                    records[i] if i < len(records) and isinstance(records[i], Mapping) else {}
                )
                dist = record.get("distribution")
                version = record.get("version")
                if dist:
                    pin = f"{dist}=={version}" if version else dist
                    missing.append(
                        f"{kind} {name!r} was provided by the distribution {dist!r}"
                        f"{f' version {version}' if version else ''}, which is not installed here; "
                        f"install it with: pip install {pin}"
                    )
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
        raise ConfigError(
            f"no {CONFIG_FILE} in {str(root)!r}: give the directory written by Pipeline.save or `ddkit train`"
        )
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
    rates = [str(r) for r in ema.get("rates", [])]
    _check_plugins(doc, provenance)
    _verify(root, weights, [MODEL_FILE, *(_ema_file(r) for r in rates)])
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
