"""Local diffusers folders: find a component's folder, read its JSON config, refuse what is not there.

Nothing here downloads: every path is a local folder written by diffusers' ``save_pretrained``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ddkit import ConfigError

__all__ = ["DTYPES", "component_folder", "read_json", "resolve_dtype"]

#: The ``dtype`` names the model and autoencoder factories take.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_dtype(dtype: str | None) -> torch.dtype | None:
    """The torch dtype named ``dtype`` (None keeps the weights' saved dtype)."""
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ConfigError(f"'dtype' must be one of {', '.join(DTYPES)} or None (got {dtype!r})")
    return DTYPES[dtype]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, naming the file when it is missing or malformed."""
    if not path.is_file():
        raise ConfigError(f"no {path.name} at {str(path)!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object (got {type(data).__name__})")
    return data


def component_folder(path: str | Path, subfolder: str | None, defaults: Sequence[str], what: str) -> Path:
    """The folder holding one saved component (its ``config.json`` and safetensors weights).

    ``subfolder=None`` means ``path`` itself when it holds a ``config.json``, else the first of
    ``defaults`` (e.g. ``unet``, ``transformer``) that a pipeline folder at ``path`` lists.
    """
    if not isinstance(path, (str, Path)) or not str(path):
        raise ConfigError(f"'path' must be a local folder saved by diffusers' save_pretrained (got {path!r})")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"no folder at {str(root)!r}: 'path' must be a local folder saved by diffusers' save_pretrained "
            "(ddkit_diffusers never downloads; fetch the model yourself and pass its folder)"
        )
    if subfolder is not None:
        if not isinstance(subfolder, str) or not subfolder:
            raise ConfigError(f"'subfolder' must be a non-empty str or None (got {subfolder!r})")
        folder = root / subfolder
    elif (root / "config.json").is_file():
        folder = root
    else:
        found = [name for name in defaults if (root / name / "config.json").is_file()]
        if not found:
            raise ConfigError(
                f"{str(root)!r} holds no config.json and no {' or '.join(defaults)} folder with one; "
                f"pass the folder of the {what} or set 'subfolder'"
            )
        folder = root / found[0]
    if not (folder / "config.json").is_file():
        raise ConfigError(f"no config.json in {str(folder)!r}: it is not a saved diffusers {what}")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(
            f"{str(folder)!r} holds no .safetensors weights: ddkit_diffusers loads weights only through "
            "safetensors (no pickle); re-save the model with save_pretrained(..., safe_serialization=True)"
        )
    return folder
