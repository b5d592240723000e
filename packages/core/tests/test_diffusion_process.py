"""GaussianProcess: conversions, the posterior, respacing, timesteps fed to the model, the table cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from ddkit.diffusion import GaussianProcess, schedules

torch.set_num_threads(1)
settings.register_profile("ddkit-diffusion", max_examples=40, deadline=None)
settings.load_profile("ddkit-diffusion")

SCHEDULES = st.sampled_from(["linear", "cosine", "scaled-linear", "sigmoid"])
FACTORIES = {
    "linear": schedules.linear,
    "cosine": schedules.cosine,
    "scaled-linear": schedules.scaled_linear,
    "sigmoid": schedules.sigmoid,
}


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    bad = diff > atol + rtol * expected.double().abs()
    assert not bool(bad.any()), f"{int(bad.sum())} elements differ; max abs diff {diff.max():.3g}"


def process_for(name: str, timesteps: int, zts: bool = False) -> GaussianProcess:
    return FACTORIES[name](timesteps, zero_terminal_snr=zts).process()


# -- conversions round-trip (float64 data, so the tables are read in float64) -------------


@given(
    name=SCHEDULES,
    timesteps=st.integers(21, 1000),
    zts=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_eps_x0_round_trip(name: str, timesteps: int, zts: bool, seed: int, data: st.DataObject) -> None:
    process = process_for(name, timesteps, zts)
    # eps -> x_0 needs ᾱ > 0: a zero-terminal-SNR chain's last step has no signal to recover.
    last = timesteps - 2 if zts else timesteps - 1
    step = data.draw(st.integers(0, last))
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    x_t = process.q_sample(x0, step, eps)
    # Conditioning grows like 1/sqrt(ᾱ) (x_0 from eps) or 1/sqrt(1 - ᾱ) (eps from x_0).
    ab = process.alphas_cumprod[step]
    scale = 1e-13 * (1 / math.sqrt(ab) + 1 / math.sqrt(1 - ab))
    close(process.x0_from_eps(x_t, step, eps), x0, rtol=0, atol=10 * scale)
    close(process.eps_from_x0(x_t, step, x0), eps, rtol=0, atol=10 * scale)
    t = torch.full((3,), step)
    close(process.eps_from_x0(x_t, t, process.x0_from_eps(x_t, t, eps)), eps, rtol=0, atol=100 * scale)


@given(
    name=SCHEDULES,
    timesteps=st.integers(21, 1000),
    zts=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_v_round_trips(name: str, timesteps: int, zts: bool, seed: int, data: st.DataObject) -> None:
    process = process_for(name, timesteps, zts)
    step = data.draw(st.integers(0, timesteps - 1))  # v is well defined at ᾱ = 0 too
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    x_t = process.q_sample(x0, step, eps)
    v = process.v_from_x0_eps(x0, eps, step)
    close(process.x0_from_v(x_t, step, v), x0)
    close(process.eps_from_v(x_t, step, v), eps)
    # v -> (x_0, eps) -> v
    v2 = process.v_from_x0_eps(process.x0_from_v(x_t, step, v), process.eps_from_v(x_t, step, v), step)
    close(v2, v)


@given(name=SCHEDULES, timesteps=st.integers(21, 500), seed=st.integers(0, 2**16), data=st.data())
def test_previous_x_round_trip(name: str, timesteps: int, seed: int, data: st.DataObject) -> None:
    process = process_for(name, timesteps)
    step = data.draw(st.integers(0, timesteps - 1))
    gen = torch.Generator().manual_seed(seed)
    x0, x_t = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64).unbind(0)
    mean = process.q_posterior_mean(x0, x_t, step)
    close(process.x0_from_xprev(x_t, step, mean), x0, rtol=1e-6, atol=1e-6)


@given(name=SCHEDULES, timesteps=st.integers(21, 2000), zts=st.booleans())
def test_posterior_variance_nonnegative(name: str, timesteps: int, zts: bool) -> None:
    process = process_for(name, timesteps, zts)
    assert process.posterior_variance[0] == 0.0
    assert np.all(process.posterior_variance >= 0)
    assert np.all(process.posterior_variance[1:] > 0)
    assert np.all(np.isfinite(process.posterior_log_variance_clipped))
    assert process.posterior_log_variance_clipped[0] == process.posterior_log_variance_clipped[1]
    # The posterior variance never exceeds the forward step's beta.
    assert np.all(process.posterior_variance <= process.betas * (1 + 1e-12))


# -- respacing --------------------------------------------------------------------------


@given(name=SCHEDULES, timesteps=st.integers(21, 1000), data=st.data())
def test_respaced_alpha_bar_equals_original_at_kept_steps(
    name: str, timesteps: int, data: st.DataObject
) -> None:
    process = process_for(name, timesteps)
    keep = sorted(data.draw(st.sets(st.integers(0, timesteps - 1), min_size=1, max_size=timesteps)))
    spaced = process.respace(keep)
    assert spaced.num_timesteps == len(keep)
    assert spaced.original_num_steps == timesteps
    assert spaced.timestep_map.tolist() == keep
    # Betas are rebuilt as 1 - ᾱ_k / ᾱ_prev (as guided-diffusion does), so ᾱ comes back to float64
    # rounding in absolute terms (relative error ~1e-16 / ᾱ where ᾱ is tiny).
    np.testing.assert_allclose(spaced.alphas_cumprod, process.alphas_cumprod[keep], rtol=1e-12, atol=1e-15)
    assert spaced.is_respaced == (keep != list(range(timesteps)))


def test_respaced_section_strings_and_composition() -> None:
    process = schedules.linear(100).process()
    assert process.respaced("ddim25").timestep_map.tolist() == list(range(0, 100, 4))
    twice = process.respaced("50").respaced("ddim5")  # steps of the respaced chain, then mapped back
    assert twice.timestep_map.tolist() == process.respaced("50").timestep_map[list(range(0, 50, 10))].tolist()
    assert twice.original_num_steps == 100
    with pytest.raises(TypeError, match="pass explicit steps to respace"):
        process.respaced([0, 10])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="use_timesteps must lie in"):
        process.respace([5, 100])
    with pytest.raises(ValueError, match="empty"):
        process.respace([])


def test_model_timesteps() -> None:
    process = schedules.cosine(100).process()
    assert process.model_timesteps(7, 3, "cpu").tolist() == [7, 7, 7]
    assert process.model_timesteps(torch.tensor([1, 2]), 2, "cpu").tolist() == [1, 2]
    spaced = process.respaced("10")
    assert spaced.model_timesteps(torch.tensor([0, 1, 9]), 3, "cpu").tolist() == [0, 11, 99]
    assert spaced.model_timesteps(torch.tensor([0.5]), 1, "cpu").tolist() == [5.5]  # between kept steps
    rescaled = schedules.cosine(100).process(rescale_timesteps=True).respaced("10")
    out = rescaled.model_timesteps(torch.tensor([1, 9]), 2, "cpu")
    assert out.dtype == torch.float32
    assert out.tolist() == [110.0, 990.0]


# -- tables and coefficients ------------------------------------------------------------


def test_coef_paths_agree_and_cache() -> None:
    process = schedules.linear(50).process()
    x = torch.zeros(4, 3, 2, 2)
    c = process.coef("sqrt_alphas_cumprod", 10, x)
    assert type(c) is float
    assert c == float(process.sqrt_alphas_cumprod[10])
    assert (
        process.coef("sqrt_alphas_cumprod", 10.0, x)
        == c
        == process.coef("sqrt_alphas_cumprod", np.int64(10), x)
    )
    tc = process.coef("sqrt_alphas_cumprod", torch.tensor([10, 11, 12, 13]), x)
    assert isinstance(tc, Tensor)
    assert tc.shape == (4, 1, 1, 1)
    assert tc.dtype == torch.float32
    assert tc[0].item() == float(np.float32(c))
    # tables are uploaded once per (device, dtype)
    assert process.table("betas", "cpu", torch.float32) is process.table("betas", "cpu", torch.float32)
    with pytest.raises(TypeError, match="fractional"):
        process.coef("betas", 2.5, x)
    with pytest.raises(KeyError, match="unknown table 'beta'"):
        process.coef("beta", 2, x)
    with pytest.raises(KeyError, match="unknown table"):
        process.table("nope", "cpu", torch.float32)


def test_alpha_bar_fractional_steps() -> None:
    process = schedules.linear(100).process()
    log_ab = np.log(process.alphas_cumprod)
    assert process.alpha_bar(3) == process.alphas_cumprod[3]
    assert math.isclose(process.alpha_bar(3.25), math.exp(0.75 * log_ab[3] + 0.25 * log_ab[4]), rel_tol=1e-12)
    ab = process.alpha_bar(torch.tensor([3.25, 4.0], dtype=torch.float64))
    assert isinstance(ab, Tensor)
    np.testing.assert_allclose(
        ab.flatten().numpy(), [process.alpha_bar(3.25), process.alphas_cumprod[4]], rtol=1e-12
    )
    zts = schedules.linear(100, zero_terminal_snr=True).process()
    at_end = zts.alpha_bar(torch.tensor([98.5, 99.0], dtype=torch.float64))
    assert isinstance(at_end, Tensor)
    assert not at_end.isnan().any()
    assert at_end.flatten()[1].item() == 0.0


def test_single_step_chain_and_repr() -> None:
    process = GaussianProcess([0.5])
    assert process.num_timesteps == 1
    assert math.isfinite(process.posterior_log_variance_clipped[0])
    assert repr(process) == "GaussianProcess(num_timesteps=1)"
    assert "respaced from 100" in repr(schedules.linear(100).process().respaced("10"))
    with pytest.raises(ValueError, match="noise shape"):
        process.q_sample(torch.zeros(2, 3), 0, torch.zeros(2, 4))
