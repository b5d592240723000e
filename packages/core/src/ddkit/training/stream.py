"""The training data as a seeded, resumable stream of global batches, sliced per rank.

Epoch ``e`` visits the dataset in the order ``randperm(N)`` seeded from (seed, e); the
stream is the concatenation of those epochs, and global batch ``k`` is its next
``batch_size`` indices (a batch may straddle two epochs; no sample is dropped). Rank ``r``
of ``W`` takes the ``r``-th of ``W`` equal slices of each global batch, so the global
batch order is the same for every world size. The whole state is ``(epoch, position)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from ddkit.errors import ConfigError
from ddkit.training.rng import derive_seed

__all__ = ["BatchStream", "in_memory", "resolve_data", "split_item"]


def resolve_data(data: Any) -> tuple[Dataset[Any], DataLoader[Any] | None]:
    """The dataset behind ``data`` (tensor, Dataset, DataLoader, built-in name or ``{name=..., ...}``).

    A DataLoader's dataset, collate function and workers are kept; its order and batch size
    are not (the trainer's seeded order is what makes runs resumable).
    """
    if isinstance(data, (str, Mapping)):
        from ddkit import data as builtin

        if isinstance(data, str):
            return builtin.load(data), None
        params = dict(data)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(
                f"a data table must name a built-in dataset, e.g. {{name = 'gaussians', n = 10000}} "
                f"(got {dict(data)!r}); datasets are: {', '.join(builtin.names())}"
            )
        return builtin.load(name, **params), None
    if isinstance(data, Tensor):
        if data.ndim < 2 or data.shape[0] == 0:
            raise ConfigError(
                f"a tensor of samples must have shape [N, ...] with N >= 1 (got {tuple(data.shape)})"
            )
        from ddkit.data.arrays import ArrayDataset

        return ArrayDataset(data), None
    if isinstance(data, DataLoader):
        return data.dataset, data
    if isinstance(data, Dataset):
        return data, None
    raise ConfigError(
        "'data' must be a tensor of samples, a torch Dataset or DataLoader, the name of a built-in dataset "
        f"or a table {{name = ..., ...}} (got {type(data).__name__})"
    )


def in_memory(dataset: Dataset[Any]) -> tuple[Tensor, Tensor | None] | None:
    """``(samples, labels or None)`` of a dataset held as tensors (ArrayDataset, TensorDataset), else None."""
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, Tensor):
        labels = getattr(dataset, "labels", None)
        return samples, labels if isinstance(labels, Tensor) else None
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) in (1, 2):
        tensors = dataset.tensors
        return tensors[0], tensors[1] if len(tensors) == 2 else None
    return None


def split_item(batch: Any) -> tuple[Tensor, Any]:
    """A collated batch as ``(x, y or None)``; anything else is refused with the expected forms.

    An item ``(x, {keyword: tensor, ...})`` carries conditioning keywords for the model
    (e.g. ``encoder_hidden_states``); ``y`` is then that dict of tensors.
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Mapping):
        if not isinstance(batch[0], Tensor) or not all(isinstance(k, str) for k in batch[1]):
            raise ConfigError(
                "a dataset item with conditioning must be (x, {keyword: tensor}) with x a tensor and "
                "string keys"
            )
        return batch[0], {k: torch.as_tensor(v) for k, v in batch[1].items()}
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor):
        y = torch.as_tensor(batch[1])
        if y.is_floating_point():
            raise ConfigError(
                f"class labels must be integers (got a {y.dtype} tensor); items are x or (x, int label)"
            )
        return batch[0], y.long()
    if isinstance(batch, (tuple, list)) and len(batch) == 1 and isinstance(batch[0], Tensor):
        return batch[0], None
    raise ConfigError(
        "a dataset item must be a tensor x or a pair (x, y) with an int class label "
        f"(got {type(batch).__name__})"
    )


class BatchStream:
    """This rank's slice of each global batch of ``dataset``, in the seeded order (see module doc)."""

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        loader: DataLoader[Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.length = len(dataset)  # type: ignore[arg-type]
        if self.length < 1:
            raise ConfigError("the training data is empty")
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} must be divisible by the world size {world_size}")
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._memory = in_memory(dataset)
        self._loader = loader
        self._iter: Iterator[Any] | None = None
        self._perms: dict[int, Tensor] = {}

    def _permutation(self, epoch: int) -> Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            # The stream and a DataLoader's batch sampler may be an epoch apart: keep a few.
            if len(self._perms) >= 3:
                del self._perms[min(self._perms)]
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "data", epoch))
            perm = self._perms[epoch] = torch.randperm(self.length, generator=gen)
        return perm

    def _take_global(self, epoch: int, position: int) -> tuple[Tensor, int, int]:
        """The next global batch's indices from ``(epoch, position)`` and the state after it."""
        parts: list[Tensor] = []
        need = self.batch_size
        while need:
            perm = self._permutation(epoch)
            take = min(need, self.length - position)
            parts.append(perm[position : position + take])
            need -= take
            position += take
            if position == self.length:
                epoch, position = epoch + 1, 0
        return torch.cat(parts), epoch, position

    def _local(self, indices: Tensor) -> Tensor:
        lo = self.rank * self.local_batch
        return indices[lo : lo + self.local_batch]

    def peek_global_indices(self) -> Tensor:
        """The dataset indices of the next global batch (without consuming it)."""
        return self._take_global(self.epoch, self.position)[0]

    def _index_batches(self, epoch: int, position: int) -> Iterator[list[int]]:
        while True:
            indices, epoch, position = self._take_global(epoch, position)
            yield self._local(indices).tolist()

    def next(self) -> tuple[Tensor, Any]:
        """This rank's part of the next global batch, as ``(x, y or None)``; advances the state.

        ``y`` is a label tensor, or a dict of conditioning tensors (see :func:`split_item`).
        """
        indices, epoch, position = self._take_global(self.epoch, self.position)
        if self._memory is not None:
            samples, labels = self._memory
            local = self._local(indices)
            x = samples[local]
            y = labels[local].long() if labels is not None else None
        else:
            if self._iter is None:
                self._iter = iter(self._make_loader())
            x, y = split_item(next(self._iter))
        self.epoch, self.position = epoch, position
        return x, y

    def _make_loader(self) -> DataLoader[Any]:
        src = self._loader
        return DataLoader(
            self.dataset,
            batch_sampler=_Batches(self, self.epoch, self.position),  # type: ignore[arg-type]
            num_workers=src.num_workers if src is not None else 0,
            collate_fn=src.collate_fn if src is not None else default_collate,
            pin_memory=src.pin_memory if src is not None else False,
            worker_init_fn=src.worker_init_fn if src is not None else None,
        )

    def state_dict(self) -> dict[str, int]:
        """``epoch``, ``position`` (both global), ``length`` and ``batch_size``: plain ints."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "length": self.length,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved state (the dataset must have the same length)."""
        if int(state["length"]) != self.length:
            raise ValueError(
                f"the checkpoint's data order is for a dataset of {state['length']} items, this one has "
                f"{self.length}; resume with the same data"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iter = None


class _Batches:
    """An endless batch sampler for DataLoader, from a given stream state."""

    def __init__(self, stream: BatchStream, epoch: int, position: int) -> None:
        self._stream, self._epoch, self._position = stream, epoch, position

    def __iter__(self) -> Iterator[Sequence[int]]:
        return self._stream._index_batches(self._epoch, self._position)
