"""Process-group helpers for runs launched by ``torchrun`` (no process management of our own).

``init_from_env()`` joins the group that ``torchrun`` describes in ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (NCCL when CUDA is available, else gloo).
Every helper also works, as a no-op, in a plain single process, so callers need no branches.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ddkit.errors import ConfigError

__all__ = [
    "all_gather_tensor",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "default_device",
    "env_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "leave",
    "local_rank",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a process group is initialised (and so collectives must be called on every rank)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 outside a group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the group (1 outside a group)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """The rank on this machine: ``LOCAL_RANK`` as set by torchrun, else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, the process that alone writes checkpoints, logs and outputs."""
    return rank() == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset): the size a torchrun launch asks for."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        raise ConfigError(f"the environment variable WORLD_SIZE must be an integer (got {raw!r})") from None
    if size < 1:
        raise ConfigError(f"the environment variable WORLD_SIZE must be at least 1 (got {size})")
    return size


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes, when ``WORLD_SIZE > 1``; return whether distributed.

    Idempotent: a group already initialised (by us or by the caller) is kept. ``backend``
    defaults to NCCL with CUDA and gloo without. On CUDA the current device is set to
    ``LOCAL_RANK`` so that each rank drives its own GPU.
    """
    if is_distributed():
        return True
    if env_world_size() <= 1:
        return False
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a distributed run, but {', '.join(missing)} "
            "is not set; launch with `torchrun --nproc_per_node=N ...`, which sets them"
        )
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run with WORLD_SIZE=1")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(default_device())
    dist.init_process_group(backend=backend, init_method="env://")
    global _joined
    _joined = True
    return True


#: Whether :func:`init_from_env` created the current process group (so :func:`leave` may end it).
_joined = False


def leave() -> None:
    """Destroy the process group :func:`init_from_env` created (a caller's own group is kept).

    The ``ddkit`` commands call it when they finish: a gloo group left to interpreter exit can
    abort the process ("terminate called without an active exception").
    """
    global _joined
    if _joined and is_distributed():
        dist.destroy_process_group()
    _joined = False


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather_tensor(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order (itself when not distributed).

    Ranks may hold different lengths along dim 0 (e.g. the last shard of a sampling job); the
    other dimensions must agree.
    """
    if not is_distributed():
        return tensor
    size = world_size()
    length = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    lengths = [torch.zeros_like(length) for _ in range(size)]
    dist.all_gather(lengths, length)
    counts = [int(n.item()) for n in lengths]
    longest = max(counts)
    padded = tensor.contiguous()
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([padded, pad])
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over every rank (``tensor`` itself when not distributed)."""
    if not is_distributed():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank; return it everywhere."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
