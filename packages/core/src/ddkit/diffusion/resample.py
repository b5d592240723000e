"""Training-timestep resamplers: which steps a batch trains on, with importance weights.

Both implement :class:`ddkit.protocols.TimestepResampler`. Draws come only from the
torch generator passed to ``sample`` (so a resumed run draws the same steps); state is
plain data (tensors and numbers) for ``torch.load(weights_only=True)``. Under
``torch.distributed`` every rank reports its losses and all ranks learn the same history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ddkit.diffusion.schedules import MAX_TIMESTEPS
from ddkit.errors import ConfigError

if TYPE_CHECKING:
    from ddkit.diffusion.process import GaussianProcess

__all__ = [
    "LogNormalResampler",
    "LogitNormalResampler",
    "LossSecondMomentResampler",
    "UniformResampler",
    "gather_losses",
    "to_chain_steps",
]


#: The most losses per step the loss-second-moment resampler remembers.
MAX_HISTORY = 10_000


def _check_timesteps(timesteps: object) -> int:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int | np.integer) or timesteps < 1:
        raise ConfigError(
            f"'timesteps' must be a positive int, the number of training steps (got {timesteps!r})"
        )
    if timesteps > MAX_TIMESTEPS:
        raise ConfigError(
            f"'timesteps' must be at most {MAX_TIMESTEPS}, as for schedules (got {timesteps!r}); it is the "
            "schedule's number of training steps"
        )
    return int(timesteps)


def gather_losses(t: Tensor, losses: Tensor) -> tuple[list[int], list[float]]:
    """This rank's (step, loss) pairs and every other rank's, in rank order; local ones when not distributed.

    Ranks may hold different batch sizes: sizes are gathered first and the batches padded.
    """
    local_t = t.detach().reshape(-1).long()
    local_l = losses.detach().reshape(-1)
    if local_t.shape != local_l.shape:
        raise ValueError(
            f"got {local_t.numel()} timesteps but {local_l.numel()} losses; pass one loss per sample"
        )
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [int(x) for x in local_t.tolist()], [float(x) for x in local_l.tolist()]
    world = dist.get_world_size()
    device = local_t.device
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local_t.numel()], dtype=torch.int64, device=device))
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    pad = longest - local_t.numel()
    padded_t = torch.cat([local_t, local_t.new_zeros(pad)])
    padded_l = torch.cat([local_l, local_l.new_zeros(pad)])
    all_t = [torch.empty_like(padded_t) for _ in range(world)]
    all_l = [torch.empty_like(padded_l) for _ in range(world)]
    dist.all_gather(all_t, padded_t)
    dist.all_gather(all_l, padded_l)
    ts = [int(x) for batch, n in zip(all_t, counts) for x in batch[:n].tolist()]
    ls = [float(x) for batch, n in zip(all_l, counts) for x in batch[:n].tolist()]
    return ts, ls


def _draw(
    probs: np.ndarray, batch_size: int, device: torch.device | str, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    # Importance sampling: draw step i with probability p_i and weight it 1 / (T p_i), so the
    # weighted loss is an unbiased estimate of the uniform-step objective.
    where = generator.device if generator is not None else torch.device("cpu")
    p = torch.from_numpy(probs).to(where)
    t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
    weights = 1.0 / (len(probs) * p[t])
    return t.to(device), weights.float().to(device)


class UniformResampler:
    """Every step equally likely, weight 1 (DDPM's training).

    .. versionadded:: 0.1.0
    """

    def __init__(self, timesteps: int) -> None:
        self.timesteps = _check_timesteps(timesteps)

    def weights(self) -> np.ndarray:
        """Unnormalised sampling weights of the steps."""
        return np.ones(self.timesteps, dtype=np.float64)

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` uniform steps and unit weights."""
        where = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(0, self.timesteps, (batch_size,), generator=generator, device=where)
        return t.to(device), torch.ones(batch_size, device=device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Nothing to learn: uniform sampling ignores losses."""

    def state_dict(self) -> dict[str, Any]:
        return {"timesteps": self.timesteps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["timesteps"]) != self.timesteps:
            raise ValueError(
                f"state is for {state['timesteps']} timesteps, this resampler has {self.timesteps}"
            )

    def __repr__(self) -> str:
        return f"UniformResampler(timesteps={self.timesteps})"


class LossSecondMomentResampler:
    """Draw steps in proportion to the RMS of their recent losses (Nichol & Dhariwal 2021, §3.3).

    Uniform until every step has ``history_per_term`` losses; then p_t ∝ sqrt(E[L_t²]),
    mixed with ``uniform_prob`` of the uniform distribution (guided-diffusion's resampler).

    .. versionadded:: 0.1.0
    """

    def __init__(self, timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001) -> None:
        self.timesteps = _check_timesteps(timesteps)
        if (
            isinstance(history_per_term, bool)
            or not isinstance(history_per_term, int)
            or not 1 <= history_per_term <= MAX_HISTORY
        ):
            raise ConfigError(
                f"'history_per_term' must be an int in [1, {MAX_HISTORY}], the losses kept per step "
                f"(got {history_per_term!r}; guided-diffusion keeps 10)"
            )
        if not 0.0 <= uniform_prob <= 1.0:
            raise ConfigError(f"'uniform_prob' must lie in [0, 1] (got {uniform_prob!r})")
        self.history_per_term = history_per_term
        self.uniform_prob = float(uniform_prob)
        self._history = np.zeros((self.timesteps, history_per_term), dtype=np.float64)
        self._counts = np.zeros(self.timesteps, dtype=np.int64)

    @property
    def warmed_up(self) -> bool:
        """Whether every step has its full loss history (before that, sampling is uniform)."""
        return bool((self._counts == self.history_per_term).all())

    def weights(self) -> np.ndarray:
        """Sampling weights of the steps (normalised once warmed up)."""
        if not self.warmed_up:
            return np.ones(self.timesteps, dtype=np.float64)
        w: np.ndarray = np.sqrt(np.mean(self._history**2, axis=-1))
        w /= np.sum(w)
        w *= 1 - self.uniform_prob
        w += self.uniform_prob / len(w)
        return w

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` steps drawn from :meth:`weights`, with weights 1 / (T p_t)."""
        w = self.weights()
        return _draw(w / np.sum(w), batch_size, device, generator)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record this rank's per-sample losses and, when distributed, every other rank's."""
        self.update_with_all_losses(*gather_losses(t, losses))

    def update_with_all_losses(self, ts: Sequence[int], losses: Sequence[float]) -> None:
        """Record losses already gathered from all ranks (each rank must pass the same lists)."""
        for t, loss in zip(ts, losses):
            if not 0 <= t < self.timesteps:
                raise ValueError(f"timestep {t} is outside [0, {self.timesteps - 1}]")
            if self._counts[t] == self.history_per_term:
                self._history[t, :-1] = self._history[t, 1:]
                self._history[t, -1] = loss
            else:
                self._history[t, self._counts[t]] = loss
                self._counts[t] += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "timesteps": self.timesteps,
            "history_per_term": self.history_per_term,
            "uniform_prob": self.uniform_prob,
            "loss_history": torch.from_numpy(self._history.copy()),
            "loss_counts": torch.from_numpy(self._counts.copy()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        history = torch.as_tensor(state["loss_history"], dtype=torch.float64)
        counts = torch.as_tensor(state["loss_counts"], dtype=torch.int64)
        want = (self.timesteps, self.history_per_term)
        if tuple(history.shape) != want or tuple(counts.shape) != (self.timesteps,):
            raise ValueError(
                f"state has a loss history of shape {tuple(history.shape)}, this resampler keeps {want}; "
                "build it with the same timesteps and history_per_term"
            )
        self.uniform_prob = float(state.get("uniform_prob", self.uniform_prob))
        self._history = history.numpy().copy()
        self._counts = counts.numpy().copy()

    def __repr__(self) -> str:
        return (
            f"LossSecondMomentResampler(timesteps={self.timesteps}, "
            f"history_per_term={self.history_per_term}, uniform_prob={self.uniform_prob})"
        )


def _finite(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ConfigError(f"'{name}' must be a finite number (got {value!r})")
    if positive and value <= 0:
        raise ConfigError(f"'{name}' must be > 0 (got {value!r})")
    return float(value)


class _ContinuousResampler:
    """Draws continuous noise levels with unit weights; ``space`` says what they measure.

    ``"time"``: a fraction of the path's time range (t itself on ``rectified-flow``); ``"sigma"``:
    the noise level σ = sqrt((1 − ᾱ)/ᾱ). :func:`to_chain_steps` turns either into the chain's
    fractional steps, on a path exactly.
    """

    space: str = "time"

    def __init__(self, mean: float, std: float) -> None:
        self.mean = _finite("mean", mean)
        self.std = _finite("std", std, positive=True)

    def _normal(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        where = generator.device if generator is not None else torch.device("cpu")
        return (
            torch.randn(batch_size, generator=generator, device=where, dtype=torch.float64) * self.std
            + self.mean
        )

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Nothing to learn: the density is fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if float(state["mean"]) != self.mean or float(state["std"]) != self.std:
            raise ValueError(
                f"state is for mean={state['mean']}, std={state['std']}; this resampler has "
                f"mean={self.mean}, std={self.std}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class LogitNormalResampler(_ContinuousResampler):
    """t = sigmoid(u), u ~ N(``mean``, ``std``²): SD3's density over the path's time (Esser et al. 2024).

    .. versionadded:: 0.2.0
    """

    space = "time"

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__(mean, std)

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` times in (0, 1) and unit weights."""
        t = torch.sigmoid(self._normal(batch_size, generator))
        return t.to(device), torch.ones(batch_size, device=device)


class LogNormalResampler(_ContinuousResampler):
    """ln σ ~ N(``mean``, ``std``²): EDM's training density over noise levels (Karras et al. 2022).

    .. versionadded:: 0.2.0
    """

    space = "sigma"

    def __init__(self, mean: float = -1.2, std: float = 1.2) -> None:
        super().__init__(mean, std)

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` noise levels σ and unit weights."""
        sigma = torch.exp(self._normal(batch_size, generator))
        return sigma.to(device), torch.ones(batch_size, device=device)


def to_chain_steps(process: GaussianProcess, resampler: object, t: Tensor) -> Tensor:
    """A resampler's draws as steps of ``process``: long steps as they are, continuous ones converted.

    ``"time"`` draws are fractions of the path's time range (on a discrete chain: the
    :class:`~ddkit.protocols.Schedule` convention, step i at (i + 1)/T); ``"sigma"`` draws are
    σ = sqrt((1 − ᾱ)/ᾱ). The result is float (fractional steps) for continuous draws.
    """
    space = getattr(resampler, "space", "index")
    if space == "index" or not t.is_floating_point():
        return t
    values = t.detach().cpu().double().numpy()
    if space == "time":
        if process.path is not None:
            steps = process.index_of_time(values * process.path.t_max)
        else:
            steps = values * process.num_timesteps - 1.0
    elif space == "sigma":
        steps = process.index_of_sigma(values)
    else:
        raise ConfigError(f"resampler {resampler!r} draws in unknown space {space!r}; use 'time' or 'sigma'")
    steps = np.clip(steps, -1.0 if process.path is not None else 0.0, process.num_timesteps - 1)
    return torch.from_numpy(np.asarray(steps, dtype=np.float64)).to(t.device)
