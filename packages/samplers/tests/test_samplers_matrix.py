"""Every sampler × parameterization × variance × data shape; refusals; NFE; states and callbacks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from sampler_toys import Elementwise, T, cosine_betas, linear_betas, make_denoiser

import ddkit
from ddkit import CompositionError, Sampler, SamplerState
from ddkit.sampling import DEFAULT_LAMBDA_MIN, last_timestep_above
from ddkit_samplers import DDIM, DDPM, PLMS, DPMSolverPP, Euler, EulerAncestral, Heun

NAMES = ("ddpm", "ddim", "plms", "dpm-solver++", "euler", "heun", "euler-ancestral")
CONTINUOUS = ("dpm-solver++", "euler", "heun", "euler-ancestral")
SHAPES = {"image": (3, 3, 4, 4), "vector": (3, 2), "sequence": (3, 4, 7)}
STEPS = 6


def nfe_for(name: str, steps: int) -> int:
    return {"plms": steps + 1, "heun": 2 * steps - 1}.get(name, steps)


def test_registry_builds_every_sampler_and_each_meets_the_protocol() -> None:
    classes = {
        "ddpm": DDPM,
        "ddim": DDIM,
        "plms": PLMS,
        "dpm-solver++": DPMSolverPP,
        "euler": Euler,
        "heun": Heun,
        "euler-ancestral": EulerAncestral,
    }
    assert set(NAMES) <= set(ddkit.names("sampler"))
    for name, cls in classes.items():
        sampler = ddkit.create("sampler", name)
        assert type(sampler) is cls
        assert isinstance(sampler, Sampler)
    assert ddkit.create("sampler", "ddpm").guidance_forms == ("model", "mean", "score")
    for name in ("ddim", "plms", *CONTINUOUS):
        assert ddkit.create("sampler", name).guidance_forms == ("model", "score")
    assert ddkit.create("sampler", "ddpm").stochastic
    assert not ddkit.create("sampler", "ddim").stochastic
    assert ddkit.create("sampler", "ddim", eta=0.5).stochastic
    assert ddkit.create("sampler", "euler-ancestral").stochastic
    assert not ddkit.create("sampler", "euler").stochastic
    assert ddkit.create("sampler", "euler", s_churn=1.0).stochastic


PARAMS = [
    (p, v, "image")
    for p in ("epsilon", "x0", "v")
    for v in ("fixed-small", "fixed-large", "learned", "learned-range")
]
PARAMS += [
    (p, v, s) for p, v in (("epsilon", "fixed-small"), ("v", "learned-range")) for s in ("vector", "sequence")
]


@pytest.mark.parametrize(("prediction", "variance", "shape_name"), PARAMS)
@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_runs_every_parameterization_on_every_shape(
    name: str, prediction: str, variance: str, shape_name: str
) -> None:
    shape = SHAPES[shape_name]
    d = make_denoiser(prediction, variance, clip=prediction == "x0")
    sampler = ddkit.create("sampler", name, steps=STEPS)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    states = list(sampler.iterate(d, x_T, generator=torch.Generator().manual_seed(1)))
    assert len(states) == STEPS
    out = states[-1].x
    assert out.shape == x_T.shape
    assert out.dtype == x_T.dtype
    assert torch.isfinite(out).all()
    assert [s.step for s in states] == list(range(STEPS))
    assert [s.nfe for s in states][-1] == nfe_for(name, STEPS) == sampler.last_nfe
    assert all(a.t > b.t for a, b in itertools.pairwise(states))  # noise levels fall
    assert d.nfe == nfe_for(name, STEPS)  # the caller's denoiser counts the evaluations too


@pytest.mark.parametrize("name", ["ddpm", "ddim", "plms"])
def test_previous_x_runs_over_the_full_chain(name: str) -> None:
    d = make_denoiser("previous-x", "fixed-small")
    # The whole chain, and the chain below lambda_min (consecutive training steps from t = 0).
    usable = last_timestep_above(d.process.alphas_cumprod, DEFAULT_LAMBDA_MIN)
    assert usable < T
    for steps, lambda_min in ((T, None), (usable, DEFAULT_LAMBDA_MIN)):
        sampler = ddkit.create("sampler", name, steps=steps, lambda_min=lambda_min)
        states = list(sampler.iterate(d, torch.randn(2, 3, 4, 4)))
        assert len(states) == steps
        assert torch.isfinite(states[-1].x).all()


@pytest.mark.parametrize("name", ["ddpm", "ddim", "plms"])
def test_previous_x_on_a_respaced_chain_is_refused(name: str) -> None:
    d = make_denoiser("previous-x", "fixed-small")
    sampler = ddkit.create("sampler", name, steps=10)
    with pytest.raises(CompositionError, match=r"previous-x.*training\* step back"):
        sampler.check(d)
    with pytest.raises(CompositionError):
        sampler.iterate(d, torch.randn(2, 2))


@pytest.mark.parametrize("name", CONTINUOUS)
def test_previous_x_with_an_ode_solver_is_refused(name: str) -> None:
    d = make_denoiser("previous-x", "fixed-small")
    sampler = ddkit.create("sampler", name, steps=T)
    with pytest.raises(CompositionError, match=r"previous-x.*ODE solver"):
        sampler.check(d)


def test_sample_is_the_last_state_and_states_are_not_overwritten() -> None:
    d = make_denoiser()
    for name in NAMES:
        sampler = ddkit.create("sampler", name, steps=STEPS)
        x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
        snapshots = []
        states = []
        for state in sampler.iterate(d, x_T, generator=torch.Generator().manual_seed(4)):
            snapshots.append(state.x.clone())
            states.append(state)
        for snap, state in zip(snapshots, states):
            assert torch.equal(snap, state.x), f"{name}: a yielded state changed afterwards"
        again = sampler.sample(d, x_T, generator=torch.Generator().manual_seed(4))
        assert torch.equal(again, states[-1].x)
        assert x_T.equal(torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))), (
            "x_T was modified"
        )


def test_callback_sees_every_state_and_progress_bar_runs(capsys: pytest.CaptureFixture[str]) -> None:
    d = make_denoiser()
    seen: list[SamplerState] = []
    sampler = ddkit.create("sampler", "ddim", steps=STEPS)
    states = list(sampler.iterate(d, torch.randn(2, 2), callback=seen.append, progress=True))
    assert seen == states
    assert len(seen) == STEPS
    assert "ddim" in capsys.readouterr().err  # tqdm writes to stderr
    list(sampler.iterate(d, torch.randn(2, 2)))
    assert capsys.readouterr().err == ""  # off by default


@pytest.mark.parametrize(("name", "steps"), [("plms", 5), ("heun", 5), ("dpm-solver++", 7), ("euler", 4)])
def test_nfe_counts(name: str, steps: int) -> None:
    d = make_denoiser()
    sampler = ddkit.create("sampler", name, steps=steps)
    model = d.model
    assert isinstance(model, Elementwise)
    sampler.sample(d, torch.randn(2, 2))
    assert sampler.last_nfe == nfe_for(name, steps) == len(model.calls)


def test_default_steps() -> None:
    d = make_denoiser()
    # Every training step from t = 0 up to the last with λ ≥ lambda_min (the whole chain with None).
    usable = last_timestep_above(d.process.alphas_cumprod, DEFAULT_LAMBDA_MIN)
    for name in ("ddpm", "ddim"):
        assert len(list(ddkit.create("sampler", name).iterate(d, torch.randn(2, 2)))) == usable
        whole = ddkit.create("sampler", name, lambda_min=None)
        assert len(list(whole.iterate(d, torch.randn(2, 2)))) == T
    big = make_denoiser(betas=cosine_betas(1000))
    assert len(list(ddkit.create("sampler", "dpm-solver++").iterate(big, torch.randn(2, 2)))) == 20
    assert len(list(ddkit.create("sampler", "euler").iterate(big, torch.randn(2, 2)))) == 50


def test_ddpm_uses_guided_diffusion_section_spacing_and_ddim_its_ddim_stride() -> None:
    from ddkit.diffusion.respace import space_timesteps

    big = make_denoiser(betas=cosine_betas(1000))
    model = big.model
    assert isinstance(model, Elementwise)
    # guided-diffusion's spacings over the whole chain: lambda_min=None.
    ddkit.create("sampler", "ddpm", steps=7, spacing="sections", lambda_min=None).sample(
        big, torch.randn(1, 2)
    )
    fed = [int(t[0]) for _, t in model.calls]
    assert fed == sorted(space_timesteps(1000, "7"), reverse=True)
    model.calls.clear()
    ddkit.create("sampler", "ddim", steps=8, lambda_min=None).sample(big, torch.randn(1, 2))
    assert [int(t[0]) for _, t in model.calls] == sorted(space_timesteps(1000, "ddim8"), reverse=True)
    model.calls.clear()
    # By default DDPM strides ⌊T'/N⌋ from t = 0 over the T' steps with λ ≥ −5.1 (diffusers' "leading").
    usable = last_timestep_above(big.process.alphas_cumprod, DEFAULT_LAMBDA_MIN)
    assert 990 < usable < 1000
    ddkit.create("sampler", "ddpm", steps=7).sample(big, torch.randn(1, 2))
    assert [int(t[0]) for _, t in model.calls] == [k * (usable // 7) for k in range(6, -1, -1)]
    model.calls.clear()
    # No integer stride gives 600 of 1000 steps: the default falls back to stride ⌊T/N⌋ from 0.
    ddkit.create("sampler", "ddim", steps=600, lambda_min=None).sample(big, torch.randn(1, 2))
    assert [int(t[0]) for _, t in model.calls] == list(range(599, -1, -1))
    model.calls.clear()
    ddkit.create("sampler", "plms", steps=49, spacing="leading").sample(big, torch.randn(1, 2))
    fed = [int(t[0]) for _, t in model.calls]
    assert fed[:4] == [960, 940, 940, 920]  # the first step also evaluates at its end
    with pytest.raises(ValueError, match="ddim600"):
        ddkit.create("sampler", "ddim", steps=600, spacing="ddim").sample(big, torch.randn(1, 2))


def test_explicit_timesteps_and_respacing_strings() -> None:
    big = make_denoiser(betas=cosine_betas(1000))
    model = big.model
    assert isinstance(model, Elementwise)
    published = [999, 874, 749, 624, 499, 374, 249, 124, 62, 0]
    ddkit.create("sampler", "ddim", spacing=published).sample(big, torch.randn(1, 2))
    assert [int(t[0]) for _, t in model.calls] == published
    model.calls.clear()
    ddkit.create("sampler", "ddpm", spacing="10,5").sample(big, torch.randn(1, 2))
    assert len(model.calls) == 15
    model.calls.clear()
    ddkit.create("sampler", "euler", spacing=published).sample(big, torch.randn(1, 2))
    assert [int(t[0]) for _, t in model.calls] == published


def test_continuous_samplers_feed_fractional_timesteps_with_karras_spacing() -> None:
    big = make_denoiser(betas=cosine_betas(1000))
    model = big.model
    assert isinstance(model, Elementwise)
    ddkit.create("sampler", "euler", steps=8, spacing="karras", lambda_min=None).sample(
        big, torch.randn(1, 2)
    )
    ts = [float(t[0]) for _, t in model.calls]
    assert any(not v.is_integer() for v in ts)
    assert ts[0] == pytest.approx(999.0)
    assert ts[-1] == pytest.approx(0.0, abs=1e-6)


def test_dynamic_threshold_clip_and_denoised_fn() -> None:
    class Huge:
        def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return 5.0 * torch.ones_like(x) + 0.1 * x

    d = make_denoiser("x0", model=Huge())
    raw = ddkit.create("sampler", "ddim", steps=5).sample(d, torch.randn(4, 8))
    assert raw.abs().max() > 4
    clipped = ddkit.create("sampler", "ddim", steps=5, clip_denoised=True).sample(d, torch.randn(4, 8))
    assert clipped.abs().max() <= 1.0 + 1e-6
    thresholded = ddkit.create("sampler", "ddim", steps=5, dynamic_threshold=0.9).sample(d, torch.randn(4, 8))
    assert thresholded.abs().max() <= 1.0 + 1e-6
    calls = []

    def halve(x0: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x0 / 2

    halved = ddkit.create("sampler", "ddim", steps=5, denoised_fn=halve).sample(d, torch.randn(4, 8))
    assert len(calls) == 5
    assert halved.abs().max() < raw.abs().max() * 0.6


def test_clip_denoised_none_follows_the_parameterization() -> None:
    d = make_denoiser("x0", clip=True, model=lambda x, t: 3.0 * torch.ones_like(x))
    states = list(ddkit.create("sampler", "ddpm", steps=4).iterate(d, torch.randn(2, 2)))
    assert all(s.x0.abs().max() <= 1.0 for s in states)
    states = list(ddkit.create("sampler", "ddpm", steps=4, clip_denoised=False).iterate(d, torch.randn(2, 2)))
    assert all(s.x0.abs().max() > 2.9 for s in states)


def test_float64_and_in_place_safety() -> None:
    d = make_denoiser()
    for name in NAMES:
        x = torch.randn(2, 3, dtype=torch.float64)
        out = ddkit.create("sampler", name, steps=4).sample(d, x, generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.float64


def test_dpm_solver_options() -> None:
    big = make_denoiser(betas=cosine_betas(1000))
    model = big.model
    assert isinstance(model, Elementwise)
    three = ddkit.create("sampler", "dpm-solver++", steps=20, order=3).sample(big, torch.randn(3, 2))
    two = ddkit.create("sampler", "dpm-solver++", steps=20, order=2).sample(big, torch.randn(3, 2))
    assert torch.isfinite(three).all()
    assert torch.isfinite(two).all()
    model.calls.clear()
    ddkit.create("sampler", "dpm-solver++", steps=5, spacing="linspace", lambda_min=-5.1).sample(
        big, torch.randn(1, 2)
    )
    first = int(model.calls[0][1][0])
    assert first < 999  # the clipped tail of the cosine schedule is skipped
    lam = [0.5 * math.log(ab / (1 - ab)) for ab in big.process.alphas_cumprod[first : first + 2]]
    assert lam[0] >= -5.1 > lam[1]
    model.calls.clear()
    plan = ddkit.create("sampler", "dpm-solver++", steps=5, final_sigma="min")._plan(big)
    assert plan.extra[-1] == pytest.approx(
        math.sqrt((1 - big.process.alphas_cumprod[0]) / big.process.alphas_cumprod[0])
    )
    assert plan.alpha_bars[-1] < 1.0


def test_ddim_eta_one_has_ddpm_fixed_small_variance() -> None:
    # With η = 1 DDIM's σ² equals the posterior variance (β̃_t), so both draw the same x given the noise.
    d = make_denoiser()
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))
    a = ddkit.create("sampler", "ddim", steps=8, eta=1.0).sample(
        d, x_T, generator=torch.Generator().manual_seed(6)
    )
    b = ddkit.create("sampler", "ddpm", steps=8, spacing="ddim").sample(
        d, x_T, generator=torch.Generator().manual_seed(6)
    )
    assert (a - b).abs().max() <= 1e-6 * (1 + b.abs().max())


def test_zero_terminal_snr_runs_v_models_and_refuses_epsilon_at_alpha_bar_zero() -> None:
    betas = linear_betas()
    betas[-1] = 1.0  # ᾱ_T = 0
    v = make_denoiser("v", betas=betas)
    for name in NAMES:
        if name == "plms":
            continue
        steps = T - 1 if name == "dpm-solver++" else T
        # From ᾱ = 0 itself (the whole chain), and from the default start λ = −5.1.
        for sampler in (
            ddkit.create("sampler", name, steps=steps, lambda_min=None),
            ddkit.create("sampler", name, steps=10),
        ):
            out = sampler.sample(v, torch.randn(2, 3), generator=torch.Generator())
            assert torch.isfinite(out).all(), name
    inversion = ddkit.create("sampler", "ddim").invert(v, torch.randn(2, 3))
    assert torch.isfinite(inversion).all()
    eps = make_denoiser("epsilon", betas=betas)
    # Refused only where the walk starts at ᾱ = 0: the whole chain; the default starts below.
    with pytest.raises(CompositionError, match=r"ᾱ = 0.*epsilon model"):
        ddkit.create("sampler", "ddpm", lambda_min=None).check(eps)
    ddkit.create("sampler", "ddpm").check(eps)
    with pytest.raises(CompositionError, match="which steps on ε"):
        ddkit.create("sampler", "plms", steps=T, lambda_min=None).check(v)
    # A stride that starts below the last step is fine for both.
    assert torch.isfinite(ddkit.create("sampler", "plms", steps=10).sample(v, torch.randn(2, 3))).all()
    assert torch.isfinite(ddkit.create("sampler", "ddim", steps=10).sample(eps, torch.randn(2, 3))).all()


@pytest.mark.parametrize("name", ["euler", "heun", "euler-ancestral", "dpm-solver++"])
def test_lambda_min_starts_below_the_pure_noise_tail(name: str) -> None:
    big = make_denoiser(betas=cosine_betas(1000))
    plan = ddkit.create("sampler", name, steps=6, spacing="karras", lambda_min=-4.4)._plan(big)
    ab = 1.0 / (1.0 + plan.extra[0] ** 2)
    assert 0.5 * math.log(ab / (1 - ab)) >= -4.4 - 1e-9
    assert plan.extra[0] < 100  # EDM's σ_max = 80 is λ = −4.38
    assert plan.timesteps[0] < 992
    full = ddkit.create("sampler", name, steps=6, spacing="karras", lambda_min=None)._plan(big)
    assert full.extra[0] > 1e4  # cosine's σ_max


@pytest.mark.parametrize("name", [*NAMES, "ipndm", "deis"])
def test_every_sampler_starts_at_lambda_min_and_warns_only_from_the_noisy_tail(name: str) -> None:
    import warnings

    from ddkit.sampling import SamplingWarning

    big = make_denoiser(betas=cosine_betas(1000))
    for lam in (-5.1, -3.0):
        plan = ddkit.create("sampler", name, steps=10, lambda_min=lam)._plan(big)
        ab = plan.alpha_bars[0]
        assert 0.5 * math.log(ab / (1 - ab)) >= lam - 1e-9, (name, lam)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingWarning)
        ddkit.create("sampler", name, steps=10).check(big)  # the default start, λ ≥ −5.1: silent
    whole = ddkit.create("sampler", name, steps=10, spacing=[999, 700, 400, 200, 100, 50, 20, 10, 5, 0])
    with pytest.warns(SamplingWarning, match=r"lambda_min=-5\.1"):
        whole.check(big)  # cosine's last step, λ = −9.9, with an ε-model
    with pytest.raises(ValueError, match=r"lambda_min.*finite"):
        ddkit.create("sampler", name, lambda_min=float("nan"))
