"""What a denoiser returns: the network's output read through a parameterization."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

__all__ = ["Prediction"]


@dataclass(slots=True)
class Prediction:
    """The prediction for ``x_t`` at one step.

    ``x0`` and ``eps`` are always present (``x0`` after clipping / thresholding /
    ``denoised_fn``). ``mean``, ``variance`` and ``log_variance`` describe the reverse
    transition p(x_{t-1} | x_t) of the chain the denoiser is bound to; they are filled
    when asked for with ``posterior=True`` (ancestral samplers, losses) and left ``None``
    otherwise, so deterministic samplers do not pay for them.

    .. versionadded:: 0.1.0
    """

    x0: Tensor
    eps: Tensor
    model_output: Tensor
    mean: Tensor | None = None
    variance: Tensor | None = None
    log_variance: Tensor | None = None

    def replace(self, **changes: Any) -> Prediction:
        """A copy with some fields changed (guidance uses this)."""
        return replace(self, **changes)
