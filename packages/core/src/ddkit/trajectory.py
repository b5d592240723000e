"""A sampling trajectory stored for reinforcement-learning fine-tuning (DDPO, Flow-GRPO).

:meth:`ddkit.Pipeline.rollout` returns one; :meth:`ddkit.Pipeline.transition_log_prob` reads
a stored step back under the pipeline's current weights, which is what a PPO ratio needs.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ddkit.errors import InputError, InputTypeError

__all__ = ["Trajectory"]


def _select(value: Any, index: Tensor, n: int) -> Any:
    """``value`` restricted to the samples ``index`` where it holds one entry per sample."""
    if isinstance(value, Tensor):
        return value[index] if value.ndim > 0 and value.shape[0] == n else value
    if isinstance(value, Mapping):
        return {k: _select(v, index, n) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_select(v, index, n) for v in value)
    if isinstance(value, list):
        return [_select(v, index, n) for v in value]
    return value


@dataclass(eq=False)
class Trajectory:
    """The states, timesteps and per-step log-densities of ``n`` samples drawn by a stochastic sampler.

    ``x``: the states x_T … x_0, shape ``[steps + 1, n, *shape]`` (in the sampler's scaling,
    latents in a latent pipeline; ``x[-1]`` are the samples); ``timesteps``: the training
    timestep the model was given at each step (float64, ``[steps]``); ``log_probs``:
    log p(x_{k+1} | x_k) of each drawn transition under the weights that drew it,
    ``[steps, n]`` in the samples' dtype, NaN where a step draws no noise; ``conditioning``:
    the (normalized) conditioning the model was given; ``reduction``: how ``log_probs`` were
    reduced over the non-batch dimensions (``"mean"`` or ``"sum"``).

    ``history`` holds per step what a multistep sampler carried into it (None for one-step
    samplers), ``weight`` the elements that count (inpainting: 1 where generated), ``start``
    the sampler's step that step 0 is (> 0 for image-to-image), ``sampler`` its name.

    .. versionadded:: 0.2.0
    """

    x: Tensor
    timesteps: Tensor
    log_probs: Tensor
    conditioning: dict[str, Any]
    reduction: str = "mean"
    history: list[Any] = field(default_factory=list)
    weight: Tensor | None = None
    start: int = 0
    sampler: str = ""
    #: What :meth:`ddkit.Pipeline.transition_log_prob` reuses between calls (its plan).
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> int:
        """The number of transitions stored."""
        return int(self.x.shape[0]) - 1

    @property
    def n(self) -> int:
        """The number of samples."""
        return int(self.x.shape[1])

    @property
    def samples(self) -> Tensor:
        """The final states x_0, shape ``[n, *shape]``."""
        return self.x[-1]

    @property
    def stochastic_steps(self) -> list[int]:
        """The steps that drew noise (those :meth:`ddkit.Pipeline.transition_log_prob` accepts)."""
        steps = self.cache.get("stochastic_steps")
        if steps is None:
            finite = ~torch.isnan(self.log_probs).any(dim=1)
            steps = self.cache["stochastic_steps"] = [i for i, ok in enumerate(finite.tolist()) if ok]
        return list(steps)

    def select(self, index: Tensor | Sequence[int] | slice) -> Trajectory:
        """The trajectory of some samples only (a PPO minibatch): ``index`` picks along the batch.

        Tensors of the conditioning with one entry per sample are indexed too; the rest is kept.
        """
        n = self.n
        if isinstance(index, slice):
            idx = torch.arange(n)[index]
        elif isinstance(index, Tensor):
            idx = index.to("cpu")
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
        elif isinstance(index, Sequence) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in index
        ):
            idx = torch.as_tensor(list(index), dtype=torch.long)
        else:
            raise InputTypeError(
                f"'index' must be a slice, a sequence of ints or an index tensor (got {type(index).__name__})"
            )
        if idx.numel() == 0 or int(idx.min()) < -n or int(idx.max()) >= n:
            raise InputError(
                f"'index' must pick at least one of the {n} samples, each in [0, {n}) (got {index!r})"
            )
        dev = self.x.device
        on = idx.to(dev)
        stochastic = self.cache.get("stochastic_steps")
        return replace(
            self,
            x=self.x[:, on],
            log_probs=self.log_probs[:, on],
            conditioning=_select(self.conditioning, on, n),
            history=[_select(h, on, n) for h in self.history],
            weight=None if self.weight is None else self.weight[on],
            cache={} if stochastic is None else {"stochastic_steps": stochastic},
        )

    def to(self, device: torch.device | str) -> Trajectory:
        """The trajectory with its tensors on ``device`` (conditioning and history included)."""

        def move(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value.to(device)
            if isinstance(value, Mapping):
                return {k: move(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(move(v) for v in value)
            return value

        return replace(
            self,
            x=self.x.to(device),
            log_probs=self.log_probs.to(device),
            conditioning=move(self.conditioning),
            history=[move(h) for h in self.history],
            weight=None if self.weight is None else self.weight.to(device),
            cache={},
        )

    def __repr__(self) -> str:
        return (
            f"Trajectory(n={self.n}, steps={self.steps}, shape={tuple(self.x.shape[2:])}, "
            f"dtype={self.x.dtype}, sampler={self.sampler!r}, reduction={self.reduction!r})"
        )
