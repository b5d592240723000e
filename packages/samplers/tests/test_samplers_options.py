"""Generators, image-to-image, inpainting, log-probabilities, DDIM inversion and parameter validation."""

from __future__ import annotations

import math

import pytest
import torch
from sampler_toys import Elementwise, GaussianEps, T, make_denoiser

import ddkit
from ddkit import CompositionError
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess
from ddkit_samplers import DDIM, DDPM, PLMS, DPMSolverPP, Euler, EulerAncestral, Heun

CLASSES: dict[str, type] = {
    "ddpm": DDPM,
    "ddim": DDIM,
    "plms": PLMS,
    "dpm-solver++": DPMSolverPP,
    "euler": Euler,
    "heun": Heun,
    "euler-ancestral": EulerAncestral,
}
NAMES = ("ddpm", "ddim", "plms", "dpm-solver++", "euler", "heun", "euler-ancestral")
STOCHASTIC = {
    "ddpm": {},
    "ddim": {"eta": 1.0},
    "euler-ancestral": {},
    "euler": {"s_churn": 2.0},
    "heun": {"s_churn": 2.0},
}


def gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- generators ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STOCHASTIC)
def test_per_sample_generators_make_each_sample_independent_of_its_batch(name: str) -> None:
    d = make_denoiser()
    sampler = ddkit.create("sampler", name, steps=6, **STOCHASTIC[name])
    x_T = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    batch = sampler.sample(d, x_T, generator=gens([10, 11, 12, 13, 14]))
    alone = sampler.sample(d, x_T[2:3], generator=gens([12]))
    pair = sampler.sample(d, x_T[[4, 2]], generator=gens([14, 12]))
    assert torch.equal(batch[2:3], alone)
    assert torch.equal(batch[[4, 2]], pair)
    other = sampler.sample(d, x_T[2:3], generator=gens([99]))
    assert not torch.equal(other, alone)  # the noise really comes from the generator


@pytest.mark.parametrize("name", STOCHASTIC)
def test_one_generator_reproduces_and_global_rng_is_used_without_one(name: str) -> None:
    d = make_denoiser()
    sampler = ddkit.create("sampler", name, steps=5, **STOCHASTIC[name])
    x_T = torch.randn(3, 2)
    a = sampler.sample(d, x_T, generator=torch.Generator().manual_seed(1))
    b = sampler.sample(d, x_T, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    torch.manual_seed(5)
    c = sampler.sample(d, x_T)
    torch.manual_seed(5)
    assert torch.equal(c, sampler.sample(d, x_T))


def test_generator_list_must_match_the_batch() -> None:
    sampler = ddkit.create("sampler", "ddpm", steps=3)
    with pytest.raises(ValueError, match="one per sample: 3 \\(got 2\\)"):
        sampler.iterate(make_denoiser(), torch.randn(3, 2), generator=gens([1, 2]))
    with pytest.raises(TypeError, match=r"torch\.Generator"):
        sampler.iterate(make_denoiser(), torch.randn(3, 2), generator=42)  # type: ignore[arg-type]


# -- image-to-image -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_img2img_runs_the_last_fraction_from_the_noised_init(name: str) -> None:
    d = make_denoiser()
    model = d.model
    assert isinstance(model, Elementwise)
    sampler = ddkit.create("sampler", name, steps=10)
    full = list(sampler.iterate(d, torch.randn(2, 3)))
    model.calls.clear()
    init = torch.full((2, 3), 0.7)
    x_T = torch.randn(2, 3, generator=torch.Generator().manual_seed(3))
    states = list(sampler.iterate(d, x_T, init=init, strength=0.4))
    assert len(states) == 4
    assert [s.t for s in states] == [s.t for s in full[-4:]]
    # The first model input is init noised to the level of the first step it runs, with x_T as the noise.
    ab = sampler._plan(d).alpha_bars[6]
    expected = math.sqrt(ab) * init + math.sqrt(1 - ab) * x_T
    x_first = model.calls[0][0]
    if name in ("euler", "heun", "euler-ancestral", "dpm-solver++"):
        assert torch.allclose(x_first, expected, atol=1e-6)
    else:
        assert torch.allclose(x_first, expected, atol=1e-6)
    assert sampler.last_nfe == {"plms": 5, "heun": 7}.get(name, 4)


def test_img2img_small_strength_stays_near_init_and_validates() -> None:
    d = make_denoiser(model=lambda x, t: torch.zeros_like(x))  # predicts ε = 0: x_0 = x/sqrt(ᾱ)
    init = torch.full((2, 3), 0.5)
    out = ddkit.create("sampler", "ddim", steps=20).sample(d, torch.randn(2, 3), init=init, strength=0.05)
    assert (out - init).abs().max() < 0.2
    sampler = ddkit.create("sampler", "ddim", steps=5)
    with pytest.raises(ValueError, match="'strength' must lie in \\(0, 1\\] \\(got 0\\)"):
        sampler.iterate(d, torch.randn(2, 3), init=init, strength=0)
    with pytest.raises(ValueError, match=r"'strength' must lie in \[0, 1\] \(got 1\.5\)"):
        sampler.iterate(d, torch.randn(2, 3), init=init, strength=1.5)
    with pytest.raises(ValueError, match="'init' needs 'strength'"):
        sampler.iterate(d, torch.randn(2, 3), init=init)
    with pytest.raises(ValueError, match="'strength' needs 'init'"):
        sampler.iterate(d, torch.randn(2, 3), strength=0.5)
    with pytest.raises(ValueError, match="'init' must be a tensor shaped like x_T"):
        sampler.iterate(d, torch.randn(2, 3), init=torch.zeros(2, 4), strength=0.5)


# -- inpainting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_inpainting_keeps_the_known_region_exactly(name: str) -> None:
    d = make_denoiser()
    sampler = ddkit.create("sampler", name, steps=8)
    x_T = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    known = torch.linspace(-1, 1, 2 * 3 * 6 * 6).reshape(2, 3, 6, 6)
    mask = torch.zeros(2, 1, 6, 6)
    mask[..., :3] = 1.0  # left half known (broadcast over channels)
    states = list(sampler.iterate(d, x_T, mask=mask, known=known, generator=torch.Generator().manual_seed(1)))
    out = states[-1].x
    keep = mask.expand_as(out).bool()
    assert torch.equal(out[keep], known[keep])
    assert not torch.allclose(out[~keep], known[~keep], atol=1e-2)  # the rest is generated
    # Intermediate states carry known noised to their level, not known itself.
    assert not torch.equal(states[0].x[keep], known[keep])


def test_inpainting_validation() -> None:
    d = make_denoiser()
    sampler = ddkit.create("sampler", "ddim", steps=3)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="both 'mask'"):
        sampler.iterate(d, x, mask=torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        sampler.iterate(d, x, mask=torch.ones(2, 1, 5, 4), known=torch.zeros_like(x))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        sampler.iterate(d, x, mask=2 * torch.ones(2, 1, 4, 4), known=torch.zeros_like(x))


# -- log-probabilities ----------------------------------------------------------------------------


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    std_t = torch.as_tensor(std, dtype=torch.float64).expand_as(x)
    lp = torch.distributions.Normal(mean.double(), std_t).log_prob(x.double())
    return lp.reshape(x.shape[0], -1).sum(dim=1)


@pytest.mark.parametrize("variance", ["fixed-small", "fixed-large", "learned-range"])
def test_ddpm_log_prob_is_the_gaussian_density_of_each_transition(variance: str) -> None:
    d = make_denoiser("epsilon", variance)
    sampler = ddkit.create("sampler", "ddpm", steps=10, return_log_prob=True)
    x_T = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    states = list(sampler.iterate(d, x_T, generator=torch.Generator().manual_seed(1)))
    chain = sampler._plan(d).denoiser
    x = x_T
    for k, state in enumerate(states):
        i = len(states) - 1 - k
        pred = chain(x, i, posterior=True)
        assert pred.mean is not None
        assert pred.log_variance is not None
        if i == 0:
            assert state.log_prob is None  # the last step adds no noise
        else:
            expected = normal_log_prob(state.x, pred.mean, torch.exp(0.5 * pred.log_variance.double()))
            assert state.log_prob is not None
            assert state.log_prob.shape == (3,)
            assert torch.allclose(state.log_prob.double(), expected, rtol=1e-4, atol=1e-3)
        x = state.x


def test_ddim_log_prob_matches_its_gaussian_and_is_off_by_default() -> None:
    d = make_denoiser("v")
    eta = 0.7
    sampler = ddkit.create("sampler", "ddim", steps=6, eta=eta)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert all(s.log_prob is None for s in sampler.iterate(d, x_T))
    states = list(sampler.iterate(d, x_T, generator=torch.Generator().manual_seed(2), return_log_prob=True))
    chain = sampler._plan(d).denoiser
    p = chain.process
    x = x_T
    for k, state in enumerate(states):
        i = len(states) - 1 - k
        ab, ab_prev = p.alphas_cumprod[i], p.alphas_cumprod_prev[i]
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        pred = chain(x, i)
        mean = math.sqrt(ab_prev) * pred.x0 + math.sqrt(1 - ab_prev - sigma**2) * pred.eps
        if sigma == 0:
            assert state.log_prob is None
        else:
            assert state.log_prob is not None
            assert torch.allclose(
                state.log_prob.double(), normal_log_prob(state.x, mean, sigma), rtol=1e-4, atol=1e-3
            )
        x = state.x
    deterministic = ddkit.create("sampler", "ddim", steps=6, return_log_prob=True)
    assert all(s.log_prob is None for s in deterministic.iterate(d, x_T))


def test_euler_ancestral_log_prob_matches_its_gaussian() -> None:
    d = make_denoiser()
    sampler = ddkit.create("sampler", "euler-ancestral", steps=6, return_log_prob=True)
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    states = list(sampler.iterate(d, x_T, generator=torch.Generator().manual_seed(3)))
    plan = sampler._plan(d)
    sig = plan.extra
    x = x_T
    for k, state in enumerate(states):
        s, s_next = sig[k], sig[k + 1]
        a, a_next = 1 / math.sqrt(1 + s * s), 1 / math.sqrt(1 + s_next * s_next)
        s_up = min(s_next, math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        s_down = math.sqrt(s_next**2 - s_up**2)
        t = plan.timesteps[k]
        denoised = plan.denoiser(x, int(t) if t.is_integer() else t, alpha_bar=a * a).x0
        mean = a_next * ((s_down / s) * x / a + (1 - s_down / s) * denoised)
        if s_up == 0:
            assert state.log_prob is None
        else:
            assert state.log_prob is not None
            expected = normal_log_prob(state.x, mean, a_next * s_up)
            # At the small σ of the late steps float32 rounding of the mean (~5e-5) is ~1e-3 of
            # the noise std; a wrong density would be off by O(log σ), far more than 1e-2.
            assert torch.allclose(state.log_prob.double(), expected, rtol=1e-4, atol=1e-2)
        x = state.x


# -- DDIM inversion -------------------------------------------------------------------------------


def test_ddim_invert_then_sample_is_about_the_identity_for_a_smooth_model() -> None:
    # The exact ε-model of Gaussian data: inversion and sampling integrate the same ODE, so the
    # round trip is the identity up to DDIM's first-order error, which falls like 1/steps.
    process = GaussianProcess(torch.linspace(1e-4, 0.02, 1000).double().numpy())
    d = Denoiser(GaussianEps(process), GaussianParameterization("epsilon", "fixed-small", False), process)
    x0 = 0.5 * torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (250, 1000):
        sampler = ddkit.create("sampler", "ddim", steps=steps)
        x_T = sampler.invert(d, x0)
        assert x_T.std() > 1.7 * x0.std()  # it went up to noise: data of std 0.5 maps to unit variance
        back = sampler.sample(d, x_T)
        errors[steps] = float((back - x0).abs().mean() / x0.abs().mean())
    assert errors[1000] < 0.01
    assert 3.0 < errors[250] / errors[1000] < 5.0
    states = list(ddkit.create("sampler", "ddim", steps=100).invert_iterate(d, x0))
    assert len(states) == 100
    assert states[-1].nfe == 100
    assert [s.t for s in states] == sorted(s.t for s in states)  # walks up the chain


def test_ddim_inversion_needs_eta_zero() -> None:
    with pytest.raises(CompositionError, match="eta=0"):
        ddkit.create("sampler", "ddim", eta=0.5).invert(make_denoiser(), torch.randn(2, 2))


# -- parameter validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "error", "message"),
    [
        ("ddim", {"steps": 0}, ValueError, "'steps' must be a positive int \\(got 0\\)"),
        ("ddpm", {"steps": "10"}, TypeError, "'steps' must be a positive int \\(got '10'\\)"),
        ("ddpm", {"steps": True}, TypeError, "'steps' must be a positive int"),
        ("dpm-solver++", {"order": 4}, ValueError, "'order' must be 2 or 3 \\(got 4\\)"),
        ("dpm-solver++", {"final_sigma": "one"}, ValueError, "'final_sigma' must be 'zero' or 'min'"),
        ("ddim", {"eta": -0.1}, ValueError, "'eta' must lie in \\[0, inf\\] \\(got -0.1\\)"),
        ("ddim", {"spacing": "linspce"}, ValueError, "did you mean 'linspace'"),
        ("ddim", {"spacing": "ddim50", "steps": 50}, ValueError, "leave 'steps' unset"),
        ("ddim", {"spacing": [10, 10, 0]}, ValueError, "must not repeat"),
        ("ddim", {"spacing": ["a", 0]}, TypeError, "non-empty list of levels"),
        ("ddim", {"spacing": 3}, TypeError, "'spacing' must be a str"),
        ("ddim", {"setps": 10}, TypeError, "unexpected keyword argument 'setps'"),
        ("euler", {"s_tmin": 2.0, "s_tmax": 1.0}, ValueError, "'s_tmin' \\(2.0\\) must not exceed 's_tmax'"),
        ("euler", {"s_churn": -1}, ValueError, "'s_churn' must lie in"),
        ("ddpm", {"dynamic_threshold": 1.5}, ValueError, "'dynamic_threshold' must be a percentile"),
        ("ddpm", {"clip_denoised": "yes"}, TypeError, "'clip_denoised' must be True, False or None"),
        ("ddpm", {"denoised_fn": 3}, TypeError, "'denoised_fn' must be callable"),
        ("ddpm", {"return_log_prob": 1}, TypeError, "'return_log_prob' must be a bool"),
        ("dpm-solver++", {"lower_order_final": "no"}, TypeError, "'lower_order_final' must be a bool"),
    ],
)
def test_wrong_parameters_fail_at_construction(
    name: str, params: dict[str, object], error: type, message: str
) -> None:
    # The class itself validates (the registry checks types from the signature first, with its own words).
    with pytest.raises(error, match=message):
        CLASSES[name](**params)
    with pytest.raises(error):
        ddkit.create("sampler", name, **params)


def test_registry_names_unknown_parameters_with_a_suggestion() -> None:
    with pytest.raises(TypeError, match="unknown parameter 'setps'; did you mean 'steps'"):
        ddkit.create("sampler", "ddim", setps=10)
    with pytest.raises(ValueError, match="'order' must be one of 2, 3"):
        ddkit.create("sampler", "dpm-solver++", order=4)


def test_impossible_schedules_fail_before_sampling() -> None:
    d = make_denoiser()
    with pytest.raises(ValueError, match=f"at most {T}"):
        ddkit.create("sampler", "ddim", steps=T + 1, spacing="linspace").check(d)
    with pytest.raises(ValueError, match=f"< T = {T}"):
        ddkit.create("sampler", "ddpm", spacing=[0, T]).check(d)
    # Fractional levels are path times: a discrete chain refuses them before sampling.
    with pytest.raises(ValueError, match="fractional levels are path times"):
        ddkit.create("sampler", "ddim", spacing=[1.5, 0]).check(d)
    with pytest.raises(ValueError, match="fractional levels are path times"):
        ddkit.create("sampler", "euler", spacing=[10.5, 2]).check(d)
    with pytest.raises(ValueError, match="excludes every timestep"):
        ddkit.create("sampler", "dpm-solver++", lambda_min=50.0).check(d)
    with pytest.raises(ValueError, match="batch and a channel"):
        ddkit.create("sampler", "ddim", steps=3).iterate(d, torch.randn(4))
    with pytest.raises(TypeError, match="floating-point"):
        ddkit.create("sampler", "ddim", steps=3).iterate(d, torch.zeros(4, 2, dtype=torch.long))
