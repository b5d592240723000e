"""Prediction's lazy x_0 / ε forms: same numbers as the eager formulas, computed only when read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddkit.diffusion import GaussianParameterization, GaussianProcess
from ddkit.prediction import Linear, Prediction


def zero_terminal_process() -> GaussianProcess:
    betas = np.linspace(1e-4, 0.02, 50)
    betas[-1] = 1.0  # ᾱ_T = 0
    return GaussianProcess(betas)


def test_linear_value_is_its_formula() -> None:
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(Linear(0.3, x, -1.7, y).value(), 0.3 * x - 1.7 * y)
    assert torch.allclose(Linear(1.0, x, 2.0, y, 0.5).value(), (x + 2.0 * y) * 0.5)
    a = torch.tensor([[0.5], [1.0], [2.0], [3.0]])
    assert torch.allclose(Linear(a, x, 1.0, y, a).value(), (a * x + y) * a)


def test_blend_x0_fuses_without_computing_x0() -> None:
    x, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    pred = Prediction(Linear(1.3, x, -0.4, out), out, out)
    blended = pred.blend_x0(0.2, x, 0.7)
    assert isinstance(pred._x0, Linear), "blend_x0 must not materialise x_0"
    assert torch.allclose(blended, 0.2 * x + 0.7 * (1.3 * x - 0.4 * out), atol=1e-6)
    assert torch.allclose(pred.x0, 1.3 * x - 0.4 * out, atol=1e-6)
    assert isinstance(pred._x0, torch.Tensor)
    # A different x (not the one x_0 is a form of) takes the general path.
    other = torch.randn_like(x)
    assert torch.allclose(pred.blend_x0(0.2, other, 0.7), 0.2 * other + 0.7 * pred.x0, atol=1e-6)


def test_replace_keeps_lazy_fields_and_refuses_unknown_ones() -> None:
    x, out = torch.randn(2, 2), torch.randn(2, 2)
    pred = Prediction(Linear(1.0, x, -1.0, out), out, out)
    copy = pred.replace(mean=x)
    assert copy.mean is x
    assert torch.equal(copy.x0, x - out)
    with pytest.raises(TypeError, match="no field 'x1'"):
        pred.replace(x1=x)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_eps_is_finite_where_alpha_bar_is_zero(prediction: str) -> None:
    process = zero_terminal_process()
    t = process.num_timesteps - 1
    assert process.alphas_cumprod[t] == 0.0
    x_t, output = torch.randn(3, 2), torch.randn(3, 2)
    for clip in (False, True):
        pred = GaussianParameterization(prediction, "fixed-small", clip).predict(process, output, x_t, t)
        assert torch.isfinite(pred.eps).all(), f"{prediction} (clip={clip}) gave a non-finite eps at ᾱ = 0"
        # At ᾱ = 0, x_t is pure noise: eps = x_t whatever x_0 is.
        assert torch.allclose(pred.eps, x_t, atol=1e-6)
    batch_t = torch.tensor([t, t - 1, 0])
    eps = process.eps_from_x0(x_t, batch_t, output)
    assert torch.isfinite(eps).all()
    assert torch.allclose(eps[0], x_t[0])


def test_eps_from_x0_inverts_x0_from_eps() -> None:
    process = GaussianProcess(np.linspace(1e-4, 0.02, 100))
    x_t, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    for t in (0, 17, 99, torch.tensor([0, 5, 50, 98, 99])):
        x0 = process.x0_from_eps(x_t, t, eps)
        assert torch.allclose(process.eps_from_x0(x_t, t, x0), eps, atol=1e-8)
    x0 = process.x0_from_eps(x_t, 3.5, eps)  # a fractional step interpolates ᾱ
    assert torch.allclose(process.eps_from_x0(x_t, 3.5, x0), eps, atol=1e-8)
