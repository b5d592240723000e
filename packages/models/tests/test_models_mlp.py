"""The MLP denoiser: shapes, spec, class conditioning, and that it learns a 2-D toy."""

from __future__ import annotations

import math

import pytest
import torch
from _models_util import assert_close, randomize

import ddkit
from ddkit_models.mlp import MLPDenoiser


def test_shapes_and_spec() -> None:
    model = ddkit.create("model", "mlp")
    assert isinstance(model, MLPDenoiser)
    assert model(torch.randn(5, 2), torch.rand(5) * 999).shape == (5, 2)
    assert model.spec == ddkit.ModelSpec(2, 2, (2,), None, None)


def test_learned_variance_doubles_the_output() -> None:
    model = ddkit.create("model", "mlp", dim=3, learn_sigma=True)
    assert model(torch.randn(4, 3), torch.zeros(4)).shape == (4, 6)
    assert model.spec.out_channels == 6
    with pytest.raises(ValueError, match=r"out_dim=6 \(2·dim\)"):
        ddkit.create("model", "mlp", dim=3, learn_sigma=True, out_dim=3)


def test_class_conditioning_with_a_null_class() -> None:
    model = randomize(ddkit.create("model", "mlp", num_classes=4, hidden=32))
    assert model.label_emb.weight.shape == (5, 32)
    assert model.spec.num_classes == 4
    assert model.spec.null_class == 4
    x, t = torch.randn(3, 2), torch.tensor([1.0, 2.0, 3.0])
    with torch.no_grad():
        assert_close(model(x, t), model(x, t, y=torch.full((3,), 4)))
        assert not torch.allclose(model(x, t, y=torch.zeros(3, dtype=torch.long)), model(x, t))


def test_time_is_used() -> None:
    model = randomize(ddkit.create("model", "mlp", hidden=32))
    x = torch.randn(3, 2)
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.zeros(3)), model(x, torch.full((3,), 500.0)))


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"dim": 0}, ValueError, "'dim' must be a positive int"),
        ({"hiden": 3}, TypeError, "hiden"),
        ({"num_classes": 0}, ValueError, "'num_classes'"),
    ],
)
def test_wrong_parameters_are_named(params: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ddkit.create("model", "mlp", **params)


def test_wrong_input_shape_is_reported() -> None:
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        ddkit.create("model", "mlp")(torch.randn(4, 3), torch.zeros(4))


def test_learns_to_denoise_a_two_dimensional_mixture() -> None:
    # epsilon-prediction on 8 Gaussians with a linear schedule: predicting zero noise scores
    # 1.0; a long run of a larger MLP reaches about 0.22, 150 small steps about 0.28.
    gen = torch.Generator().manual_seed(0)
    angles = torch.arange(8) * (2 * math.pi / 8)
    centers = torch.stack([angles.cos(), angles.sin()], dim=1) * 2
    betas = torch.linspace(1e-4, 0.02, 1000)
    alpha_bar = torch.cumprod(1 - betas, 0)
    model = MLPDenoiser(hidden=64, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = centers[torch.randint(0, 8, (n,), generator=gen)] + 0.05 * torch.randn(n, 2, generator=gen)
        t = torch.randint(0, 1000, (n,), generator=gen)
        noise = torch.randn(n, 2, generator=gen)
        ab = alpha_bar[t][:, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t, noise

    for _ in range(150):
        x_t, t, noise = batch(128)
        loss = (model(x_t, t) - noise).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x_t, t, noise = batch(4096)
    with torch.no_grad():
        final = (model(x_t, t) - noise).square().mean().item()
    assert final < 0.35


def test_the_skip_keeps_predictions_linear_in_x_off_the_data() -> None:
    # The normalized head is bounded in x; the skip's gain g(t)·x is not, so an ε-prediction can
    # follow ε ≈ x in the tails of N(0, I) at high noise.
    model = randomize(ddkit.create("model", "mlp", hidden=32))
    plain = randomize(ddkit.create("model", "mlp", hidden=32, skip=False))
    t = torch.full((1,), 900.0)
    with torch.no_grad():
        far = [float(model(torch.tensor([[r, 0.0]]), t).norm()) for r in (10.0, 100.0, 1000.0)]
        bounded = [float(plain(torch.tensor([[r, 0.0]]), t).norm()) for r in (10.0, 100.0, 1000.0)]
    assert far[2] / far[1] == pytest.approx(10.0, rel=0.05)
    assert bounded[2] / bounded[1] == pytest.approx(1.0, rel=0.05)


def test_weights_saved_without_the_skip_load_as_the_same_network() -> None:
    old = randomize(ddkit.create("model", "mlp", hidden=32, skip=False))
    new = ddkit.create("model", "mlp", hidden=32)
    new.load_state_dict(old.state_dict())  # no skip_gain.* keys: a zero gain
    x, t = torch.randn(6, 2), torch.rand(6) * 999
    with torch.no_grad():
        assert torch.equal(new(x, t), old(x, t))


def test_a_new_network_is_the_zero_predictor_and_other_outputs_get_no_skip() -> None:
    x, t = torch.randn(4, 3), torch.rand(4) * 999
    with torch.no_grad():
        assert torch.equal(ddkit.create("model", "mlp", dim=3)(x, t), torch.zeros(4, 3))
    assert ddkit.create("model", "mlp", dim=3, learn_sigma=True).skip
    assert not ddkit.create("model", "mlp", dim=3, out_dim=8).skip  # e.g. a classifier's logits
