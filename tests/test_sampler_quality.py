"""Every sampler at its defaults against DDPM at its defaults (995 steps), on the README's own example.

The README's pipeline (cosine schedule, ε-prediction with fixed-small variance and no
clipping, the 2-D MLP on the 8-Gaussian toy) is trained briefly, then sampled as a new user
would: each registered ddkit sampler with only ``steps`` set, 10 to 200. Quality is the sliced
Wasserstein distance to fresh data, and every sampler must come within 1.5× of DDPM's.

What this caught: a network whose output is bounded in ``x`` (a normalized head) cannot follow
ε ≈ x in the tails of N(0, I) at high noise; the deterministic samplers multiply that shortfall
by σ/α and threw about 1 % of their samples far off the data (DDIM 0.15 / 0.82 / 4.1 at
10 / 50 / 200 steps against DDPM's 0.05), while DDPM's fresh noise hid it. The MLP's linear
skip (``skip=True``) is the fix; :func:`test_the_tails_of_x_T_land_on_the_data` keeps it.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor

import ddkit
import ddkit.data

pytestmark = pytest.mark.slow

#: (sampler, parameters) at their defaults; each runs at every step count of STEPS.
SAMPLERS = (
    pytest.param("ddpm", {}, id="ddpm"),
    pytest.param("euler-ancestral", {}, id="euler-ancestral"),
    pytest.param("dpm-solver++", {"sde": True}, id="dpm-solver++-sde"),
    pytest.param("flow-sde", {}, id="flow-sde"),
    *(
        pytest.param(name, {}, id=name)
        for name in ("ddim", "plms", "ipndm", "deis", "dpm-solver++", "euler", "heun")
    ),
)
STEPS = (10, 50, 200)
N = 2000


def sliced_wasserstein(a: Tensor, b: Tensor, n_proj: int = 128) -> float:
    dirs = torch.randn(2, n_proj, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, pb = (torch.sort(v.double() @ dirs, dim=0).values for v in (a, b))
    if not torch.isfinite(pa).all():
        return math.inf
    return float((pa - pb).square().mean(dim=0).sqrt().mean())


@pytest.fixture(scope="module")
def pipe() -> ddkit.Pipeline:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "cosine", "timesteps": 1000},
            "parameterization": {"name": "epsilon", "variance": "fixed-small", "clip_denoised": False},
            "model": {"name": "mlp", "dim": 2, "hidden": 128},
            "sampler": {"name": "ddpm"},
        }
    )
    ddkit.Trainer(pipe, "gaussians", batch_size=256, lr=2e-3).train(1200)
    return pipe


@pytest.fixture(scope="module")
def data() -> Tensor:
    points = ddkit.data.load("gaussians", n=N, seed=123)
    return torch.stack([p[0] if isinstance(p, tuple) else p for p in points]).float()


def distance(pipe: ddkit.Pipeline, data: Tensor, name: str, **params: object) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ddkit.SamplingWarning)  # the defaults must not warn
        out = pipe.with_sampler(name, **params).sample(N, generator=torch.Generator().manual_seed(1))
    return sliced_wasserstein(out, data)


@pytest.fixture(scope="module")
def ddpm_1000(pipe: ddkit.Pipeline, data: Tensor) -> float:
    # DDPM at its defaults: every training step from the last with λ ≥ −5.1 (995 of the 1000).
    return distance(pipe, data, "ddpm")


def test_the_model_is_good_enough_to_judge_samplers(ddpm_1000: float) -> None:
    # Two independent draws of the data are ~0.02 apart at this size; an untrained model is ~0.5.
    assert ddpm_1000 < 0.08, f"DDPM-1000 scores {ddpm_1000:.3f}: the toy model is too poor to judge samplers"


@pytest.mark.parametrize(("name", "params"), SAMPLERS)
def test_every_sampler_at_its_defaults_is_within_1_5x_of_ddpm_1000(
    pipe: ddkit.Pipeline, data: Tensor, ddpm_1000: float, name: str, params: dict[str, object]
) -> None:
    scores = {steps: distance(pipe, data, name, steps=steps, **params) for steps in STEPS}
    worst = max(scores.values())
    shown = ", ".join(f"{s} steps: {v:.3f}" for s, v in scores.items())
    assert worst <= 1.5 * ddpm_1000, f"{name} {params} at its defaults: {shown}; DDPM-1000 {ddpm_1000:.3f}"


def test_every_installed_ddkit_sampler_is_judged() -> None:
    judged = {p.values[0] for p in SAMPLERS}
    ours = {
        n for n in ddkit.names("sampler") if ddkit.describe("sampler", n).distribution == "ddkit-samplers"
    }
    assert ours <= judged, f"not judged here: {sorted(ours - judged)}"


def test_the_tails_of_x_T_land_on_the_data(pipe: ddkit.Pipeline, data: Tensor) -> None:
    # x_T 3.3–4.5 from the origin (about 1 % of N(0, I) in 2-D), through 200 DDIM steps: the
    # probability-flow ODE takes them near the ring (a head bounded in x sent them 10–120 out;
    # from the default start, λ = −2.5 for 2-D data, a 4.5σ start lands up to 1.5× the data's reach).
    angle = torch.linspace(0, 2 * math.pi, 64)
    radius = torch.linspace(3.3, 4.5, 64)
    x_T = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    out = pipe.with_sampler("ddim", steps=200).sample(64, x_T=x_T)
    reach = float(data.norm(dim=1).max())
    assert float(out.norm(dim=1).max()) < 2.0 * reach, out.norm(dim=1).max()


def test_the_whole_chain_warns_and_names_the_fix(pipe: ddkit.Pipeline) -> None:
    # The whole cosine chain (lambda_min=None) starts an ε model at ᾱ = 2e-9, where x̂_0 is
    # 2·10⁴ times the network's ε error: this network survives it, many do not, so it warns.
    for name, params in (("euler", {"steps": 50, "spacing": "karras"}), ("ddpm", {})):
        sampler = pipe.with_sampler(name, lambda_min=None, **params)
        with pytest.warns(ddkit.SamplingWarning, match="lambda_min=-5.1"):
            out = sampler.sample(64, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(out).all(), name
