"""The per-call shortcuts of the sampling loop give the same samples, counts and errors as the full loop.

``SamplerBase.sample`` skips the per-step driver when no one watches the states, named-spacing
plans and step coefficients are remembered between calls, and ``Denoiser.with_process`` copies
the checked guidances: none of it may change a sample, an NFE count or a refusal.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sampler_toys import Elementwise, make_denoiser
from torch import Tensor

import ddkit
from ddkit.denoiser import Denoiser
from ddkit.errors import NonFiniteError
from ddkit.protocols import SamplerState
from ddkit.sampling.base import _check_final

#: Every registered sampler with settings that exercise its loop (stochastic ones included).
CASES: list[tuple[str, dict[str, Any]]] = [
    ("ddpm", {"steps": 6}),
    ("ddim", {"steps": 6}),
    ("ddim", {"steps": 6, "eta": 0.7}),
    ("plms", {"steps": 6}),
    ("ipndm", {"steps": 6}),
    ("deis", {"steps": 6}),
    ("deis", {"steps": 6, "basis": "t"}),
    ("dpm-solver++", {"steps": 6}),
    ("dpm-solver++", {"steps": 6, "order": 3}),
    ("dpm-solver++", {"steps": 6, "sde": True}),
    ("euler", {"steps": 6}),
    ("heun", {"steps": 4}),
    ("euler-ancestral", {"steps": 6}),
    ("flow-sde", {"steps": 6, "lambda_min": -5.1}),
]


def _noise(seed: int = 0) -> Tensor:
    return torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_sample_equals_the_last_state_of_iterate(name: str, params: dict[str, Any]) -> None:
    sampler = ddkit.create("sampler", name, **params)
    d_iter, d_sample = make_denoiser(), make_denoiser()
    states = list(sampler.iterate(d_iter, _noise(), generator=torch.Generator().manual_seed(1)))
    nfe_iter = sampler.last_nfe
    out = sampler.sample(d_sample, _noise(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, states[-1].x)
    assert sampler.last_nfe == nfe_iter == d_iter.nfe == d_sample.nfe > 0
    # A second call reuses the remembered plan and coefficients: the same sample again.
    again = sampler.sample(make_denoiser(), _noise(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, out)


def test_sample_refuses_a_non_finite_result() -> None:
    class NaNAtTheEnd(Elementwise):
        def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
            out = super().__call__(x, t, **kwargs)
            return out * float("nan") if float(t.max()) < 1 else out

    sampler = ddkit.create("sampler", "ddim", steps=5, lambda_min=None)
    with pytest.raises(NonFiniteError, match="NaN or infinite after its last step"):
        sampler.sample(make_denoiser(model=NaNAtTheEnd(learned=False, total=40)), _noise())


def test_the_final_check_lets_a_huge_finite_sample_through() -> None:
    # The sum of these overflows float32 although every element is finite: the exact check decides.
    huge = torch.full((3, 2, 4, 4), 3e37)
    assert not torch.isfinite(huge.sum())
    _check_final("ddim", SamplerState(step=4, t=0.0, x=huge, x0=huge, nfe=5), 5)
    bad = huge.clone()
    bad[1, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="in 1 of 3 samples"):
        _check_final("ddim", SamplerState(step=4, t=0.0, x=bad, x0=bad, nfe=5), 5)
    _check_final("ddim", SamplerState(step=3, t=0.0, x=bad, x0=bad, nfe=4), 5)  # not the last step


def test_a_changed_setting_is_not_served_from_the_remembered_plan() -> None:
    for name in ("ddim", "dpm-solver++", "euler"):
        sampler = ddkit.create("sampler", name, steps=6)
        sampler.sample(make_denoiser(), _noise())
        assert sampler.last_nfe == 6
        sampler.steps = 4
        sampler.sample(make_denoiser(), _noise())
        assert sampler.last_nfe == 4, name
    ddim = ddkit.create("sampler", "ddim", steps=6)
    deterministic = ddim.sample(make_denoiser(), _noise(), generator=torch.Generator().manual_seed(2))
    ddim.eta = 1.0
    noisy = ddim.sample(make_denoiser(), _noise(), generator=torch.Generator().manual_seed(2))
    assert not torch.equal(deterministic, noisy)


def test_with_process_copies_what_a_rebuilt_denoiser_would_hold() -> None:
    class Labelled(Elementwise):
        def __call__(self, x: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
            labels: Tensor = conditioning["y"]
            return super().__call__(x, t) + labels.reshape(-1, 1, 1, 1)

    base = make_denoiser()
    labels = torch.tensor([0.0, 1.0, 2.0])
    d = Denoiser(Labelled(), base.parameterization, base.process, conditioning={"y": labels})
    chain = d.process.respace([0, 10, 20, 39])
    fn = torch.tanh
    copy = d.with_process(chain, clip_denoised=True, denoised_fn=fn)
    assert copy.process is chain
    assert copy.nfe == 0
    assert copy.clip_denoised is True
    assert copy.denoised_fn is fn
    assert (copy.spec, copy.forms, copy.guidances) == (d.spec, d.forms, d.guidances)
    # Its conditioning is its own: changing one denoiser's leaves the other's alone.
    copy.conditioning["extra"] = 1
    assert "extra" not in d.conditioning
    assert copy.conditioning["y"] is labels
    # clip_denoised=None means the parameterization's setting, as in the constructor.
    assert d.with_process(chain, clip_denoised=None).clip_denoised == d.parameterization.clip_denoised
    rebuilt = Denoiser(d.model, d.parameterization, chain, conditioning={"y": labels}, clip_denoised=True)
    rebuilt.denoised_fn = fn
    x = _noise()
    assert torch.equal(copy(x, 2).x0, rebuilt(x, 2).x0)
    assert (copy.nfe, d.nfe) == (1, 0)


#: The stochastic samplers whose loop folds the transition's mean into its noise draw.
STOCHASTIC = [
    ("ddpm", {"steps": 6}),
    ("euler-ancestral", {"steps": 6}),
    ("flow-sde", {"steps": 6, "lambda_min": -5.1}),
    ("dpm-solver++", {"steps": 6, "sde": True}),
    ("dpm-solver++", {"steps": 6, "sde": True, "order": 3}),
]


@pytest.mark.parametrize("clip", [False, True], ids=["linear-x0", "clipped-x0"])
@pytest.mark.parametrize(("name", "params"), STOCHASTIC, ids=[f"{n}-{p}" for n, p in STOCHASTIC])
def test_fused_stochastic_steps_draw_the_transitions_gaussian(
    name: str, params: dict[str, Any], clip: bool
) -> None:
    """sample()'s fused step (noise scaled in place, mean added) is mean + std·z of transition()."""
    sampler = ddkit.create("sampler", name, **params)
    fused = sampler.sample(make_denoiser(clip=clip), _noise(), generator=torch.Generator().manual_seed(3))
    # With log-densities the loop walks transition() and Run.draw: the same noise, drawn in the same order.
    states = list(
        sampler.iterate(
            make_denoiser(clip=clip),
            _noise(),
            generator=torch.Generator().manual_seed(3),
            return_log_prob=True,
        )
    )
    assert states[0].log_prob is not None  # (so these states came from transition() and Run.draw)
    torch.testing.assert_close(fused, states[-1].x, rtol=1e-5, atol=1e-5)
    other_seed = sampler.sample(
        make_denoiser(clip=clip), _noise(), generator=torch.Generator().manual_seed(4)
    )
    assert not torch.allclose(fused, other_seed)


@pytest.mark.parametrize(("name", "params"), STOCHASTIC, ids=[f"{n}-{p}" for n, p in STOCHASTIC])
def test_a_call_without_densities_takes_the_fused_loop(
    name: str, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without log-densities or a trace no step goes through transition() (its fused loop runs)."""
    sampler = ddkit.create("sampler", name, **params)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("transition() was walked where the fused loop should run")

    monkeypatch.setattr(type(sampler), "transition", refuse)
    x = sampler.sample(make_denoiser(), _noise(), generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(x).all()
    with pytest.raises(AssertionError, match="transition"):  # with densities it is walked
        list(sampler.iterate(make_denoiser(), _noise(), return_log_prob=True))


class _Smooth(torch.nn.Module):
    """A smooth stand-in for a velocity network (depends on x and t, so every step matters)."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.tanh(x) * 0.5 + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _path_denoiser(schedule: str = "rectified-flow") -> Denoiser:
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": schedule, "timesteps": 1000},
            "parameterization": {"name": "velocity", "clip_denoised": False},
            "sampler": {"name": "euler", "steps": 5},
        },
        model=_Smooth(),
    )
    return Denoiser(pipe.model.double(), pipe.parameterization, pipe.process)


@pytest.mark.parametrize("schedule", ["rectified-flow", "vp-continuous"])
def test_euler_on_a_path_carries_the_network_input_between_steps(
    schedule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _path_denoiser(schedule)
    assert d.path_input
    assert not make_denoiser().path_input  # a discrete chain: the input is x itself
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1.0
    known = torch.full_like(x, 0.3)
    sampler = ddkit.create("sampler", "euler", steps=12)
    carried = sampler.sample(d, x)
    inpainted = sampler.sample(d, x, mask=mask, known=known)
    # The same steps with the input scaled from x at every step (the loop every other case takes).
    monkeypatch.setattr(Denoiser, "path_input", property(lambda self: False))
    torch.testing.assert_close(carried, sampler.sample(d, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        inpainted, sampler.sample(d, x, mask=mask, known=known), rtol=1e-12, atol=1e-12
    )
    assert not torch.allclose(carried, inpainted)


class _ScoreShift:
    """A score-form guidance (it reads x itself), so the quiet loop must form x at every step."""

    name = "shift"
    forms = ("score",)

    def check(self, spec: Any, conditioning: Any) -> None:
        pass

    def gradient(self, x: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
        return 0.1 * x


@pytest.mark.parametrize("schedule", ["rectified-flow", "vp-continuous"])
@pytest.mark.parametrize("prediction", ["velocity", "epsilon", "v", "x0"])
@pytest.mark.parametrize("guided", [False, True])
def test_unwatched_euler_on_a_path_carries_only_the_input_and_lands_on_the_same_sample(
    schedule: str, prediction: str, guided: bool
) -> None:
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": schedule, "timesteps": 1000},
            "parameterization": {"name": prediction, "clip_denoised": False},
        },
        model=_Smooth(),
    )
    d = Denoiser(
        pipe.model.double(), pipe.parameterization, pipe.process, guidances=[_ScoreShift()] if guided else ()
    )
    assert d.reads_x_linearly is not guided
    sampler = ddkit.create("sampler", "euler", steps=9)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    states = list(sampler.iterate(d, x))
    quiet = sampler.sample(d, x)  # no one watches: the chain's x is formed only at the last step
    assert len(states) == 9
    torch.testing.assert_close(quiet, states[-1].x, rtol=1e-12, atol=1e-12)
    assert sampler.last_nfe == 9


def test_a_given_network_input_is_what_the_denoiser_would_make() -> None:
    d = _path_denoiser()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in (750, 500, 3):
        k = float(d.process.scale(t, x))
        assert k != 1.0
        given, made = d(x, t, x_in=x * k), d(x, t)
        assert torch.equal(given.model_output, made.model_output)
        torch.testing.assert_close(given.x0, made.x0, rtol=0, atol=0)
    assert d.nfe == 6


def test_x_T_checks_read_one_sum_and_still_refuse_non_finite_noise() -> None:
    from ddkit.sampling.inputs import check_x_T

    huge = torch.full((3, 2, 4, 4), 3e37)  # finite, but its sum overflows: the exact check decides
    assert check_x_T(huge) is huge
    for bad_value in (float("nan"), float("inf"), -float("inf")):
        bad = huge.clone()
        bad[2, 1, 3, 3] = bad_value
        with pytest.raises(NonFiniteError, match="in 1 of 3 samples"):
            check_x_T(bad)


def test_fractional_model_timesteps_are_cached_apart_from_integer_ones() -> None:
    chain = make_denoiser().process.respace([0, 10, 20, 39])
    half = chain.model_timesteps(1.5, 3, "cpu")
    assert chain.model_timesteps(1.5, 3, torch.device("cpu")) is half  # built once, then reused
    assert torch.equal(half, torch.full((3,), 15.0, dtype=torch.float64))  # between steps 10 and 20
    whole, as_float = chain.model_timesteps(2, 3, "cpu"), chain.model_timesteps(2.0, 3, "cpu")
    assert (whole.dtype, as_float.dtype) == (torch.long, torch.float64)
    assert torch.equal(whole.double(), as_float)
