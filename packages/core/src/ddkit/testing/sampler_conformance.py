"""A conformance kit for samplers: subclass :class:`SamplerConformance` and pytest runs the checks.

::

    from ddkit.testing import SamplerConformance

    class TestMySampler(SamplerConformance):
        sampler_name = "my-sampler"            # built with ddkit.create("sampler", ...)
        sampler_params = {"order": 2}          # optional, passed on every build

The checks run against :class:`AnalyticGaussian`, the exact network for Gaussian data, whose
probability-flow ODE has a closed-form solution: protocol (states, steps, NFE, callbacks),
shapes and dtypes, generators (seeded, per sample), every parameterization, and whether the
samples land on the data distribution. The kit needs only ddkit-core and pytest, and takes
a few seconds per sampler.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor

from ddkit.denoiser import Denoiser
from ddkit.diffusion.parameterization import GaussianParameterization
from ddkit.diffusion.process import GaussianProcess
from ddkit.errors import CompositionError
from ddkit.protocols import GUIDANCE_FORMS, Sampler, SamplerState

__all__ = ["AnalyticGaussian", "SamplerConformance", "linear_betas"]

#: Sample shapes (without the batch) the shape checks run on.
SHAPES: dict[str, tuple[int, ...]] = {"image": (3, 4, 4), "vector": (2,)}


def linear_betas(timesteps: int = 1000) -> np.ndarray:
    """DDPM's linear betas 1e-4..0.02, scaled by 1000 / T (guided-diffusion's convention)."""
    scale = 1000 / timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)


def _per_channel(value: float | Sequence[float]) -> tuple[float, ...]:
    return (float(value),) if isinstance(value, (int, float)) else tuple(float(v) for v in value)


class AnalyticGaussian:
    """The exact network for data x_0 ~ N(mean, std²) per channel, on a chain with ``alphas_cumprod``.

    With v = ᾱ·std² + 1 − ᾱ: E[x_0 | x_t] = mean + std²·sqrt(ᾱ)/v·(x_t − sqrt(ᾱ)·mean) and
    ε = sqrt(1 − ᾱ)·(x_t − sqrt(ᾱ)·mean)/v; ``prediction`` picks what it returns (``epsilon``,
    ``x0``, ``v`` or ``previous-x``). Fractional timesteps interpolate log σ between training
    steps (the inverse of :func:`ddkit.sampling.sigma_to_t`). Coefficients are computed per
    timestep in float64 and every tensor operation is elementwise, so sample i's output does not
    depend on the batch it is in. ``calls`` counts the evaluations.
    """

    def __init__(
        self,
        alphas_cumprod: np.ndarray,
        *,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        prediction: str = "epsilon",
    ) -> None:
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.log_sigmas = 0.5 * (np.log1p(-self.alphas_cumprod) - np.log(self.alphas_cumprod))
        self.mean = _per_channel(mean)
        self.std = _per_channel(std)
        self.prediction = prediction
        self.calls = 0

    def alpha_bar(self, t: float) -> float:
        """ᾱ at training timestep ``t`` (fractional: log σ interpolated linearly)."""
        n = self.alphas_cumprod.shape[0]
        t = min(max(float(t), 0.0), n - 1.0)
        lo = min(math.floor(t), n - 2) if n > 1 else 0
        w = t - lo
        if w == 0.0:
            return float(self.alphas_cumprod[lo])
        log_sigma = (1.0 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]
        return 1.0 / (1.0 + math.exp(2.0 * log_sigma))

    def _channel(self, values: tuple[float, ...], like: Tensor) -> Tensor:
        """Per-channel ``values`` shaped to broadcast against ``like`` ([B, C, ...])."""
        if len(values) != 1 and like.shape[1] != len(values):
            raise ValueError(
                f"the data has {len(values)} channels but x has {like.shape[1]} (shape {tuple(like.shape)})"
            )
        shape = (1, len(values), *([1] * (like.ndim - 2))) if len(values) > 1 else (1,) * like.ndim
        return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(shape)

    def __call__(self, x: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
        self.calls += 1
        levels, index = torch.unique(t.detach().reshape(-1).cpu().double(), return_inverse=True)
        table = torch.tensor([self.alpha_bar(v) for v in levels.tolist()], dtype=torch.float64)

        def column(values: Tensor) -> Tensor:  # one value per sample, shaped [B, 1, ...]
            return values[index].to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

        mean, var0 = self._channel(self.mean, x), self._channel(self.std, x).square()
        sqrt_ab, sqrt_1m = column(table.sqrt()), column((1.0 - table).sqrt())
        var = column(table) * var0 + column(1.0 - table)
        centred = x - sqrt_ab * mean
        x0 = mean + var0 * sqrt_ab * centred / var
        eps = sqrt_1m * centred / var
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "x0":
            return x0
        if self.prediction == "v":
            return sqrt_ab * eps - sqrt_1m * x0
        if self.prediction == "previous-x":
            coef1, coef2 = self._posterior_coefficients(levels)
            return column(coef1) * x0 + column(coef2) * x
        raise ValueError(f"unknown prediction {self.prediction!r}; use epsilon, x0, v or previous-x")

    def _posterior_coefficients(self, levels: Tensor) -> tuple[Tensor, Tensor]:
        """The weights of x_0 and x_t in the mean of q(x_{t-1} | x_t, x_0) at integer timesteps ``levels``."""
        ac = self.alphas_cumprod
        c1, c2 = [], []
        for i in (round(v) for v in levels.tolist()):
            ab, ab_prev = float(ac[i]), float(ac[i - 1]) if i > 0 else 1.0
            beta = 1.0 - ab / ab_prev
            c1.append(beta * math.sqrt(ab_prev) / (1.0 - ab))
            c2.append((1.0 - ab_prev) * math.sqrt(1.0 - beta) / (1.0 - ab))
        return torch.tensor(c1, dtype=torch.float64), torch.tensor(c2, dtype=torch.float64)

    def ode_solution(self, x_T: Tensor, alpha_bar_T: float, alpha_bar_end: float = 1.0) -> Tensor:
        """Where the probability-flow ODE takes ``x_T`` from ᾱ = ``alpha_bar_T`` to ``alpha_bar_end``, exactly

        For Gaussian data the flow only rescales: x = sqrt(ᾱ)·mean + sqrt(ᾱ·std² + 1 − ᾱ)·z, z fixed.
        """
        mean, var0 = self._channel(self.mean, x_T), self._channel(self.std, x_T).square()

        def scale(ab: float) -> Tensor:
            return (ab * var0 + (1.0 - ab)).sqrt()

        z = (x_T - math.sqrt(alpha_bar_T) * mean) / scale(alpha_bar_T)
        return math.sqrt(alpha_bar_end) * mean + scale(alpha_bar_end) * z

    def denoiser(self, process: GaussianProcess) -> Denoiser:
        """This network behind a parameterization of its prediction (no clipping) on ``process``."""
        parameterization = GaussianParameterization(self.prediction, "fixed-small", clip_denoised=False)
        return Denoiser(self, parameterization, process)


class SamplerConformance:
    """Checks that a sampler honours :class:`ddkit.Sampler`; pytest collects them in a ``Test*`` subclass.

    Set ``sampler_name`` (a registered name) or override :meth:`make_sampler`. Optional:
    ``sampler_params`` (passed on every build), ``steps`` (the ``steps`` parameter of the fast
    checks; ``None`` passes none), ``accuracy_steps`` (of the distribution check),
    ``stochastic_params`` (parameters that make a deterministic sampler stochastic, so the
    generator checks cover its noise too), and the tolerances of the distribution check.

    .. versionadded:: 0.1.0
    """

    #: The registered sampler name :meth:`make_sampler` builds.
    sampler_name: ClassVar[str] = ""
    #: Parameters passed on every build.
    sampler_params: ClassVar[Mapping[str, Any]] = {}
    #: ``steps`` for the fast checks (``None``: do not pass ``steps``).
    steps: ClassVar[int | None] = 8
    #: ``steps`` for the distribution check (``None``: do not pass ``steps``).
    accuracy_steps: ClassVar[int | None] = 20
    #: Parameters making the sampler stochastic, when it is not by default (e.g. ``{"eta": 1.0}``).
    stochastic_params: ClassVar[Mapping[str, Any] | None] = None
    #: Training steps of the chain the checks sample on (linear betas).
    timesteps: ClassVar[int] = 1000
    #: The distribution check: largest error of each dimension's mean, and of std / true std − 1.
    mean_tolerance: ClassVar[float] = 0.05
    std_tolerance: ClassVar[float] = 0.1

    # -- what a subclass may override --------------------------------------------------------

    def make_sampler(self, **params: Any) -> Sampler:
        """A sampler built with ``sampler_params`` updated by ``params`` (override to build it directly)."""
        if not self.sampler_name:
            raise TypeError(
                f"{type(self).__name__}: set 'sampler_name' to a registered sampler name, or override "
                "make_sampler(**params) to build the sampler yourself"
            )
        import ddkit

        sampler: Sampler = ddkit.create("sampler", self.sampler_name, **{**self.sampler_params, **params})
        return sampler

    # -- helpers -----------------------------------------------------------------------------

    def _build(self, steps: int | None, **params: Any) -> Sampler:
        return self.make_sampler(**({} if steps is None else {"steps": steps}), **params)

    def _process(self) -> GaussianProcess:
        return GaussianProcess(linear_betas(self.timesteps))

    def _model(self, prediction: str = "epsilon", **data: Any) -> AnalyticGaussian:
        return AnalyticGaussian(self._process().alphas_cumprod, prediction=prediction, **data)

    @staticmethod
    def _noise(shape: tuple[int, ...], seeds: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """x_T drawn sample by sample, so that row i depends only on seeds[i] (as Pipeline.noise does)."""
        return torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=dtype) for s in seeds]
        )

    @staticmethod
    def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(1000 + s) for s in seeds]

    def _stochastic_variant(self, steps: int | None) -> Sampler | None:
        sampler = self._build(steps)
        if sampler.stochastic:
            return sampler
        if self.stochastic_params is None:
            return None
        sampler = self._build(steps, **self.stochastic_params)
        assert sampler.stochastic, (
            f"stochastic_params {dict(self.stochastic_params)} left the sampler deterministic"
        )
        return sampler

    def _run(
        self,
        sampler: Sampler,
        denoiser: Denoiser,
        x_T: Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback: Callable[[SamplerState], None] | None = None,
    ) -> list[SamplerState]:
        with torch.no_grad():
            return list(sampler.iterate(denoiser, x_T, generator=generator, callback=callback))

    # -- the checks --------------------------------------------------------------------------

    def test_meets_the_sampler_protocol(self) -> None:
        sampler = self._build(self.steps)
        assert isinstance(sampler, Sampler), (
            f"{type(sampler).__name__} lacks part of the ddkit.Sampler protocol"
        )
        assert isinstance(sampler.stochastic, bool), (
            f"'stochastic' must be a bool (got {sampler.stochastic!r})"
        )
        forms = sampler.guidance_forms
        assert isinstance(forms, tuple), f"'guidance_forms' must be a tuple (got {type(forms).__name__})"
        assert set(forms) <= set(GUIDANCE_FORMS), f"unknown guidance forms {set(forms) - set(GUIDANCE_FORMS)}"
        assert len(set(forms)) == len(forms), f"'guidance_forms' repeats a form: {forms}"

    def test_check_accepts_an_epsilon_model_without_calling_it(self) -> None:
        model = self._model()
        self._build(self.steps).check(model.denoiser(self._process()))
        assert model.calls == 0, "check() called the model; it must only inspect the composition"

    @pytest.mark.parametrize("shape", ["image", "vector"])
    def test_iterate_yields_states_with_increasing_step_and_nfe(self, shape: str) -> None:
        model = self._model()
        denoiser = model.denoiser(self._process())
        x_T = self._noise(SHAPES[shape], [0, 1, 2])
        states = self._run(self._build(self.steps), denoiser, x_T, generator=torch.Generator().manual_seed(0))
        assert states, "iterate() yielded no state"
        for state in states:
            assert isinstance(state, SamplerState), (
                f"iterate() yielded a {type(state).__name__}, not a SamplerState"
            )
            assert state.x.shape == x_T.shape, (
                f"state.x has shape {tuple(state.x.shape)}, x_T {tuple(x_T.shape)}"
            )
            assert state.x0.shape == x_T.shape, (
                f"state.x0 has shape {tuple(state.x0.shape)}, x_T {tuple(x_T.shape)}"
            )
            assert isinstance(state.t, (int, float)), (
                f"state.t must be a number (got {type(state.t).__name__})"
            )
        steps = [s.step for s in states]
        assert steps == list(range(len(states))), f"steps must count 0, 1, 2, ... (got {steps})"
        nfes = [s.nfe for s in states]
        assert nfes[0] >= 1, f"the first state reports nfe={nfes[0]}; it follows at least one model call"
        assert all(b >= a for a, b in itertools.pairwise(nfes)), f"nfe must never decrease (got {nfes})"

    def test_reports_nfe(self) -> None:
        model = self._model()
        denoiser = model.denoiser(self._process())
        states = self._run(
            self._build(self.steps), denoiser, self._noise((2,), [0, 1]), torch.Generator().manual_seed(0)
        )
        assert states[-1].nfe == model.calls, (
            f"the last state reports nfe={states[-1].nfe}, the model ran {model.calls} times"
        )
        assert denoiser.nfe == model.calls, f"denoiser.nfe is {denoiser.nfe} after {model.calls} model calls"

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
    @pytest.mark.parametrize("shape", ["image", "vector"])
    def test_sample_returns_the_shape_and_dtype_of_x_T(self, shape: str, dtype: torch.dtype) -> None:
        denoiser = self._model(mean=0.2, std=0.5).denoiser(self._process())
        x_T = self._noise(SHAPES[shape], [0, 1, 2], dtype)
        sampler = self._build(self.steps)
        with torch.no_grad():
            out = sampler.sample(denoiser, x_T, generator=torch.Generator().manual_seed(0))
        assert out.shape == x_T.shape, (
            f"sample() returned shape {tuple(out.shape)} for x_T {tuple(x_T.shape)}"
        )
        assert out.dtype == dtype, f"sample() returned {out.dtype} for x_T in {dtype}"
        assert bool(out.isfinite().all()), "the sample holds inf or nan"
        states = self._run(sampler, denoiser, x_T, torch.Generator().manual_seed(0))
        assert torch.equal(out, states[-1].x), (
            "sample() differs from the last state of iterate() with the same seed"
        )

    def test_callback_is_called_once_per_state(self) -> None:
        denoiser = self._model().denoiser(self._process())
        seen: list[SamplerState] = []
        states = self._run(self._build(self.steps), denoiser, self._noise((2,), [0, 1]), None, seen.append)
        assert len(seen) == len(states), f"callback ran {len(seen)} times for {len(states)} states"
        assert all(a is b for a, b in zip(seen, states)), "callback must receive the states iterate() yields"

    def test_randomness_follows_the_generator(self) -> None:
        denoiser = self._model().denoiser(self._process())
        x_T = self._noise((2,), [0, 1, 2, 3])

        def draw(sampler: Sampler, seed: int) -> Tensor:
            return self._run(sampler, denoiser, x_T, torch.Generator().manual_seed(seed))[-1].x

        sampler = self._build(self.steps)
        if not sampler.stochastic:
            first = self._run(sampler, denoiser, x_T)[-1].x
            assert torch.equal(first, draw(sampler, 1)), (
                "a deterministic sampler gave another result on a rerun"
            )
            assert torch.equal(first, draw(sampler, 2)), (
                "a deterministic sampler's result depends on the generator"
            )
        noisy = self._stochastic_variant(self.steps)
        if noisy is not None:
            assert torch.equal(draw(noisy, 1), draw(noisy, 1)), "the same seed gave different samples"
            assert not torch.equal(draw(noisy, 1), draw(noisy, 2)), "different seeds gave the same samples"

    @pytest.mark.parametrize("noise", ["default", "stochastic"])
    def test_per_sample_generators_make_each_sample_independent_of_the_batch(self, noise: str) -> None:
        sampler = self._build(self.steps) if noise == "default" else self._stochastic_variant(self.steps)
        if sampler is None:
            sampler = self._build(self.steps)  # deterministic: the same check, without noise draws
        denoiser = self._model().denoiser(self._process())
        batch = [5, 6, 7, 8]
        together = self._run(sampler, denoiser, self._noise((2,), batch), self._generators(batch))[-1].x
        alone = self._run(sampler, denoiser, self._noise((2,), batch[2:3]), self._generators(batch[2:3]))[
            -1
        ].x
        assert torch.equal(together[2], alone[0]), "sample 2 changed with the batch it was drawn in"

    @pytest.mark.parametrize("prediction", ["x0", "v"])
    def test_every_parameterization_gives_the_same_samples(self, prediction: str) -> None:
        process = self._process()
        x_T = self._noise((2,), [0, 1, 2], torch.float64)
        sampler = self._build(self.steps)
        results = {}
        for pred in ("epsilon", prediction):
            denoiser = self._model(pred, mean=0.2, std=0.5).denoiser(process)
            results[pred] = self._run(sampler, denoiser, x_T, torch.Generator().manual_seed(0))[-1].x
        gap = (results[prediction] - results["epsilon"]).abs().max().item()
        assert gap < 1e-3, f"the {prediction!r} model's samples differ from the epsilon model's by {gap:.3g}"

    def test_previous_x_works_or_is_refused_by_check(self) -> None:
        process = self._process()
        model = self._model("previous-x", mean=0.2, std=0.5)
        denoiser = model.denoiser(process)
        sampler = self._build(self.steps)
        try:
            sampler.check(denoiser)
        except CompositionError:
            assert model.calls == 0, "check() called the model before refusing it"
            with pytest.raises(CompositionError):
                self._run(sampler, denoiser, self._noise((2,), [0]))
            assert model.calls == 0, "iterate() called the model of a composition check() refuses"
            return
        x_T = self._noise((2,), [0, 1, 2], torch.float64)
        out = self._run(sampler, denoiser, x_T, torch.Generator().manual_seed(0))[-1].x
        reference = self._run(
            sampler, self._model(mean=0.2, std=0.5).denoiser(process), x_T, torch.Generator().manual_seed(0)
        )[-1].x
        gap = (out - reference).abs().max().item()
        assert gap < 1e-3, f"previous-x samples differ from the epsilon model's by {gap:.3g}"

    def test_samples_land_on_the_data_distribution(self) -> None:
        mean, std = (0.5, -0.3), (1.0, 0.5)
        denoiser = self._model(mean=mean, std=std).denoiser(self._process())
        # Noise standardised per dimension: every step is affine in x for Gaussian data, so a
        # deterministic sampler's error in mean and std is then free of sampling noise.
        z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x_T = (z - z.mean(0)) / z.std(0)
        states = self._run(self._build(self.accuracy_steps), denoiser, x_T, torch.Generator().manual_seed(1))
        out = states[-1].x
        got_mean, got_std = out.mean(0).tolist(), out.std(0).tolist()
        hint = f"steps={self.accuracy_steps}; a first-order or ancestral sampler may need accuracy_steps=100"
        for d in range(2):
            assert abs(got_mean[d] - mean[d]) < self.mean_tolerance, (
                f"dim {d}: the samples' mean is {got_mean[d]:.4f}, the data's {mean[d]} ({hint})"
            )
            assert abs(got_std[d] / std[d] - 1.0) < self.std_tolerance, (
                f"dim {d}: the samples' std is {got_std[d]:.4f}, the data's {std[d]} ({hint})"
            )

    def test_image_to_image_starts_part_way_and_stays_on_the_data(self) -> None:
        mean, std = (0.5, -0.3), (1.0, 0.5)
        denoiser = self._model(mean=mean, std=std).denoiser(self._process())
        sampler = self._build(self.accuracy_steps)
        g = torch.Generator().manual_seed(0)
        x_T = torch.randn(4000, 2, generator=g, dtype=torch.float64)
        init = torch.tensor(mean, dtype=torch.float64) + torch.tensor(std, dtype=torch.float64) * torch.randn(
            4000, 2, generator=g, dtype=torch.float64
        )
        full = self._run(sampler, denoiser, x_T, torch.Generator().manual_seed(1))
        with torch.no_grad():
            part = list(
                sampler.iterate(
                    denoiser, x_T, generator=torch.Generator().manual_seed(1), init=init, strength=0.5
                )
            )
        assert 0 < len(part) < len(full), (
            f"strength=0.5 ran {len(part)} of {len(full)} steps; it must run a part of them, at least one"
        )
        assert [s.step for s in part] == list(range(len(part))), "image-to-image steps must count from 0"
        out = part[-1].x
        assert out.shape == x_T.shape
        assert torch.isfinite(out).all()
        got_mean, got_std = out.mean(0).tolist(), out.std(0).tolist()
        for d in range(2):
            assert abs(got_mean[d] - mean[d]) < 2 * self.mean_tolerance, (
                f"dim {d}: image-to-image from data moved the mean to {got_mean[d]:.4f} (data: {mean[d]})"
            )
            assert abs(got_std[d] / std[d] - 1.0) < 2 * self.std_tolerance, (
                f"dim {d}: image-to-image from data moved the std to {got_std[d]:.4f} (data: {std[d]})"
            )
