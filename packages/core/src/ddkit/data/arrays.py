"""A dataset held in memory as one tensor of samples and, optionally, one of class labels."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ArrayDataset"]


class ArrayDataset(Dataset[Tensor | tuple[Tensor, int]]):
    """Samples ``[N, ...]`` with optional long labels ``[N]``; item ``i`` is ``x`` or ``(x, y)``.

    The trainer indexes ``samples`` and ``labels`` directly (no per-item Python calls), so
    in-memory data trains as fast as a tensor.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, samples: Tensor, labels: Tensor | None = None, *, num_classes: int | None = None
    ) -> None:
        if samples.ndim < 2:
            raise ValueError(
                f"samples must have shape [N, ...] with at least 2 dimensions (got {tuple(samples.shape)})"
            )
        if labels is not None:
            if labels.shape != (samples.shape[0],):
                raise ValueError(
                    f"labels must have shape [{samples.shape[0]}] to match the samples "
                    f"(got {tuple(labels.shape)})"
                )
            if labels.is_floating_point():
                raise ValueError(f"labels must be integer class indices (got dtype {labels.dtype})")
        self.samples = samples
        self.labels = labels.long() if labels is not None else None
        if num_classes is None and self.labels is not None and self.labels.numel() > 0:
            num_classes = int(self.labels.max().item()) + 1
        self.num_classes = num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(2,)`` or ``(3, 32, 32)``."""
        return tuple(self.samples.shape[1:])

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, int]:
        if self.labels is None:
            return self.samples[index]
        return self.samples[index], int(self.labels[index])

    def __repr__(self) -> str:
        classes = f", num_classes={self.num_classes}" if self.labels is not None else ""
        return f"ArrayDataset(n={len(self)}, sample_shape={self.sample_shape}{classes})"
