"""Capture and restore every random-number state a training step can touch, as plain data.

The captured state holds only tensors, ints, floats, strings, lists and dicts, so that it
is saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``: a
checkpoint never unpickles code.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "derive_seed", "restore_rng_state", "seed_everything"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed mixed from ``parts`` (e.g. run seed, stream name, step): stable across runs."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "kind": str(kind),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_state(state: Mapping[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (state["kind"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))
    )


def _python_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}


def _set_python_state(state: Mapping[str, Any]) -> None:
    random.setstate((int(state["version"]), tuple(int(v) for v in state["internal"]), state["gauss_next"]))


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state: torch CPU, each CUDA device, numpy, Python ``random`` and ``generators``."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": _python_state(),
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        # Only the current device: touching every GPU would open a context on each from every rank.
        device = torch.cuda.current_device()
        state["cuda"] = {"device": device, "state": torch.cuda.get_rng_state(device)}
    return state


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Restore what :func:`capture_rng_state` captured; ``generators`` are set in place by name.

    The CUDA state (of the device that was current) is restored where that device exists (a
    checkpoint from a GPU run resumed on the CPU keeps the CPU states alone).
    """
    torch.set_rng_state(state["torch"])
    _set_numpy_state(state["numpy"])
    _set_python_state(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and int(cuda["device"]) < torch.cuda.device_count():
        torch.cuda.set_rng_state(cuda["state"], int(cuda["device"]))
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name in saved:
            gen.set_state(saved[name])
