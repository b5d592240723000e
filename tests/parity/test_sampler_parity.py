"""Parity of ddkit's samplers with guided-diffusion and diffusers: same model, same noise, same path.

guided-diffusion draws its noise with ``th.randn_like`` from the global RNG, one draw per step
after the model call; ddkit's samplers, given no generator, draw ``torch.randn`` of the same
shape at the same point (skipping draws whose noise is multiplied by 0), so seeding the global
RNG identically before each loop feeds both the same noise. diffusers' schedulers are driven
step by step with the same model and, where they draw noise, the same generator.

Every ddkit sampler here runs with ``lambda_min=None`` (the whole chain, as the references walk
it) and the references' spacings (guided-diffusion's ``"ddimN"``/section strings, diffusers'
``timestep_spacing``): the documented settings that reproduce them. Such starts near ᾱ = 0 are
what :class:`ddkit.SamplingWarning` warns about for trained models, so it is silenced here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import ddkit
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess
from ddkit.diffusion.respace import space_timesteps

gd = pytest.importorskip("guided_diffusion.gaussian_diffusion")
gd_respace = pytest.importorskip("guided_diffusion.respace")
diffusers = pytest.importorskip("diffusers")

pytestmark = [pytest.mark.parity, pytest.mark.filterwarnings("ignore::ddkit.sampling.SamplingWarning")]
torch.set_num_threads(1)

MEANS = {"epsilon": "EPSILON", "x0": "START_X", "previous-x": "PREVIOUS_X"}
VARS = {"fixed-small": "FIXED_SMALL", "fixed-large": "FIXED_LARGE", "learned-range": "LEARNED_RANGE"}


class ToyNet(nn.Module):
    """A seeded, t-dependent network on images [B, C, H, W] (tanh keeps learned-range outputs in [-1, 1])."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g) * 0.1)
        self.channels = channels

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        phase = torch.sin(t.float() / 97.0).reshape(-1, 1, 1, 1)
        out = torch.tanh(self.conv(x) * (1.0 + 0.5 * phase))
        if out.shape[1] == x.shape[1]:
            out = out + 0.3 * x  # a little of x, as an ε-model has near T
        return out


def assert_close(actual: Tensor, expected: Tensor, tol: float, what: str, gain: float = 1.0) -> None:
    """|a − e| ≤ tol·gain·(1 + max|e|): relative to the tensor's scale.

    ``gain`` is the conditioning of the compared quantity: x̂_0 = (x − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ)
    turns a float32 rounding difference in x (1 ulp) into one 1/sqrt(ᾱ) times larger, so
    x̂_0 is compared with gain 1/sqrt(ᾱ_t) (x itself with gain 1).
    """
    err = (actual.double() - expected.double()).abs().max().item()
    scale = 1.0 + expected.double().abs().max().item()
    assert err <= tol * gain * scale, f"{what}: max |diff| {err:.3g} > {tol:g}·{gain:.3g}·{scale:.3g}"


def x0_gain(diffusion: Any, step: int) -> float:
    """1/sqrt(ᾱ) at the ``step``-th state of a guided-diffusion chain (walked from T − 1 down)."""
    return float(1.0 / math.sqrt(diffusion.alphas_cumprod[diffusion.num_timesteps - 1 - step]))


def gd_diffusion(betas: np.ndarray, use: list[int] | None, mean: str, var: str) -> Any:
    kwargs = {
        "betas": betas,
        "model_mean_type": getattr(gd.ModelMeanType, MEANS[mean]),
        "model_var_type": getattr(gd.ModelVarType, VARS[var]),
        "loss_type": gd.LossType.MSE,
        "rescale_timesteps": False,
    }
    return gd_respace.SpacedDiffusion(use_timesteps=use if use is not None else range(len(betas)), **kwargs)


def ddkit_denoiser(model: nn.Module, betas: np.ndarray, mean: str, var: str, clip: bool) -> Denoiser:
    param = GaussianParameterization(mean, var, clip)
    return Denoiser(model, param, GaussianProcess(betas), clip_denoised=clip)


def steps_of(it: Iterator[Any]) -> list[Any]:
    return list(it)


# -- guided-diffusion: DDPM and DDIM ---------------------------------------------------------

CASES = [
    # (schedule, T, steps, mean, variance, clip)
    ("linear", 200, None, "epsilon", "fixed-small", True),
    ("linear", 200, None, "epsilon", "fixed-large", False),
    ("cosine", 200, None, "epsilon", "fixed-small", False),
    ("cosine", 200, 25, "epsilon", "learned-range", True),
    ("linear", 200, 40, "x0", "fixed-small", True),
    ("cosine", 100, 20, "x0", "fixed-large", False),
    ("linear", 100, None, "previous-x", "fixed-small", True),
    ("cosine", 100, 10, "epsilon", "fixed-small", True),
    ("linear", 1000, None, "epsilon", "fixed-small", True),
]


@pytest.mark.parametrize(("schedule", "T", "steps", "mean", "var", "clip"), CASES)
def test_ddpm_matches_p_sample_loop_progressive(
    schedule: str, T: int, steps: int | None, mean: str, var: str, clip: bool
) -> None:
    betas = gd.get_named_beta_schedule(schedule, T)
    learned = var.startswith("learned")
    model = ToyNet(3, 6 if learned else 3)
    use = None if steps is None else space_timesteps(T, str(steps))
    diffusion = gd_diffusion(betas, use, mean, var)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    torch.manual_seed(123)
    ref = list(
        diffusion.p_sample_loop_progressive(model, x_T.shape, noise=x_T, clip_denoised=clip, device="cpu")
    )
    sampler = ddkit.create("sampler", "ddpm", steps=steps, spacing="sections", lambda_min=None)
    torch.manual_seed(123)
    states = steps_of(sampler.iterate(ddkit_denoiser(model, betas, mean, var, clip), x_T))

    assert len(states) == len(ref) == (T if steps is None else steps)
    for k, (s, r) in enumerate(zip(states, ref)):
        assert_close(s.x, r["sample"], 1e-5, f"x at step {k}")
        assert_close(s.x0, r["pred_xstart"], 1e-5, f"x0 at step {k}", x0_gain(diffusion, k))
    assert states[-1].nfe == len(ref)


DDIM_CASES = [
    # (schedule, T, steps, mean, eta, clip)
    ("linear", 200, None, "epsilon", 0.0, True),
    ("linear", 200, 50, "epsilon", 0.0, False),
    ("cosine", 200, 50, "epsilon", 0.5, True),
    ("cosine", 200, None, "epsilon", 0.5, False),
    ("linear", 200, 20, "x0", 0.5, True),
    ("cosine", 100, 25, "v", 0.0, False),
    ("linear", 1000, 50, "epsilon", 0.0, True),
]


@pytest.mark.parametrize(("schedule", "T", "steps", "mean", "eta", "clip"), DDIM_CASES)
def test_ddim_matches_ddim_sample_loop_progressive(
    schedule: str, T: int, steps: int | None, mean: str, eta: float, clip: bool
) -> None:
    betas = gd.get_named_beta_schedule(schedule, T)
    model = ToyNet(3, 3)
    use = None if steps is None else space_timesteps(T, f"ddim{steps}")
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    # guided-diffusion has no v-prediction: feed it the ε the v-model implies.
    ref_model = model if mean != "v" else VAsEps(model, betas)
    diffusion = gd_diffusion(betas, use, "epsilon" if mean == "v" else mean, "fixed-small")

    torch.manual_seed(7)
    ref = list(
        diffusion.ddim_sample_loop_progressive(
            ref_model, x_T.shape, noise=x_T, clip_denoised=clip, eta=eta, device="cpu"
        )
    )
    sampler = ddkit.create("sampler", "ddim", steps=steps, eta=eta, lambda_min=None)
    torch.manual_seed(7)
    states = steps_of(sampler.iterate(ddkit_denoiser(model, betas, mean, "fixed-small", clip), x_T))

    assert len(states) == len(ref)
    for k, (s, r) in enumerate(zip(states, ref)):
        assert_close(s.x, r["sample"], 1e-5, f"x at step {k}")
        assert_close(s.x0, r["pred_xstart"], 1e-5, f"x0 at step {k}", x0_gain(diffusion, k))


class VAsEps(nn.Module):
    """The ε a v-predicting model implies, eps = sqrt(1 − ᾱ)·x + sqrt(ᾱ)·v, for a reference without v."""

    def __init__(self, model: nn.Module, betas: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.ac = torch.from_numpy(np.cumprod(1.0 - betas))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        ab = self.ac[t.long()].float().reshape(-1, *([1] * (x.ndim - 1)))
        return (1.0 - ab).sqrt() * x + ab.sqrt() * self.model(x, t)


@pytest.mark.parametrize(
    ("schedule", "steps", "clip"), [("linear", 50, False), ("cosine", 20, True), ("linear", None, False)]
)
def test_ddim_inversion_matches_ddim_reverse_sample(schedule: str, steps: int | None, clip: bool) -> None:
    T = 200
    betas = gd.get_named_beta_schedule(schedule, T)
    model = ToyNet(3, 3)
    use = None if steps is None else space_timesteps(T, f"ddim{steps}")
    diffusion = gd_diffusion(betas, use, "epsilon", "fixed-small")
    x0 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)

    ref = []
    x = x0
    for i in range(diffusion.num_timesteps):
        out = diffusion.ddim_reverse_sample(model, x, torch.full((3,), i), clip_denoised=clip)
        ref.append(out)
        x = out["sample"]
    sampler = ddkit.create("sampler", "ddim", steps=steps, lambda_min=None)
    states = list(sampler.invert_iterate(ddkit_denoiser(model, betas, "epsilon", "fixed-small", clip), x0))
    assert len(states) == len(ref)
    for k, (s, r) in enumerate(zip(states, ref)):
        assert_close(s.x, r["sample"], 1e-5, f"x at inversion step {k}")
        gain = 1.0 / math.sqrt(diffusion.alphas_cumprod[k])
        assert_close(s.x0, r["pred_xstart"], 1e-5, f"x0 at inversion step {k}", gain)


# -- diffusers: DPM-Solver++, Euler, Heun, Euler-ancestral, PNDM ------------------------------


def _eps_model() -> nn.Module:
    return ToyNet(3, 3)


def _linear(T: int = 1000) -> np.ndarray:
    return gd.get_named_beta_schedule("linear", T)


def _drive(
    scheduler: Any, model: nn.Module, latents: Tensor, generator: torch.Generator | None = None
) -> list[Tensor]:
    out = []
    kwargs = {} if generator is None else {"generator": generator}
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(latents, t)
        eps = model(inp, t.expand(latents.shape[0]))
        latents = scheduler.step(eps, t, latents, **kwargs).prev_sample
        out.append(latents)
    return out


@pytest.mark.parametrize("steps", [5, 10, 20, 25])
def test_dpm_solver_pp_order2_matches_diffusers(steps: int) -> None:
    betas = _linear()
    model = _eps_model()
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=betas,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        solver_order=2,
        lower_order_final=True,
        timestep_spacing="linspace",
    )
    sched.set_timesteps(steps)
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    ref = _drive(sched, model, x_T.clone())
    sampler = ddkit.create(
        "sampler", "dpm-solver++", steps=steps, spacing="linspace", order=2, lambda_min=None
    )
    states = list(sampler.iterate(ddkit_denoiser(model, betas, "epsilon", "fixed-small", False), x_T))
    assert [s.t for s in states] == [float(t) for t in sched.timesteps]
    assert len(states) == len(ref) == steps
    for k, (s, r) in enumerate(zip(states, ref)):
        assert_close(s.x, r, 1e-4, f"x at step {k}")
    assert sampler.last_nfe == steps


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_pp_matches_diffusers_past_15_steps(order: int) -> None:
    betas = _linear()
    model = _eps_model()
    sched = diffusers.DPMSolverMultistepScheduler(
        trained_betas=betas, algorithm_type="dpmsolver++", solver_order=order, timestep_spacing="linspace"
    )
    sched.set_timesteps(20)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    ref = _drive(sched, model, x_T.clone())
    sampler = ddkit.create(
        "sampler", "dpm-solver++", steps=20, spacing="linspace", order=order, lambda_min=None
    )
    states = list(sampler.iterate(ddkit_denoiser(model, betas, "epsilon", "fixed-small", False), x_T))
    for k, (s, r) in enumerate(zip(states, ref)):
        assert_close(s.x, r, 1e-4, f"x at step {k}")


def _karras_case(
    name: str, cls: Any, steps: int, karras: bool, **extra: Any
) -> tuple[list[Any], list[Tensor]]:
    betas = _linear()
    model = _eps_model()
    if karras:
        extra["use_karras_sigmas"] = True
    sched = cls(trained_betas=betas, timestep_spacing="linspace", **extra)
    sched.set_timesteps(steps)
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    sigma0 = float(sched.sigmas[0])
    latents = x_T * math.sqrt(1.0 + sigma0**2)  # diffusers' x/sqrt(ᾱ) scaling of the same start
    gen = torch.Generator().manual_seed(11)
    ref_ve = _drive(sched, model, latents, gen if name == "euler-ancestral" else None)
    # Heun's form="sigma" is Karras's Alg. 2 as diffusers has it (ddkit's default is the exponential form).
    form = {"form": "sigma"} if name == "heun" else {}
    sampler = ddkit.create(
        "sampler", name, steps=steps, spacing="karras" if karras else "linspace", lambda_min=None, **form
    )
    torch.manual_seed(0)
    states = list(
        sampler.iterate(
            ddkit_denoiser(model, betas, "epsilon", "fixed-small", False),
            x_T,
            generator=torch.Generator().manual_seed(11) if name == "euler-ancestral" else None,
        )
    )
    return states, ref_ve


def _to_vp(ve: Tensor, sigma: float) -> Tensor:
    return ve / math.sqrt(1.0 + sigma * sigma)


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [10, 30])
def test_euler_matches_diffusers(steps: int, karras: bool) -> None:
    states, ref = _karras_case("euler", diffusers.EulerDiscreteScheduler, steps, karras)
    sig = _ddkit_sigmas("euler", steps, karras)
    assert len(states) == len(ref) == steps
    for k, (s, r) in enumerate(zip(states, ref)):
        assert_close(s.x, _to_vp(r, sig[k + 1]), 1e-4, f"x at step {k}")


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [10, 20])
def test_heun_matches_diffusers(steps: int, karras: bool) -> None:
    states, ref = _karras_case("heun", diffusers.HeunDiscreteScheduler, steps, karras)
    sig = _ddkit_sigmas("heun", steps, karras)
    # diffusers yields after each half step; its full steps are the even entries (and the last).
    full = [*ref[1::2], ref[-1]]
    assert len(states) == steps
    assert len(ref) == 2 * steps - 1
    for k, (s, r) in enumerate(zip(states, full)):
        assert_close(s.x, _to_vp(r, sig[k + 1]), 1e-4, f"x at step {k}")
    assert states[-1].nfe == 2 * steps - 1


@pytest.mark.parametrize("steps", [10, 25])
def test_euler_ancestral_matches_diffusers(steps: int) -> None:
    states, ref = _karras_case("euler-ancestral", diffusers.EulerAncestralDiscreteScheduler, steps, False)
    sig = _ddkit_sigmas("euler-ancestral", steps, False)
    for k, (s, r) in enumerate(zip(states, ref)):
        assert_close(s.x, _to_vp(r, sig[k + 1]), 1e-4, f"x at step {k}")


def _ddkit_sigmas(name: str, steps: int, karras: bool) -> list[float]:
    sampler = ddkit.create(
        "sampler", name, steps=steps, spacing="karras" if karras else "linspace", lambda_min=None
    )
    d = ddkit_denoiser(_eps_model(), _linear(), "epsilon", "fixed-small", False)
    return list(sampler._plan(d).extra)


@pytest.mark.parametrize("steps", [10, 25])
def test_plms_matches_diffusers_pndm_skip_prk(steps: int) -> None:
    betas = _linear()
    model = _eps_model()
    sched = diffusers.PNDMScheduler(
        trained_betas=betas,
        skip_prk_steps=True,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    sched.set_timesteps(steps)
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    ref = _drive(sched, model, x_T.clone())
    sampler = ddkit.create("sampler", "plms", steps=steps, spacing="leading", lambda_min=None)
    states = list(sampler.iterate(ddkit_denoiser(model, betas, "epsilon", "fixed-small", False), x_T))
    # diffusers spends its first two calls on the pseudo improved Euler step, as ddkit's first state does.
    full = [ref[1], *ref[2:]]
    assert len(states) == steps == len(full)
    for k, (s, r) in enumerate(zip(states, full)):
        assert_close(s.x, r, 1e-4, f"x at step {k}")
    assert states[-1].nfe == steps + 1
