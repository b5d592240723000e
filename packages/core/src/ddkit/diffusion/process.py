"""The discrete Gaussian diffusion chain q(x_t | x_0) and its posterior, with float64 tables.

Tables are computed once in float64 (as guided-diffusion does) and moved to a device and
dtype once, cached per (device, dtype): a sampling step never copies a table. Coefficients
for a step shared by the whole batch come back as Python floats, so no gather and no
host-device synchronisation happens inside a sampling loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ddkit.diffusion.respace import space_timesteps
from ddkit.prediction import Linear, combine

if TYPE_CHECKING:
    from ddkit.diffusion.paths import PathSchedule

__all__ = ["Coef", "GaussianProcess", "Step", "validate_betas"]

#: Entries a per-step cache holds before it is emptied (a loop revisits a few dozen steps).
_CACHE_LIMIT = 4096
#: A step index: one Python number for the whole batch, or a tensor of shape [B].
Step = int | float | Tensor
#: A coefficient: a Python float (step shared by the batch) or a tensor broadcastable to x.
Coef = float | Tensor

_TABLES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "alphas_cumprod_next",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "log_betas",
    "fixed_large_variance",
    "fixed_large_log_variance",
    "recip_posterior_mean_coef1",
    "posterior_mean_coef2_over_coef1",
    "eps_x0_a",
    "eps_x0_c",
    "eps_x0_s",
)


def _eps_from_x0_coefs(alpha_bar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, c, s) with eps = (a·x_t − c·x_0)·s, finite for every ᾱ in [0, 1)."""
    zero = alpha_bar <= 0.0
    safe = np.where(zero, 0.5, alpha_bar)
    a = np.where(zero, 1.0, np.sqrt(1.0 / safe))
    c = np.where(zero, 0.0, 1.0)
    s = np.where(zero, 1.0, 1.0 / np.sqrt(1.0 / safe - 1.0))
    return a, c, s


def _fractional(t: object) -> bool:
    """Whether a step lies between the chain's steps (a float tensor, or a non-integer float)."""
    if isinstance(t, Tensor):
        return t.is_floating_point()
    return isinstance(t, float) and not t.is_integer()


def validate_betas(betas: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    """Return ``betas`` as a float64 array, or raise ``ValueError`` saying what is wrong."""
    if isinstance(betas, Tensor):
        betas = betas.detach().cpu().double().numpy()
    arr = np.array(betas, dtype=np.float64)  # a copy: the caller may change theirs
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D sequence (got shape {arr.shape})")
    bad = ~((arr > 0) & (arr <= 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"every beta must lie in (0, 1] (got betas[{i}] = {float(arr[i])!r}); a zero or negative beta "
            "adds no noise at its step and one above 1 is not a variance: fix the schedule's parameters"
        )
    return arr


class GaussianProcess:
    """A discrete diffusion chain over ``num_timesteps`` steps, possibly respaced.

    ``timestep_map[i]`` is the training timestep that step ``i`` of this chain stands for
    (the identity for a full chain); the network is always fed training timesteps.
    ``rescale_timesteps`` feeds ``t * 1000 / original_num_steps`` instead (guided-diffusion's
    option of that name).

    A chain through a continuous :mod:`Gaussian path <ddkit.diffusion.paths>` (``path``) has a
    path time per step (``times``); ᾱ between its steps and every conversion between chain
    index, time and noise level come from the path's closed form, the network is fed the
    path's model time, and x is scaled to the path's own x_t before the call (:meth:`scale`).

    .. versionadded:: 0.1.0
    """

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    alphas_cumprod_next: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    log_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    log_betas: np.ndarray
    fixed_large_variance: np.ndarray
    fixed_large_log_variance: np.ndarray
    recip_posterior_mean_coef1: np.ndarray
    posterior_mean_coef2_over_coef1: np.ndarray
    eps_x0_a: np.ndarray
    eps_x0_c: np.ndarray
    eps_x0_s: np.ndarray

    def __init__(
        self,
        betas: Sequence[float] | np.ndarray | Tensor,
        *,
        timestep_map: Sequence[int] | np.ndarray | None = None,
        original_num_steps: int | None = None,
        rescale_timesteps: bool = False,
        path: PathSchedule | None = None,
        times: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        b = validate_betas(betas)
        self.num_timesteps = int(b.shape[0])
        self.original_num_steps = int(original_num_steps or self.num_timesteps)
        self.rescale_timesteps = bool(rescale_timesteps)
        tmap = np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map)
        if tmap.shape != (self.num_timesteps,):
            raise ValueError(f"timestep_map must have {self.num_timesteps} entries (got {tmap.shape})")
        self.timestep_map = tmap.astype(np.int64)
        #: The continuous path this chain walks (None: a discrete chain of betas).
        self.path = path
        #: The path time of each step (None for a discrete chain).
        self.times: np.ndarray | None = None
        if path is not None:
            grid_times = path.grid()[self.timestep_map] if times is None else np.asarray(times, np.float64)
            if grid_times.shape != (self.num_timesteps,):
                raise ValueError(f"times must have {self.num_timesteps} entries (got {grid_times.shape})")
            self.times = grid_times

        alphas = 1.0 - b
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        # The posterior variance is 0 at the first step; its log is clipped to the next value.
        post_var_first = post_var[1] if self.num_timesteps > 1 else b[0]
        coef1 = b * np.sqrt(ac_prev) / (1.0 - ac)
        coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        # fixed-large: betas, with the first entry set to the posterior variance for a better
        # decoder likelihood (guided-diffusion's trick).
        large = np.append(post_var_first, b[1:])
        with np.errstate(divide="ignore"):
            tables = {
                "betas": b,
                "alphas_cumprod": ac,
                "alphas_cumprod_prev": ac_prev,
                "alphas_cumprod_next": np.append(ac[1:], 0.0),
                "sqrt_alphas_cumprod": np.sqrt(ac),
                "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
                "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
                "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
                "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
                "posterior_variance": post_var,
                "posterior_log_variance_clipped": np.log(np.append(post_var_first, post_var[1:])),
                "posterior_mean_coef1": coef1,
                "posterior_mean_coef2": coef2,
                "log_betas": np.log(b),
                "fixed_large_variance": large,
                "fixed_large_log_variance": np.log(large),
                "recip_posterior_mean_coef1": 1.0 / coef1,
                "posterior_mean_coef2_over_coef1": coef2 / coef1,
                # eps = (a·x_t − c·x_0)·s: guided-diffusion's (sqrt(1/ᾱ)·x_t − x_0)/sqrt(1/ᾱ − 1)
                # where ᾱ > 0, and x_t itself where ᾱ = 0 (its limit; theirs is NaN there).
                **dict(zip(("eps_x0_a", "eps_x0_c", "eps_x0_s"), _eps_from_x0_coefs(ac))),
            }
        for name, value in tables.items():
            setattr(self, name, value)
        self._cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}
        self._floats: dict[str, list[float]] = {}
        self._map_cache: dict[torch.device, Tensor] = {}
        self._step_t_cache: dict[tuple[int | float, type, int, torch.device], Tensor] = {}
        self._points: dict[float, tuple[float, float, float, float, float, float]] = {}
        self._is_respaced = self.num_timesteps != self.original_num_steps or not np.array_equal(
            self.timestep_map, np.arange(self.num_timesteps)
        )
        self._scale_floats: list[float] | None = None

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: np.ndarray, **kwargs: object) -> GaussianProcess:
        """Build a chain whose cumulative products are ``alphas_cumprod`` (used by respacing)."""
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        betas = 1.0 - ac / np.append(1.0, ac[:-1])
        return cls(betas, **kwargs)  # type: ignore[arg-type]

    # -- tables -------------------------------------------------------------------------

    def table(self, name: str, device: torch.device | str, dtype: torch.dtype) -> Tensor:
        """Table ``name`` as a tensor on ``device`` in ``dtype``, uploaded once and cached."""
        key = (name, torch.device(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            if name not in _TABLES:
                raise KeyError(f"unknown table {name!r}; tables are: {', '.join(_TABLES)}")
            # float64 -> dtype on the host, as guided-diffusion's `.float()` after indexing does.
            cached = torch.from_numpy(getattr(self, name)).to(dtype).to(device)
            self._cache[key] = cached
        return cached

    def _float_table(self, name: str) -> list[float]:
        if name not in _TABLES:
            raise KeyError(f"unknown table {name!r}; tables are: {', '.join(_TABLES)}")
        floats: list[float] = getattr(self, name).tolist()
        self._floats[name] = floats
        return floats

    def coef(self, name: str, t: Step, like: Tensor) -> Coef:
        """Table ``name`` at step ``t``: a float for a shared step, else a tensor shaped [B, 1, ...].

        The shared-step path (a Python int) is a list lookup: samplers call it in hot loops.
        """
        if type(t) is int:
            floats = self._floats.get(name)
            return (floats if floats is not None else self._float_table(name))[t]
        if isinstance(t, Tensor):
            if t.is_floating_point():
                raise TypeError("a fractional step has no table entry; pass alpha_bar explicitly")
            values = self.table(name, like.device, like.dtype)[t]
            return values.reshape(-1, *([1] * (like.ndim - 1)))
        if isinstance(t, float) and not t.is_integer():
            raise TypeError("a fractional step has no table entry; pass alpha_bar explicitly")
        floats = self._floats.get(name)
        return (floats if floats is not None else self._float_table(name))[int(t)]

    def alpha_bar(self, t: Step, like: Tensor | None = None) -> Coef:
        """ᾱ at step ``t`` of this chain; fractional steps interpolate log ᾱ linearly (a path: exactly)."""
        if type(t) is int:  # the samplers' hot path: a list lookup
            floats = self._floats.get("alphas_cumprod")
            return (floats if floats is not None else self._float_table("alphas_cumprod"))[t]
        if self.path is not None and _fractional(t):
            return self._path_alpha_bar(t, like)
        if isinstance(t, Tensor):
            ref = like if like is not None else t.double()
            if not t.is_floating_point():
                return self.coef("alphas_cumprod", t, ref)
            log_ac = torch.log(self.table("alphas_cumprod", t.device, torch.float64))
            tf = t.double().clamp(0, self.num_timesteps - 1)
            lo = tf.floor().long()
            hi = (lo + 1).clamp(max=self.num_timesteps - 1)
            w = tf - lo
            # At a grid point take the table itself (log ᾱ is -inf where a schedule ends at ᾱ = 0).
            ab = torch.where(w == 0, log_ac[lo].exp(), torch.exp(log_ac[lo] * (1 - w) + log_ac[hi] * w))
            return ab.to(ref.dtype).reshape(-1, *([1] * (ref.ndim - 1)))
        step = float(t)
        lo_i = int(np.floor(step))
        if lo_i == step:
            return float(self.alphas_cumprod[lo_i])
        hi_i = min(lo_i + 1, self.num_timesteps - 1)
        frac = step - lo_i
        with np.errstate(divide="ignore"):
            log_lo, log_hi = np.log(self.alphas_cumprod[lo_i]), np.log(self.alphas_cumprod[hi_i])
        return float(np.exp(log_lo * (1 - frac) + log_hi * frac))

    def model_timesteps(self, t: Step, batch: int, device: torch.device | str) -> Tensor:
        """The timesteps the network is fed for step ``t`` of this chain (training indices).

        For a Python int or float step the tensor is built once per (step, batch, device) and
        reused: a sampling loop asks for the same few every call. Treat it as read-only.
        """
        if type(t) is int or type(t) is float:
            # ODE samplers revisit the same fractional steps every call (on a path or a chain of
            # betas alike): cache those too.
            # (the type is in the key: an int step feeds long timesteps, a float one float64)
            key = (t, type(t), batch, device if type(device) is torch.device else torch.device(device))
            cached = self._step_t_cache.get(key)
            if cached is None:
                if len(self._step_t_cache) > _CACHE_LIMIT:
                    self._step_t_cache.clear()
                cached = self._step_t_cache[key] = self._model_timesteps(t, batch, device)
            return cached
        return self._model_timesteps(t, batch, device)

    def _model_timesteps(self, t: Step, batch: int, device: torch.device | str) -> Tensor:
        if self.path is not None:
            times = self.time_of_index(t.detach().cpu().double().numpy() if isinstance(t, Tensor) else t)
            tt = torch.as_tensor(np.asarray(times, dtype=np.float64), device=device)
            if tt.ndim == 0:
                tt = tt.expand(batch)
            return self.path.model_time(tt)
        if isinstance(t, Tensor):
            tt = t.to(device)
            if tt.ndim == 0:
                tt = tt.expand(batch)
        else:
            tt = torch.full(
                (batch,), t, device=device, dtype=torch.float64 if isinstance(t, float) else torch.long
            )
        if not self._is_respaced:
            out = tt
        else:
            tmap = self._map_cache.get(torch.device(device))
            if tmap is None:
                tmap = torch.from_numpy(self.timestep_map).to(device)
                self._map_cache[torch.device(device)] = tmap
            if tt.is_floating_point():
                lo = tt.floor().long().clamp(0, self.num_timesteps - 1)
                hi = (lo + 1).clamp(max=self.num_timesteps - 1)
                w = tt - lo
                out = tmap[lo] * (1 - w) + tmap[hi] * w
            else:
                out = tmap[tt]
        if self.rescale_timesteps:
            return out.float() * (1000.0 / self.original_num_steps)
        return out

    @property
    def is_respaced(self) -> bool:
        """Whether this chain skips training steps (its timestep map is not the identity)."""
        return self._is_respaced

    def respaced(self, sections: str) -> GaussianProcess:
        """The chain keeping the steps a section string selects: ``"ddim25"``, ``"250"``, ``"10,15,20"``.

        See :func:`ddkit.diffusion.respace.space_timesteps`; :meth:`respace` takes explicit steps.
        """
        if not isinstance(sections, str):
            raise TypeError(
                f"respaced() takes a section string such as 'ddim25' or '10,15,20' (got {sections!r}); "
                "pass explicit steps to respace() instead"
            )
        return self.respace(space_timesteps(self.num_timesteps, sections))

    def respace(self, use_timesteps: Iterable[int]) -> GaussianProcess:
        """The chain that visits only ``use_timesteps`` (training indices) of this one.

        Betas are rebuilt from ᾱ so that ᾱ at every kept step equals this chain's.
        """
        keep = sorted({int(i) for i in use_timesteps})
        if not keep:
            raise ValueError("use_timesteps is empty: keep at least one step")
        if keep[0] < 0 or keep[-1] >= self.num_timesteps:
            raise ValueError(
                f"use_timesteps must lie in [0, {self.num_timesteps - 1}] (got {keep[0]}..{keep[-1]})"
            )
        return GaussianProcess.from_alphas_cumprod(
            self.alphas_cumprod[keep],
            timestep_map=self.timestep_map[keep],
            original_num_steps=self.original_num_steps,
            rescale_timesteps=self.rescale_timesteps,
            path=self.path,
            times=None if self.times is None else self.times[keep],
        )

    def at_times(self, times: Iterable[float]) -> GaussianProcess:
        """The chain through this path's exact ``times`` (path time, e.g. σ on ``edm``): a published grid.

        Its steps need not lie on the training grid; the network is fed each time's model time.
        """
        if self.path is None:
            raise ValueError(
                "at_times() needs a continuous path; a discrete chain respaces by step (respace())"
            )
        ts = np.array(sorted({float(v) for v in times}), dtype=np.float64)
        if (
            ts.size == 0
            or not np.isfinite(ts).all()
            or ts[0] <= 0.0
            or ts[-1] > self.path.t_max * (1 + 1e-12)
        ):
            raise ValueError(
                f"explicit times must be finite and lie in (0, {self.path.t_max:g}], the path's time range "
                f"(got {times!r}); list the levels from the start of sampling down, without t = 0"
            )
        a, s = self.path.alpha_sigma(ts)
        ac = a * a / (a * a + s * s)
        # The training index of each time, for the logs and a resampler's bookkeeping.
        index = np.clip(np.round(self.index_of_time(ts)), 0, self.original_num_steps - 1).astype(np.int64)
        return GaussianProcess.from_alphas_cumprod(
            ac,
            timestep_map=index,
            original_num_steps=self.original_num_steps,
            path=self.path,
            times=ts,
        )

    # -- the continuous path: conversions between index, time and noise level ------------

    def time_of_index(self, u: Step | np.ndarray) -> float | np.ndarray:
        """Path time at (fractional) step ``u`` of this chain: piecewise linear between steps, 0 at u = −1."""
        if self.times is None:
            raise ValueError("a discrete chain has no path time; its steps are the training timesteps")
        knots = np.append(0.0, self.times)
        values = np.interp(np.asarray(u, dtype=np.float64) + 1.0, np.arange(knots.size), knots)
        return float(values) if np.ndim(values) == 0 else np.asarray(values)

    def index_of_time(self, t: np.ndarray | float) -> np.ndarray:
        """The (fractional) step of this chain at path time ``t``, the inverse of :meth:`time_of_index`."""
        if self.times is None:
            raise ValueError("a discrete chain has no path time; its steps are the training timesteps")
        knots = np.append(0.0, self.times)
        return np.asarray(np.interp(np.asarray(t, dtype=np.float64), knots, np.arange(knots.size)) - 1.0)

    def index_of_sigma(self, sigmas: np.ndarray) -> np.ndarray:
        """The (fractional) step at noise levels σ = sqrt((1 − ᾱ)/ᾱ): exact on a path, else as diffusers."""
        sig = np.asarray(sigmas, dtype=np.float64)
        if self.path is None:
            from ddkit.sampling.spacing import sigma_to_t

            return sigma_to_t(sig, self.alphas_cumprod)
        with np.errstate(divide="ignore"):
            times = self.path.time_of_lambda(-np.log(sig))
        return self.index_of_time(times)

    def sigma_of_index(self, u: np.ndarray) -> np.ndarray:
        """σ = sqrt((1 − ᾱ)/ᾱ) at (fractional) steps ``u``: exact on a path (inf where α = 0)."""
        if self.path is None:
            from ddkit.sampling.spacing import t_to_sigma

            return t_to_sigma(np.asarray(u, dtype=np.float64), self.alphas_cumprod)
        a, s = self.path.alpha_sigma(np.asarray(self.time_of_index(u)))
        with np.errstate(divide="ignore"):
            return np.asarray(s / a, dtype=np.float64)

    def _path_alpha_bar(self, t: Step, like: Tensor | None) -> Coef:
        assert self.path is not None
        if isinstance(t, Tensor):
            a, s = self.path.alpha_sigma(np.asarray(self.time_of_index(t.detach().cpu().double().numpy())))
            ab = torch.from_numpy(np.asarray(a * a / (a * a + s * s), dtype=np.float64)).to(t.device)
            ref = like if like is not None else ab
            return ab.to(ref.dtype).reshape(-1, *([1] * (ref.ndim - 1)))
        return self._point(float(t))[4]

    def scale(self, t: Step, like: Tensor) -> Coef:
        """sqrt(α² + σ²) at step ``t``: the path's x_t is this times the chain's x (1 off a path)."""
        if self.path is None:
            return 1.0
        if type(t) is int:
            floats = self._scale_floats
            if floats is None:
                a, s = self.path.alpha_sigma(np.asarray(self.times))
                floats = self._scale_floats = np.sqrt(a * a + s * s).tolist()
            return floats[t]
        if not isinstance(t, Tensor):
            return self._point(float(t))[5]
        a, s = self.path.alpha_sigma(
            np.atleast_1d(np.asarray(self.time_of_index(t.detach().cpu().double().numpy())))
        )
        values = np.sqrt(a * a + s * s)
        if t.ndim > 0:
            out = torch.from_numpy(values).to(device=like.device, dtype=like.dtype)
            return out.reshape(-1, *([1] * (like.ndim - 1)))
        return float(values[0])

    def _point(self, t: float) -> tuple[float, float, float, float, float, float]:
        """(α, σ, dα/dt, dσ/dt, ᾱ, sqrt(α² + σ²)) at the chain's (fractional) step ``t``, cached."""
        point = self._points.get(t)
        if point is None:
            assert self.path is not None
            times = np.array([self.time_of_index(t)], dtype=np.float64)
            a, s = self.path.alpha_sigma(times)
            da, ds = self.path.derivatives(times)
            ab = a[0] * a[0] / (a[0] * a[0] + s[0] * s[0])
            if len(self._points) > _CACHE_LIMIT:
                self._points.clear()
            k = math.sqrt(a[0] * a[0] + s[0] * s[0])
            point = self._points[t] = (float(a[0]), float(s[0]), float(da[0]), float(ds[0]), float(ab), k)
        return point

    def path_coefs(self, t: Step, like: Tensor) -> tuple[Coef, Coef, Coef, Coef]:
        """(α, σ, dα/dt, dσ/dt) at step ``t`` of a path, as floats or tensors shaped [B, 1, ...]."""
        if self.path is None:
            raise ValueError("a discrete chain has no time derivative; use a continuous path")
        if not isinstance(t, Tensor):
            return self._point(float(t))[:4]
        times = np.atleast_1d(np.asarray(self.time_of_index(t.detach().cpu().double().numpy())))
        a, s = self.path.alpha_sigma(times)
        da, ds = self.path.derivatives(times)
        if t.ndim > 0:
            shape = (-1, *([1] * (like.ndim - 1)))
            return tuple(  # type: ignore[return-value]
                torch.from_numpy(np.asarray(v, dtype=np.float64)).to(like.device, like.dtype).reshape(shape)
                for v in (a, s, da, ds)
            )
        return float(a[0]), float(s[0]), float(da[0]), float(ds[0])

    # -- forward process and posterior --------------------------------------------------

    def q_mean_variance(self, x0: Tensor, t: Step) -> tuple[Tensor, Coef, Coef]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self.coef("sqrt_alphas_cumprod", t, x0) * x0
        var = 1.0 - self.coef("alphas_cumprod", t, x0)
        return mean, var, self.coef("log_one_minus_alphas_cumprod", t, x0)

    def q_sample(self, x0: Tensor, t: Step, noise: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given standard normal ``noise``."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        if _fractional(t):
            ab = self.alpha_bar(t, x0)
            if isinstance(ab, Tensor):
                return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise
            return combine(float(np.sqrt(ab)), x0, float(np.sqrt(1.0 - ab)), noise)
        return combine(
            self.coef("sqrt_alphas_cumprod", t, x0),
            x0,
            self.coef("sqrt_one_minus_alphas_cumprod", t, x0),
            noise,
        )

    def q_posterior_mean(self, x0: Tensor, x_t: Tensor, t: Step) -> Tensor:
        """Mean of the posterior q(x_{t-1} | x_t, x_0)."""
        return combine(
            self.coef("posterior_mean_coef1", t, x_t), x0, self.coef("posterior_mean_coef2", t, x_t), x_t
        )

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Step) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), each shaped like x_t."""
        mean = self.q_posterior_mean(x0, x_t, t)
        var = self.coef("posterior_variance", t, x_t) * torch.ones_like(x_t)
        log_var = self.coef("posterior_log_variance_clipped", t, x_t) * torch.ones_like(x_t)
        return mean, var, log_var

    # -- conversions between what a network can predict ---------------------------------

    def _eps_coefs(self, t: Step, like: Tensor, alpha_bar: Coef | None) -> tuple[Coef, Coef]:
        if alpha_bar is None and type(t) is int:  # a discrete sampler's step: two list lookups
            a_name, b_name = "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"
            a = self._floats.get(a_name) or self._float_table(a_name)
            b = self._floats.get(b_name) or self._float_table(b_name)
            return a[t], b[t]
        if alpha_bar is None and (isinstance(t, float) and not t.is_integer()):
            alpha_bar = self.alpha_bar(t)
        if alpha_bar is None and isinstance(t, Tensor) and t.is_floating_point():
            alpha_bar = self.alpha_bar(t, like)
        if alpha_bar is None:
            return self.coef("sqrt_recip_alphas_cumprod", t, like), self.coef(
                "sqrt_recipm1_alphas_cumprod", t, like
            )
        if isinstance(alpha_bar, Tensor):
            ab = alpha_bar.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
            return ab.rsqrt(), (1.0 / ab - 1.0).sqrt()
        inv = 1.0 / alpha_bar  # math.sqrt: a scalar, no NumPy call per step
        return math.sqrt(inv), math.sqrt(max(inv - 1.0, 0.0))

    def x0_from_eps(self, x_t: Tensor, t: Step, eps: Tensor, alpha_bar: Coef | None = None) -> Tensor:
        """x_0 = (x_t − sqrt(1 − ᾱ)·eps) / sqrt(ᾱ)."""
        return self.linear_x0_from_eps(x_t, t, eps, alpha_bar).value()

    def linear_x0_from_eps(self, x_t: Tensor, t: Step, eps: Tensor, alpha_bar: Coef | None = None) -> Linear:
        """:meth:`x0_from_eps`, not yet computed."""
        a, b = self._eps_coefs(t, x_t, alpha_bar)
        return Linear(a, x_t, -b, eps)

    def eps_from_x0(self, x_t: Tensor, t: Step, x0: Tensor, alpha_bar: Coef | None = None) -> Tensor:
        """eps = (x_t − sqrt(ᾱ)·x_0) / sqrt(1 − ᾱ).

        Written with sqrt(ᾱ) rather than 1/sqrt(ᾱ), so it stays finite where ᾱ = 0 (a
        zero-terminal-SNR schedule's last step, where eps = x_t).
        """
        return self.linear_eps_from_x0(x_t, t, x0, alpha_bar).value()

    def linear_eps_from_x0(self, x_t: Tensor, t: Step, x0: Tensor, alpha_bar: Coef | None = None) -> Linear:
        """:meth:`eps_from_x0`, not yet computed."""
        if alpha_bar is None and isinstance(t, float) and not t.is_integer():
            alpha_bar = self.alpha_bar(t)
        if alpha_bar is None and isinstance(t, Tensor) and t.is_floating_point():
            alpha_bar = self.alpha_bar(t, x_t)
        if alpha_bar is None:
            a, c, s = (self.coef(name, t, x_t) for name in ("eps_x0_a", "eps_x0_c", "eps_x0_s"))
            return Linear(a, x_t, -c, x0, s)
        if isinstance(alpha_bar, Tensor):
            ab = alpha_bar.to(torch.float64).reshape(-1, *([1] * (x_t.ndim - 1)))
            zero = ab <= 0
            safe = torch.where(zero, 0.5, ab)
            a_t = torch.where(zero, 1.0, safe.rsqrt()).to(x_t.dtype)
            s_t = torch.where(zero, 1.0, (1.0 / safe - 1.0).rsqrt()).to(x_t.dtype)
            return Linear(a_t, x_t, torch.where(zero, 0.0, -1.0).to(x_t.dtype), x0, s_t)
        a_np, c_np, s_np = _eps_from_x0_coefs(np.array([float(alpha_bar)]))
        return Linear(float(a_np[0]), x_t, -float(c_np[0]), x0, float(s_np[0]))

    def x0_from_xprev(self, x_t: Tensor, t: Step, xprev: Tensor) -> Tensor:
        """Invert the posterior mean: x_0 = (mean − coef2·x_t) / coef1."""
        return combine(
            self.coef("recip_posterior_mean_coef1", t, x_t),
            xprev,
            -self.coef("posterior_mean_coef2_over_coef1", t, x_t),
            x_t,
        )

    def _v_coefs(self, t: Step, like: Tensor, alpha_bar: Coef | None) -> tuple[Coef, Coef]:
        if (
            alpha_bar is None
            and not (isinstance(t, Tensor) and t.is_floating_point())
            and not (isinstance(t, float) and not t.is_integer())
        ):
            return self.coef("sqrt_alphas_cumprod", t, like), self.coef(
                "sqrt_one_minus_alphas_cumprod", t, like
            )
        ab = self.alpha_bar(t, like) if alpha_bar is None else alpha_bar
        if isinstance(ab, Tensor):
            ab = ab.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
            return ab.sqrt(), (1.0 - ab).sqrt()
        return float(np.sqrt(ab)), float(np.sqrt(1.0 - ab))

    def x0_from_v(self, x_t: Tensor, t: Step, v: Tensor, alpha_bar: Coef | None = None) -> Tensor:
        """x_0 = sqrt(ᾱ)·x_t − sqrt(1 − ᾱ)·v, for v = sqrt(ᾱ)·eps − sqrt(1 − ᾱ)·x_0."""
        return self.linear_x0_from_v(x_t, t, v, alpha_bar).value()

    def linear_x0_from_v(self, x_t: Tensor, t: Step, v: Tensor, alpha_bar: Coef | None = None) -> Linear:
        """:meth:`x0_from_v`, not yet computed."""
        a, s = self._v_coefs(t, x_t, alpha_bar)
        return Linear(a, x_t, -s, v)

    def eps_from_v(self, x_t: Tensor, t: Step, v: Tensor, alpha_bar: Coef | None = None) -> Tensor:
        """eps = sqrt(1 − ᾱ)·x_t + sqrt(ᾱ)·v."""
        return self.linear_eps_from_v(x_t, t, v, alpha_bar).value()

    def linear_eps_from_v(self, x_t: Tensor, t: Step, v: Tensor, alpha_bar: Coef | None = None) -> Linear:
        """:meth:`eps_from_v`, not yet computed."""
        a, s = self._v_coefs(t, x_t, alpha_bar)
        return Linear(s, x_t, a, v)

    def v_from_x0_eps(self, x0: Tensor, eps: Tensor, t: Step, alpha_bar: Coef | None = None) -> Tensor:
        """v = sqrt(ᾱ)·eps − sqrt(1 − ᾱ)·x_0 (Salimans & Ho 2022)."""
        a, s = self._v_coefs(t, x0, alpha_bar)
        return combine(a, eps, -s, x0)

    def __repr__(self) -> str:
        spaced = f", respaced from {self.original_num_steps}" if self.is_respaced else ""
        return f"GaussianProcess(num_timesteps={self.num_timesteps}{spaced})"
