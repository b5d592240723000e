"""Standard normal noise drawn from one generator for the batch, or one generator per sample.

With a list of generators, sample i draws only from generator i, the same tensor shape each
time, so its noise (and with a batch-independent model, its whole trajectory) is
bit-identical whatever batch it is drawn in.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddkit.protocols import Generator

__all__ = ["check_generator", "randn"]


def check_generator(generator: Generator, batch: int) -> None:
    """Raise ``TypeError``/``ValueError`` for a generator argument that cannot draw ``batch`` samples."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
        raise TypeError(
            "'generator' must be None, a torch.Generator, or a list of torch.Generator, one per sample "
            f"(got {type(generator).__name__})"
        )
    if len(generator) != batch:
        raise ValueError(
            f"a list of generators must hold one per sample: {batch} (got {len(generator)}); "
            "pass a single torch.Generator to draw the whole batch from one"
        )


def randn(shape: Sequence[int], generator: Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A standard normal tensor of ``shape``: from the global RNG, one generator, or one per sample.

    The global-RNG path is exactly ``torch.randn(shape)``, so a sampler seeded like
    guided-diffusion (which calls ``th.randn_like``) draws the same numbers.
    """
    size = tuple(shape)
    if generator is None:
        return torch.randn(size, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        if generator.device.type != torch.device(device).type:
            # A generator draws on its own device (as Pipeline.noise does); move the result.
            return torch.randn(size, generator=generator, device=generator.device, dtype=dtype).to(device)
        return torch.randn(size, generator=generator, device=device, dtype=dtype)
    gens = list(generator)
    if all(g.device.type == torch.device(device).type for g in gens):
        out = torch.empty(size, device=device, dtype=dtype)
        for row, g in zip(out, gens):
            row.normal_(generator=g)
        return out
    rows = [torch.randn(size[1:], generator=g, device=g.device, dtype=dtype).to(device) for g in gens]
    return torch.stack(rows)
