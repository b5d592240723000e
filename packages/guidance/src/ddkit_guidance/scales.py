"""Guidance scales that change over sampling: a constant, a list over the timestep range, or a callable.

The guidance sees only the training timestep ``t`` the model is fed, never the sampler's
step counter, so a list of n scales is read as a step function of ``t``: the range
[0, T) is cut into n equal bands and entry i covers the i-th band counted from the noisy
end, t ∈ [T·(n−1−i)/n, T·(n−i)/n). For an n-step sampler whose steps are spread evenly
over [0, T) (respaced "N sections", DDIM's "ddimN" stride, leading or trailing spacing)
every step falls in its own band, so entry i is used at sampling step i (step 0 is the
first, noisiest one), as latent-diffusion's ``ucg_schedule``; with other step counts the
list is still a well-defined schedule over t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ddkit.errors import CompositionError, ConfigError
from ddkit_guidance._checks import check_nonnegative, check_positive_int

__all__ = ["GuidanceScale", "ScaleLike"]

#: What a ``scale`` parameter accepts.
ScaleLike = float | Sequence[float] | Callable[[Tensor], float | Tensor]


class GuidanceScale:
    """A guidance scale as a function of the training timestep ``t`` (shape [B]).

    ``num_timesteps`` is the range T of the timesteps the model is fed (the training
    steps; 1000 for a chain with rescaled timesteps); only a list scale uses it.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_fn", "_table", "_tables", "constant", "name", "num_timesteps")

    def __init__(self, scale: ScaleLike, *, num_timesteps: int = 1000, name: str = "scale") -> None:
        self.name = name
        self.num_timesteps = check_positive_int("num_timesteps", num_timesteps)
        self.constant: float | None = None
        self._table: tuple[float, ...] = ()
        self._tables: dict[torch.device, Tensor] = {}
        self._fn: Callable[[Tensor], float | Tensor] | None = None
        if isinstance(scale, (str, bytes)):
            raise ConfigError(f"'{name}' must be a number, a list of numbers or a callable (got {scale!r})")
        if callable(scale):
            self._fn = scale
        elif isinstance(scale, Sequence):
            if len(scale) == 0:
                raise ConfigError(f"'{name}' as a list must hold at least one scale (got an empty list)")
            self._table = tuple(check_nonnegative(f"{name}[{i}]", s) for i, s in enumerate(scale))
            if len(self._table) > self.num_timesteps:
                raise ConfigError(
                    f"'{name}' lists {len(self._table)} scales but 'num_timesteps' is {self.num_timesteps}: "
                    "a list holds at most one scale per timestep; set num_timesteps to the model's T"
                )
        else:
            self.constant = check_nonnegative(name, scale)

    def __call__(self, t: Tensor) -> float | Tensor:
        """The scale at each timestep of ``t``: a float when it is one for the whole batch, else [B]."""
        if self.constant is not None:
            return self.constant
        if self._fn is not None:
            return self._call_fn(t)
        return self._lookup(t)

    def _call_fn(self, t: Tensor) -> float | Tensor:
        assert self._fn is not None
        value = self._fn(t)
        if isinstance(value, Tensor):
            if value.ndim == 0:
                return value.reshape(1).expand(t.shape[0])
            if value.shape != (t.shape[0],):
                raise ConfigError(
                    f"the '{self.name}' callable must return a number or a tensor of shape [{t.shape[0]}] "
                    f"(one scale per sample; got shape {tuple(value.shape)})"
                )
            return value
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0:
            raise ConfigError(f"the '{self.name}' callable must return finite numbers ≥ 0 (got {value!r})")
        return float(value)

    def _lookup(self, t: Tensor) -> Tensor:
        n, T = len(self._table), self.num_timesteps
        tf = t.double()
        if bool((tf > T).any()) or bool((tf < 0).any()):
            raise CompositionError(
                f"the '{self.name}' list is spread over timesteps [0, {T}), but the model was fed "
                f"t in [{tf.min().item():g}, {tf.max().item():g}]; set num_timesteps to the model's "
                "number of training timesteps (1000 when timesteps are rescaled)"
            )
        band = torch.floor(tf * n / T).long().clamp(0, n - 1)
        table = self._tables.get(t.device)
        if table is None:
            table = torch.tensor(self._table, dtype=torch.float64, device=t.device)
            self._tables[t.device] = table
        return table[n - 1 - band]

    def __repr__(self) -> str:
        if self.constant is not None:
            return repr(self.constant)
        if self._fn is not None:
            return repr(self._fn)
        return repr(list(self._table))
