"""A folder of images as a dataset: centre-cropped, resized, in [-1, 1], labelled by subfolder.

Either ``root/`` holds images directly (no labels), or ``root/<class>/...`` holds one
subfolder per class: labels are the subfolder names in sorted order (``classes``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ddkit.errors import ConfigError

__all__ = ["IMAGE_EXTENSIONS", "FolderDataset", "load_image"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image(path: str | Path, image_size: int, channels: int = 3) -> Tensor:
    """One image as ``[C, S, S]`` in [-1, 1]: centre square crop, then a bicubic resize to ``S``."""
    with Image.open(path) as img:
        pic = img.convert("RGB" if channels == 3 else "L")
    w, h = pic.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    pic = pic.crop((left, top, left + side, top + side))
    if side != image_size:
        pic = pic.resize((image_size, image_size), Image.Resampling.BICUBIC)
    arr = np.asarray(pic, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


class FolderDataset(Dataset[Tensor | tuple[Tensor, int]]):
    """The images under ``path``, loaded lazily; item ``i`` is ``x`` or ``(x, class)``.

    .. versionadded:: 0.1.0
    """

    def __init__(self, path: str | Path, image_size: int = 64, *, channels: int = 3) -> None:
        root = Path(path)
        if not root.is_dir():
            raise ConfigError(
                f"'path' must be a folder of images (got {str(path)!r}, which is not a directory)"
            )
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ConfigError(f"'image_size' must be a positive int (got {image_size!r})")
        if channels not in (1, 3):
            raise ConfigError(f"'channels' must be 1 (grey) or 3 (RGB) (got {channels!r})")
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        direct = _images_in(root, recursive=False)
        labelled = [d for d in subdirs if _images_in(d, recursive=True)]
        if direct and labelled:
            raise ConfigError(
                f"{root} holds images both directly and in subfolders "
                f"({', '.join(d.name for d in labelled)}); "
                "put every image in a class subfolder, or all of them directly in the folder"
            )
        self.classes: list[str] = [d.name for d in labelled]
        self.files: list[Path] = []
        labels: list[int] = []
        if labelled:
            for k, d in enumerate(labelled):
                found = _images_in(d, recursive=True)
                self.files += found
                labels += [k] * len(found)
        else:
            self.files = direct
        if not self.files:
            raise ConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
        self.labels: list[int] | None = labels if labelled else None
        self.image_size = image_size
        self.channels = channels
        self.num_classes: int | None = len(self.classes) if labelled else None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(channels, image_size, image_size)``."""
        return (self.channels, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, int]:
        x = load_image(self.files[index], self.image_size, self.channels)
        if self.labels is None:
            return x
        return x, self.labels[index]

    def __repr__(self) -> str:
        classes = f", classes={self.classes}" if self.classes else ""
        return f"FolderDataset(n={len(self)}, image_size={self.image_size}{classes})"
