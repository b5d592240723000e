"""Losses: min-SNR-γ against Hang et al.'s formulas by hand, the hybrid objective, the bound, bad names."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ddkit.diffusion import losses, parameterization, schedules
from ddkit.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl
from ddkit.errors import ConfigError

torch.set_num_threads(1)

PROCESS = schedules.linear(100).process()


def close(actual: Tensor, expected: Tensor, tol: float = 1e-6) -> None:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    bad = diff > tol * (1 + expected.double().abs())
    assert not bool(bad.any()), f"max abs diff {diff.max():.3g}"


class Affine(nn.Module):
    """out = a·x + b·(t/100), channels doubled for learned variances."""

    def __init__(self, channels: int, learned: bool) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.full((channels * (2 if learned else 1),), 0.5))
        self.b = nn.Parameter(torch.full_like(self.a, 0.1))
        self.learned = learned

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = torch.cat([x, x], dim=1) if self.learned else x
        view = (1, -1, *([1] * (x.ndim - 2)))
        return self.a.view(view) * h + self.b.view(view) * (t.float() / 100).view(-1, *([1] * (x.ndim - 1)))


def batch(seed: int = 0, shape: tuple[int, ...] = (4, 3, 4, 4)) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen) * 2 - 1
    noise = torch.randn(shape, generator=gen)
    return x0, noise, torch.tensor([0, 10, 50, 99])[: shape[0]]


def snr_by_hand(step: int) -> float:
    ab = 1.0
    for beta in PROCESS.betas[: step + 1]:
        ab *= 1.0 - float(beta)
    return ab / (1.0 - ab)


# -- min-SNR-γ (Hang et al. 2023, Eq. 7 and its eps / v forms) ------------------------------


@pytest.mark.parametrize("gamma", [5.0, 1.0, 0.3])
def test_min_snr_weights_by_hand(gamma: float) -> None:
    t = torch.tensor([0, 10, 50, 99])
    snr = [snr_by_hand(int(s)) for s in t]
    expected = {
        "epsilon": [min(s, gamma) / s for s in snr],
        "x0": [min(s, gamma) for s in snr],
        "v": [min(s, gamma) / (s + 1) for s in snr],
    }
    for prediction, want in expected.items():
        got = losses.min_snr_weight(PROCESS, prediction, t, gamma)
        assert got.dtype == torch.float64
        for g, w in zip(got.tolist(), want):
            assert math.isclose(g, w, rel_tol=1e-9), (prediction, g, w)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("variance", ["fixed-small", "learned-range"])
def test_min_snr_weighting_in_training_losses(prediction: str, variance: str) -> None:
    x0, noise, t = batch()
    param = parameterization.GaussianParameterization(prediction, variance)
    model = Affine(3, param.learned_variance)
    plain = losses.training_losses(PROCESS, param, model, x0, t, noise=noise, loss="rescaled-mse")
    weighted = losses.training_losses(
        PROCESS, param, model, x0, t, noise=noise, loss="rescaled-mse", min_snr_gamma=5.0
    )
    weight = torch.tensor([min(s, 5.0) for s in (snr_by_hand(int(i)) for i in t)], dtype=torch.float64)
    snr = torch.tensor([snr_by_hand(int(i)) for i in t], dtype=torch.float64)
    weight = {"epsilon": weight / snr, "x0": weight, "v": weight / (snr + 1)}[prediction]
    close(weighted["snr_weight"], weight.float())
    close(weighted["mse"], plain["mse"])  # reported unweighted
    close(weighted["loss"], plain["mse"] * weight.float() + plain.get("vb", torch.zeros(4)))


def test_min_snr_on_zero_terminal_snr_is_finite() -> None:
    process = schedules.linear(100, zero_terminal_snr=True).process()
    t = torch.tensor([0, 99])
    assert losses.min_snr_weight(process, "epsilon", t, 5.0).tolist()[1] == 1.0
    assert losses.min_snr_weight(process, "v", t, 5.0).tolist()[1] == 0.0
    x0, noise, _ = batch(shape=(2, 3, 4, 4))
    out = losses.training_losses(
        process, parameterization.v(), Affine(3, False), x0, t, noise=noise, min_snr_gamma=5.0
    )
    assert torch.isfinite(out["loss"]).all()


def test_min_snr_bad_input() -> None:
    x0, _noise, t = batch()
    model = Affine(3, False)
    with pytest.raises(ConfigError, match="positive number"):
        losses.training_losses(PROCESS, parameterization.epsilon(), model, x0, t, min_snr_gamma=0.0)
    with pytest.raises(ConfigError, match="not 'previous-x'"):
        losses.training_losses(PROCESS, parameterization.previous_x(), model, x0, t, min_snr_gamma=5.0)
    with pytest.raises(ConfigError, match="loss 'kl' has none"):
        losses.training_losses(
            PROCESS, parameterization.epsilon(), model, x0, t, loss="kl", min_snr_gamma=5.0
        )


# -- objectives -------------------------------------------------------------------------


def test_v_loss_by_hand() -> None:
    x0, noise, t = batch()
    model = Affine(3, False)
    out = losses.training_losses(PROCESS, parameterization.v(), model, x0, t, noise=noise)
    ab = torch.tensor([1 / (1 + 1 / snr_by_hand(int(i))) for i in t]).view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    close(out["loss"], ((model(x_t, t) - target) ** 2).mean(dim=(1, 2, 3)), 1e-5)
    assert set(out) == {"loss", "mse"}


def test_hybrid_trains_only_the_variance_through_vb() -> None:
    x0, noise, t = batch()
    model = Affine(3, True)
    param = parameterization.epsilon("learned-range")
    out = losses.training_losses(PROCESS, param, model, x0, t, noise=noise, loss="hybrid")
    assert set(out) == {"loss", "mse", "vb"}
    rescaled = losses.training_losses(PROCESS, param, model, x0, t, noise=noise, loss="rescaled-mse")
    close(out["loss"], rescaled["loss"], 0)
    plain = losses.training_losses(PROCESS, param, model, x0, t, noise=noise, loss="mse")
    close(rescaled["vb"], plain["vb"] * (PROCESS.num_timesteps / 1000))
    # The bound's term reaches only the variance channels (the mean part is detached).
    out["vb"].sum().backward()
    assert model.a.grad is not None
    assert torch.all(model.a.grad[:3] == 0)
    assert torch.any(model.a.grad[3:] != 0)
    with pytest.raises(ConfigError, match="use loss 'mse'"):
        losses.training_losses(PROCESS, parameterization.epsilon(), Affine(3, False), x0, t, loss="hybrid")


def test_kl_losses() -> None:
    x0, noise, t = batch()
    model = Affine(3, True)
    param = parameterization.x0("learned")
    kl = losses.training_losses(PROCESS, param, model, x0, t, noise=noise, loss="kl")
    rkl = losses.training_losses(PROCESS, param, model, x0, t, noise=noise, loss="rescaled-kl")
    assert set(kl) == {"loss"}
    close(rkl["loss"], kl["loss"] * 100)


def test_unknown_loss_name() -> None:
    assert losses.LOSSES == ("mse", "rescaled-mse", "kl", "rescaled-kl", "hybrid")
    assert losses.check_loss("kl") == "kl"
    with pytest.raises(
        ConfigError, match=r"'loss' must be one of .* \(got 'rescaled_mse'\); did you mean 'rescaled-mse'"
    ):
        losses.check_loss("rescaled_mse")
    x0, _noise, t = batch()
    with pytest.raises(ConfigError, match="got 'l1'"):
        losses.training_losses(PROCESS, parameterization.epsilon(), Affine(3, False), x0, t, loss="l1")


def test_weighted_mean() -> None:
    per_sample = torch.tensor([1.0, 2.0, 3.0])
    assert losses.weighted_mean(per_sample).item() == 2.0
    assert losses.weighted_mean(per_sample, torch.tensor([3.0, 0.0, 0.0])).item() == 1.0


# -- the variational bound --------------------------------------------------------------


def test_normal_kl_matches_closed_form() -> None:
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.0, 2.0])
    lv1, lv2 = torch.tensor([-1.0, 0.5]), torch.tensor([0.2, -0.3])
    s1, s2 = (0.5 * lv1).exp(), (0.5 * lv2).exp()
    expected = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    close(normal_kl(m1, lv1, m2, lv2), expected)
    close(normal_kl(m1, lv1, 0.0, 0.0), 0.5 * (-1 - lv1 + lv1.exp() + m1**2))
    with pytest.raises(TypeError, match="at least one Tensor"):
        normal_kl(0.0, 0.0, 0.0, 0.0)


def test_discretized_likelihood_is_a_distribution_over_pixels() -> None:
    # Summed over the 256 pixel values the bins telescope to 1, whatever the mean and scale.
    x = (torch.arange(256, dtype=torch.float64) / 127.5 - 1).view(1, 256)
    for mean, log_scale in [(0.0, -2.0), (0.4, -4.0), (-0.9, 0.0)]:
        logp = discretized_gaussian_log_likelihood(
            x, means=torch.full_like(x, mean), log_scales=torch.full_like(x, log_scale)
        )
        assert math.isclose(logp.exp().sum().item(), 1.0, rel_tol=1e-9)
    with pytest.raises(ValueError, match="share a shape"):
        discretized_gaussian_log_likelihood(x, means=x[:, :3], log_scales=x)


def test_calc_bpd_loop_shapes_and_total() -> None:
    process = schedules.cosine(20).process()
    x0, _, _ = batch(shape=(2, 3, 4, 4))
    param = parameterization.epsilon("learned-range")
    model = Affine(3, True)
    gen = torch.Generator().manual_seed(0)
    out = losses.calc_bpd_loop(process, param, model, x0, generator=gen)
    assert out["vb"].shape == out["mse"].shape == out["xstart_mse"].shape == (2, 20)
    close(out["total_bpd"], out["vb"].sum(dim=1) + out["prior_bpd"])
    assert torch.all(out["prior_bpd"] >= 0)
    assert torch.all(out["vb"][:, :-1] >= 0)
    again = losses.calc_bpd_loop(process, param, model, x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["total_bpd"], out["total_bpd"])
