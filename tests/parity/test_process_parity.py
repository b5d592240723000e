"""Parity of ddkit.diffusion with guided-diffusion's gaussian_diffusion, respace, resample and losses.

Same betas, inputs, noise and timesteps through both; float64 tables agree to 1e-12 and float32
tensors to 1e-5 relative. A tiny seeded, t-dependent model stands in for the network.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import ddkit
from ddkit.diffusion import GaussianParameterization, GaussianProcess, likelihood, losses, p_mean_variance
from ddkit.diffusion.resample import LossSecondMomentResampler, UniformResampler
from ddkit.diffusion.respace import space_timesteps

gd = pytest.importorskip("guided_diffusion.gaussian_diffusion")
gd_respace = pytest.importorskip("guided_diffusion.respace")
gd_resample = pytest.importorskip("guided_diffusion.resample")
gd_losses = pytest.importorskip("guided_diffusion.losses")

pytestmark = pytest.mark.parity
torch.set_num_threads(1)

T = 100
SCHEDULES = ("linear", "cosine")
SHAPES = ((4, 3, 8, 8), (5, 2))
MEANS = {"epsilon": "EPSILON", "x0": "START_X", "previous-x": "PREVIOUS_X"}
VARIANCES = {
    "fixed-small": "FIXED_SMALL",
    "fixed-large": "FIXED_LARGE",
    "learned": "LEARNED",
    "learned-range": "LEARNED_RANGE",
}
LOSS_TYPES = {"mse": "MSE", "rescaled-mse": "RESCALED_MSE", "kl": "KL", "rescaled-kl": "RESCALED_KL"}
TABLES = (
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
)


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """torch.testing.assert_close's check, without its import of torch.distributed.tensor (seconds)."""
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    bad = diff > atol + rtol * expected.double().abs()
    assert not bool(bad.any()), (
        f"{int(bad.sum())} of {bad.numel()} elements differ; max abs diff {diff.max():.3g}"
    )


class TinyModel(nn.Module):
    """A seeded conv (images) or linear (vectors) layer plus a timestep- and kwarg-dependent shift."""

    def __init__(self, shape: tuple[int, ...], out_channels: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        channels = shape[1]
        self.net: nn.Module = (
            nn.Conv2d(channels, out_channels, 3, padding=1)
            if len(shape) == 4
            else nn.Linear(channels, out_channels)
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.temb = nn.Parameter(torch.randn(out_channels, generator=gen) * 0.5)

    def forward(self, x: Tensor, t: Tensor, shift: Tensor | None = None) -> Tensor:
        h = self.net(x)
        view = (-1, *([1] * (h.ndim - 1)))
        h = h + torch.sin(t.float() / 37.0).view(view) * self.temb.view(1, -1, *([1] * (h.ndim - 2)))
        return h if shift is None else h + shift.view(view)


def make_pair(
    schedule: str, mean: str, variance: str, loss: str = "mse", *, timesteps: int = T, rescale: bool = False
) -> tuple[Any, GaussianProcess, GaussianParameterization]:
    betas = gd.get_named_beta_schedule(schedule, timesteps)
    ref = gd.GaussianDiffusion(
        betas=betas,
        model_mean_type=gd.ModelMeanType[MEANS[mean]],
        model_var_type=gd.ModelVarType[VARIANCES[variance]],
        loss_type=gd.LossType[LOSS_TYPES[loss]],
        rescale_timesteps=rescale,
    )
    process = ddkit.create("schedule", schedule, timesteps=timesteps).process(rescale_timesteps=rescale)
    param = ddkit.create("parameterization", mean, variance=variance)
    return ref, process, param


def inputs(shape: tuple[int, ...], seed: int, timesteps: int = T) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(shape, generator=gen) * 2 - 1).clamp(-1, 1)
    noise = torch.randn(shape, generator=gen)
    t = torch.randint(0, timesteps, (shape[0],), generator=gen)
    t[0] = 0  # the decoder term of the bound
    t[-1] = timesteps - 1
    return x0, noise, t


def model_for(shape: tuple[int, ...], variance: str, seed: int) -> TinyModel:
    out = shape[1] * (2 if variance.startswith("learned") else 1)
    return TinyModel(shape, out, seed)


# -- schedules and tables ---------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("timesteps", [1000, T, 37])
def test_tables_match(schedule: str, timesteps: int) -> None:
    ref, process, _ = make_pair(schedule, "epsilon", "fixed-small", timesteps=timesteps)
    sched = ddkit.create("schedule", schedule, timesteps=timesteps)
    np.testing.assert_allclose(
        sched.betas, gd.get_named_beta_schedule(schedule, timesteps), rtol=1e-12, atol=0
    )
    for name in TABLES:
        np.testing.assert_allclose(
            getattr(process, name), getattr(ref, name), rtol=1e-12, atol=0, err_msg=name
        )
    # fixed-large's table and the log-betas of learned-range, as guided-diffusion builds them inline
    large = np.append(ref.posterior_variance[1], ref.betas[1:])
    np.testing.assert_allclose(process.fixed_large_variance, large, rtol=1e-12, atol=0)
    np.testing.assert_allclose(process.fixed_large_log_variance, np.log(large), rtol=1e-12, atol=0)
    np.testing.assert_allclose(process.log_betas, np.log(ref.betas), rtol=1e-12, atol=0)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_q_sample_and_posterior(schedule: str, shape: tuple[int, ...], seed: int) -> None:
    ref, process, _ = make_pair(schedule, "epsilon", "fixed-small")
    x0, noise, t = inputs(shape, seed)
    x_t = process.q_sample(x0, t, noise)
    close(x_t, ref.q_sample(x0, t, noise=noise))
    mean, var, log_var = process.q_mean_variance(x0, t)
    r_mean, r_var, r_log_var = ref.q_mean_variance(x0, t)
    close(mean, r_mean)
    close(torch.as_tensor(var).expand_as(x0), r_var)
    close(torch.as_tensor(log_var).expand_as(x0), r_log_var)
    for ours, theirs in zip(
        process.q_posterior_mean_variance(x0, x_t, t), ref.q_posterior_mean_variance(x0, x_t, t)
    ):
        close(ours, theirs.expand_as(ours))
    # A step shared by the batch (Python int, the samplers' fast path) gives the same numbers.
    step = int(t[1])
    tt = torch.full((shape[0],), step)
    close(process.q_sample(x0, step, noise), ref.q_sample(x0, tt, noise=noise))
    close(process.q_posterior_mean(x0, x_t, step), ref.q_posterior_mean_variance(x0, x_t, tt)[0])


# -- the reverse step -------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("mean", "variance"), list(itertools.product(MEANS, VARIANCES)))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("clip", [True, False])
def test_p_mean_variance(schedule: str, mean: str, variance: str, shape: tuple[int, ...], clip: bool) -> None:
    ref, process, param = make_pair(schedule, mean, variance)
    for seed in (0, 1):
        model = model_for(shape, variance, seed)
        x0, noise, t = inputs(shape, seed)
        x_t = process.q_sample(x0, t, noise) * 1.5  # push predictions past [-1, 1] so clipping acts
        shift = torch.linspace(-0.2, 0.2, shape[0])
        denoised_fn: Callable[[Tensor], Tensor] | None = (lambda x: x * 0.9) if seed == 1 else None
        with torch.no_grad():
            theirs = ref.p_mean_variance(
                model, x_t, t, clip_denoised=clip, denoised_fn=denoised_fn, model_kwargs={"shift": shift}
            )
            ours = p_mean_variance(
                process,
                param,
                model,
                x_t,
                t,
                clip_denoised=clip,
                denoised_fn=denoised_fn,
                model_kwargs={"shift": shift},
            )
        assert ours.mean is not None
        assert ours.variance is not None
        assert ours.log_variance is not None
        close(ours.x0, theirs["pred_xstart"])
        close(ours.mean, theirs["mean"])
        close(ours.variance, theirs["variance"])
        close(ours.log_variance, theirs["log_variance"])
        if mean == "epsilon" and not clip and denoised_fn is None:
            # x_0 was not changed, so eps is the network's own output, not re-derived from x_0
            # (guided-diffusion's samplers re-derive it, losing digits where sqrt(1 - ᾱ) is small).
            close(ours.eps, ours.model_output[:, : shape[1]])
        else:
            close(ours.eps, ref._predict_eps_from_xstart(x_t, t, theirs["pred_xstart"]))


# -- losses -----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("mean", "variance", "loss"), list(itertools.product(MEANS, VARIANCES, LOSS_TYPES)))
@pytest.mark.parametrize("shape", SHAPES)
def test_training_losses(schedule: str, mean: str, variance: str, loss: str, shape: tuple[int, ...]) -> None:
    ref, process, param = make_pair(schedule, mean, variance, loss)
    for seed in (0, 1, 2):
        model = model_for(shape, variance, seed)
        x0, noise, t = inputs(shape, seed)
        kwargs = {"shift": torch.linspace(-0.1, 0.3, shape[0])}
        theirs = ref.training_losses(model, x0, t, model_kwargs=kwargs, noise=noise)
        ours = losses.training_losses(
            process, param, model, x0, t, noise=noise, loss=loss, model_kwargs=kwargs
        )
        assert set(ours) == set(theirs)
        for key in theirs:
            close(ours[key], theirs[key])
    if loss == "rescaled-mse" and variance.startswith("learned"):
        hybrid = losses.training_losses(
            process, param, model, x0, t, noise=noise, loss="hybrid", model_kwargs=kwargs
        )
        for key in theirs:
            close(hybrid[key], theirs[key])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("mean", "variance"), list(itertools.product(MEANS, VARIANCES)))
@pytest.mark.parametrize("shape", SHAPES)
def test_vb_terms_bpd(schedule: str, mean: str, variance: str, shape: tuple[int, ...]) -> None:
    ref, process, param = make_pair(schedule, mean, variance)
    model = model_for(shape, variance, 3)
    x0, noise, t = inputs(shape, 3)
    x_t = process.q_sample(x0, t, noise)
    for clip in (True, False):
        theirs = ref._vb_terms_bpd(model, x0, x_t, t, clip_denoised=clip)
        ours = likelihood.vb_terms_bpd(process, param, model, x0, x_t, t, clip_denoised=clip)
        close(ours["output"], theirs["output"])
        close(ours["x0"], theirs["pred_xstart"])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(
    ("mean", "variance", "clip"),
    [
        ("epsilon", "learned-range", True),
        ("x0", "fixed-large", True),
        ("previous-x", "learned", False),
        ("epsilon", "fixed-small", False),
    ],
)
@pytest.mark.parametrize("shape", SHAPES)
def test_calc_bpd_loop(schedule: str, mean: str, variance: str, clip: bool, shape: tuple[int, ...]) -> None:
    # One model call per step: T = 40 keeps the loop short.
    ref, process, param = make_pair(schedule, mean, variance, timesteps=40)
    model = model_for(shape, variance, 4)
    x0, _, _ = inputs(shape, 4, timesteps=40)
    torch.manual_seed(123)
    theirs = ref.calc_bpd_loop(model, x0, clip_denoised=clip)
    torch.manual_seed(123)
    ours = likelihood.calc_bpd_loop(process, param, model, x0, clip_denoised=clip)
    assert set(ours) == set(theirs)
    for key in theirs:
        close(ours[key], theirs[key])
    close(likelihood.prior_bpd(process, x0), ref._prior_bpd(x0))


def test_likelihood_helpers() -> None:
    gen = torch.Generator().manual_seed(5)
    a, b, c, d = (torch.randn(6, 3, generator=gen) for _ in range(4))
    close(likelihood.normal_kl(a, b, c, d), gd_losses.normal_kl(a, b, c, d))
    close(likelihood.normal_kl(a, b, 0.0, 0.0), gd_losses.normal_kl(a, b, 0.0, 0.0))
    close(likelihood.approx_standard_normal_cdf(a * 3), gd_losses.approx_standard_normal_cdf(a * 3))
    x = torch.randint(0, 256, (6, 3), generator=gen).float() / 127.5 - 1
    close(
        likelihood.discretized_gaussian_log_likelihood(x, means=b * 0.5, log_scales=c * 0.5 - 2),
        gd_losses.discretized_gaussian_log_likelihood(x, means=b * 0.5, log_scales=c * 0.5 - 2),
    )


# -- respacing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sections", ["ddim25", "10,20,30", "ddim10", "250", "7", "1,2,3,4", [3, 0, 5], "ddim1000"]
)
@pytest.mark.parametrize("timesteps", [1000, 300, T])
def test_space_timesteps(sections: str | list[int], timesteps: int) -> None:
    try:
        expected = gd_respace.space_timesteps(timesteps, sections)
    except ValueError:
        with pytest.raises(ValueError, match=r"\w"):
            space_timesteps(timesteps, sections)
        return
    assert set(space_timesteps(timesteps, sections)) == expected


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sections", ["ddim25", "10,20,30"])
@pytest.mark.parametrize("rescale", [False, True])
def test_respaced_process(schedule: str, sections: str, rescale: bool) -> None:
    betas = gd.get_named_beta_schedule(schedule, T)
    process = ddkit.create("schedule", schedule, timesteps=T).process(rescale_timesteps=rescale)
    spaced = process.respaced(sections)
    assert spaced.timestep_map.tolist() == sorted(space_timesteps(T, sections))
    for mean, variance, loss in [
        ("epsilon", "learned-range", "rescaled-mse"),
        ("x0", "fixed-large", "kl"),
        ("previous-x", "learned", "mse"),
        ("epsilon", "fixed-small", "rescaled-kl"),
    ]:
        ref = gd_respace.SpacedDiffusion(
            use_timesteps=gd_respace.space_timesteps(T, sections),
            betas=betas,
            model_mean_type=gd.ModelMeanType[MEANS[mean]],
            model_var_type=gd.ModelVarType[VARIANCES[variance]],
            loss_type=gd.LossType[LOSS_TYPES[loss]],
            rescale_timesteps=rescale,
        )
        for name in TABLES:
            np.testing.assert_allclose(
                getattr(spaced, name), getattr(ref, name), rtol=1e-12, atol=0, err_msg=name
            )
        assert spaced.timestep_map.tolist() == ref.timestep_map
        param = ddkit.create("parameterization", mean, variance=variance)
        for shape in SHAPES:
            model = model_for(shape, variance, 7)
            x0, noise, t = inputs(shape, 7, timesteps=spaced.num_timesteps)
            x_t = spaced.q_sample(x0, t, noise)
            seen: list[Tensor] = []

            def spy(x: Tensor, ts: Tensor, model: TinyModel = model, seen: list[Tensor] = seen) -> Tensor:
                seen.append(ts)
                return model(x, ts)

            with torch.no_grad():
                theirs = ref.p_mean_variance(spy, x_t, t, clip_denoised=True)
                ours = p_mean_variance(spaced, param, spy, x_t, t, clip_denoised=True)
            assert torch.equal(seen[1], seen[0])  # the model saw the same timesteps
            assert ours.mean is not None
            assert ours.log_variance is not None
            close(ours.mean, theirs["mean"])
            close(ours.log_variance, theirs["log_variance"])
            close(ours.x0, theirs["pred_xstart"])
            r_losses = ref.training_losses(model, x0, t, noise=noise)
            o_losses = losses.training_losses(spaced, param, model, x0, t, noise=noise, loss=loss)
            assert set(o_losses) == set(r_losses)
            for key in r_losses:
                close(o_losses[key], r_losses[key])


# -- timestep resamplers ----------------------------------------------------------------


def _reference_lsm(monkeypatch: pytest.MonkeyPatch, timesteps: int) -> Any:
    monkeypatch.setattr(np, "int", int, raising=False)  # guided-diffusion still uses the removed np.int
    return gd_resample.LossSecondMomentResampler(types.SimpleNamespace(num_timesteps=timesteps))


def test_loss_second_moment_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    timesteps = 20
    ref = _reference_lsm(monkeypatch, timesteps)
    ours = LossSecondMomentResampler(timesteps)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for round_ in range(40):
        ts = rng.integers(0, timesteps, size=16).tolist()
        ls = (rng.random(16) * (np.array(ts) + 1) * (1 + round_ % 3)).tolist()
        ref.update_with_all_losses(ts, ls)
        ours.update(torch.tensor(ts), torch.tensor(ls, dtype=torch.float64))
        np.testing.assert_allclose(ours.weights(), ref.weights(), rtol=1e-12, atol=0)
        assert ours.warmed_up == ref._warmed_up()
        t, w = ours.sample(64, generator=gen)
        p = ref.weights() / ref.weights().sum()
        close(w, torch.from_numpy(1 / (timesteps * p[t.numpy()])).float())
    assert ours.warmed_up  # 640 draws over 20 steps warm every step up


def test_uniform_matches() -> None:
    ref = gd_resample.UniformSampler(types.SimpleNamespace(num_timesteps=30))
    ours = UniformResampler(30)
    np.testing.assert_array_equal(ours.weights(), ref.weights())
    t, w = ours.sample(500, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0
    assert t.max() < 30
    assert len(set(t.tolist())) == 30
    assert torch.equal(w, torch.ones(500))
