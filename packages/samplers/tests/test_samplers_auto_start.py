"""``lambda_min="auto"``: where every sampler starts by default, from the model's sample size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sampler_toys import Elementwise, cosine_betas, make_denoiser

import ddkit
from ddkit import ModelSpec
from ddkit.sampling import AUTO_START_SIGNAL, DEFAULT_LAMBDA_MIN, auto_lambda_min
from ddkit.sampling.spacing import discrete_timesteps
from ddkit_samplers.ddim import DDIM


class Sized(Elementwise):
    """The toy model, declaring samples of ``shape``."""

    def __init__(self, shape: tuple[int, ...], total: int) -> None:
        super().__init__(learned=False, total=total)
        self.spec = ModelSpec(shape[0], shape[0], shape, None, None)


def start_lambda(name: str, shape: tuple[int, ...] | None, **params: object) -> float:
    betas = cosine_betas(1000)
    model = Sized(shape, 1000) if shape is not None else Elementwise(learned=False, total=1000)
    d = make_denoiser(betas=betas, model=model)
    x_T = torch.randn(3, *(shape or (2,)))
    state = next(iter(ddkit.create("sampler", name, steps=10, **params).iterate(d, x_T)))
    ab = float(d.process.alphas_cumprod[round(float(state.t))])
    return 0.5 * math.log(ab / (1.0 - ab))


def test_the_auto_start_leaves_out_the_same_signal_at_every_size() -> None:
    assert auto_lambda_min(2) == pytest.approx(-2.5, abs=0.01)  # ᾱ·d = 2·e⁻⁵ at the start
    for d in (1, 2, 8, 64):
        lam = auto_lambda_min(d)
        alpha_bar = 1.0 / (1.0 + math.exp(-2.0 * lam))
        assert alpha_bar * d == pytest.approx(AUTO_START_SIGNAL, rel=1e-9)
    # Images (3·32·32) and anything of unknown size start at the floor, where ε-models are safe.
    assert auto_lambda_min(3 * 32 * 32) == DEFAULT_LAMBDA_MIN
    assert auto_lambda_min(None) == DEFAULT_LAMBDA_MIN


#: Samplers whose grid starts at the top of the usable chain (the others stride from t = 0).
FROM_THE_TOP = ("plms", "ipndm", "deis", "dpm-solver++", "heun")


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", *FROM_THE_TOP])
def test_every_sampler_starts_where_the_model_size_says(name: str) -> None:
    vectors = start_lambda(name, (2,))
    images = start_lambda(name, (3, 16, 16))
    assert vectors >= auto_lambda_min(2) - 0.05
    assert images >= DEFAULT_LAMBDA_MIN - 0.05
    assert start_lambda(name, None) == pytest.approx(images)  # no declared size: the floor
    assert vectors > images + 0.3
    if name in FROM_THE_TOP:
        assert vectors == pytest.approx(auto_lambda_min(2), abs=0.05)
        assert images == pytest.approx(DEFAULT_LAMBDA_MIN, abs=0.05)
        # An explicit value wins over the size; None walks the whole cosine chain (λ_T = −9.9).
        assert start_lambda(name, (2,), lambda_min=-4.0) == pytest.approx(-4.0, abs=0.05)
        with pytest.warns(ddkit.SamplingWarning):
            assert start_lambda(name, (2,), lambda_min=None) < -9.0


def test_a_bad_lambda_min_is_refused_by_name() -> None:
    wanted = r"'lambda_min' must be float \| Literal\['auto'\] \| None \(got str 'whole'\)"
    with pytest.raises(TypeError, match=wanted):
        ddkit.create("sampler", "ddim", lambda_min="whole")
    with pytest.raises(ValueError, match=r"'lambda_min' must be a float, 'auto' or None \(got 'whole'\)"):
        DDIM(lambda_min="whole")  # type: ignore[arg-type]


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_dense_grids_round_to_as_many_distinct_steps_as_asked(spacing: str) -> None:
    ac = np.cumprod(1.0 - cosine_betas(1000))
    for steps in (5, 10, 50, 200, 1000):
        kept = discrete_timesteps(spacing, steps, ac)
        assert len(kept) == steps
        assert kept == sorted(set(kept))
        assert kept[0] >= 0
        assert kept[-1] <= 999


def walked(name: str, **params: object) -> list[float]:
    d = make_denoiser(betas=cosine_betas(1000), model=Sized((2,), 1000))
    return [float(s.t) for s in ddkit.create("sampler", name, **params).iterate(d, torch.randn(2, 2))]


@pytest.mark.parametrize(
    ("name", "few", "many"),
    [("dpm-solver++", "leading", "logsnr"), ("heun", "leading", "logsnr"), ("plms", "ddim", "logsnr")],
)
def test_under_8_steps_the_default_grid_is_time_uniform(name: str, few: str, many: str) -> None:
    for steps in (3, 7):
        assert walked(name, steps=steps) == walked(name, steps=steps, spacing=few)
    for steps in (8, 20):
        assert walked(name, steps=steps) == walked(name, steps=steps, spacing=many)
    assert walked(name, steps=5) != walked(name, steps=5, spacing=many)


def test_the_sde_takes_time_uniform_steps_by_default() -> None:
    sde = walked("dpm-solver++", sde=True, steps=20)
    assert sde == walked("dpm-solver++", sde=True, steps=20, spacing="leading")
    assert sde != walked("dpm-solver++", steps=20)
