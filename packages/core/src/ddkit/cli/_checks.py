"""Checks of command-line values that would otherwise fail late: after loading, training or sampling.

Each raises :class:`~ddkit.errors.ConfigError` naming the option, the value and the fix, so the
command prints one line and exits 1 before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ddkit.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGE_SUFFIXES", "check_device", "check_output_path", "check_positive"]

#: What ``--out`` may end with: formats PIL writes losslessly or commonly.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def check_positive(option: str, value: int | None) -> None:
    """Refuse a count below 1 (``--n 0``, ``--per-class 0``) instead of silently drawing one."""
    if value is not None and value < 1:
        raise ConfigError(f"{option} must be a positive int (got {value})")


def check_output_path(option: str, value: str | None, suffixes: tuple[str, ...]) -> None:
    """Refuse an output file whose extension the writer cannot produce, before any work is done."""
    if value is None:
        return
    suffix = Path(value).suffix.lower()
    if suffix not in suffixes:
        raise ConfigError(
            f"{option} {value!r} must end in {' or '.join(suffixes)} (got {suffix or 'no extension'}); "
            f"e.g. {option} {Path(value).with_suffix(suffixes[0])}"
        )
    parent = Path(value).parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{option} {value!r}: {parent} is a file, not a directory")


def check_device(value: str | None) -> torch.device | None:
    """``--device`` as a torch device, refusing a malformed one or one this machine does not have."""
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"--device {value!r} is not a device: use cpu, cuda, cuda:N or mps ({str(exc).splitlines()[0]})"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {value}: CUDA is not available here (torch {torch.__version__}, "
                f"built {'without' if torch.version.cuda is None else 'with'} CUDA); use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"--device {value}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {value}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {value}: ddkit's commands run on cpu, cuda or mps")
    return device
