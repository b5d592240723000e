"""Built-in data that needs no download: 2-D toys, procedural shapes, and a folder loader.

``load(name, **params)`` returns a torch ``Dataset`` whose items are ``x`` or ``(x, y)``
with an int class label, with ``sample_shape`` and ``num_classes`` attributes, ready for
:class:`ddkit.Trainer`::

    ddkit.data.load("gaussians", n=20_000, seed=0)
    ddkit.data.load("shapes", image_size=32, num_classes=6)
    ddkit.data.load("folder", path="photos/", image_size=64)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from ddkit.data.arrays import ArrayDataset
from ddkit.data.folder import FolderDataset
from ddkit.data.shapes import SHAPES, load_shapes
from ddkit.data.toys import TOYS, load_toy, sample_toy, sampler, sliced_wasserstein
from ddkit.errors import ConfigError

__all__ = [
    "SHAPES",
    "TOYS",
    "ArrayDataset",
    "FolderDataset",
    "describe",
    "load",
    "names",
    "sample_toy",
    "sampler",
    "sliced_wasserstein",
]


def _toy_loader(name: str) -> Callable[..., ArrayDataset]:
    def load_named(**params: Any) -> ArrayDataset:
        return load_toy(name, **params)

    return load_named


_LOADERS: dict[str, tuple[Callable[..., Dataset[Any]], str]] = {
    **{name: (_toy_loader(name), f"2-D toy: {text}; params n, seed") for name, text in TOYS.items()},
    "shapes": (
        load_shapes,
        "procedural RGB shapes, one class per shape; params image_size, n, num_classes, seed",
    ),
    "folder": (
        FolderDataset,
        "a folder of images, labels from subfolders; params path, image_size, channels",
    ),
}


def names() -> list[str]:
    """The built-in dataset names."""
    return list(_LOADERS)


def describe(name: str) -> str:
    """A one-line description of dataset ``name`` and its parameters."""
    return _LOADERS[_check_name(name)][1]


def _check_name(name: str) -> str:
    if name not in _LOADERS:
        close = difflib.get_close_matches(str(name), list(_LOADERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"no built-in dataset named {name!r}; datasets are: {', '.join(_LOADERS)}{hint}")
    return name


def load(name: str, **params: Any) -> Dataset[Tensor | tuple[Tensor, int]]:
    """Build built-in dataset ``name`` with ``params`` (see :func:`names` and :func:`describe`)."""
    loader = _LOADERS[_check_name(name)][0]
    try:
        return loader(**params)
    except TypeError as exc:
        raise ConfigError(
            f"dataset {name!r} does not take these parameters {sorted(params)}: {exc}"
        ) from None
