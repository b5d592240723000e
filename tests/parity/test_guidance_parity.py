"""Guidance against guided-diffusion: classifier guidance per step and over whole sampling loops.

The classifier-guidance gradient is guided-diffusion's ``cond_fn`` (scripts/classifier_sample.py):
here the reference side runs that function, written out as the script has it, and ddkit runs
:class:`ddkit_guidance.ClassifierGuidance` on the same classifier. The mean form must match
``condition_mean`` (p_sample), the score form ``condition_score`` (ddim_sample), to 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from torch import Tensor, nn

import ddkit
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess
from ddkit_guidance import ClassifierFreeGuidance, ClassifierGuidance, rescale_guided

pytestmark = pytest.mark.parity

T = 1000
BETAS = np.linspace(1e-4, 0.02, T)
SCALE = 3.0
VARIANCES = {
    "fixed-small": gd.ModelVarType.FIXED_SMALL,
    "fixed-large": gd.ModelVarType.FIXED_LARGE,
    "learned-range": gd.ModelVarType.LEARNED_RANGE,
}
DDPM_FORMS = ("model", "mean", "score")
DDIM_FORMS = ("model", "score")


class TinyModel(nn.Module):
    """A class-conditional eps (+ variance) network on 3×8×8 images."""

    def __init__(self, learn_sigma: bool) -> None:
        super().__init__()
        out = 6 if learn_sigma else 3
        self.conv = nn.Conv2d(3, out, 3, padding=1)
        self.emb = nn.Embedding(5, out)
        self.num_classes = 4

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        h = self.conv(x) * torch.cos(t.float() / T).view(-1, 1, 1, 1) + self.emb(y).view(len(y), -1, 1, 1)
        return torch.tanh(h)


class TinyClassifier(nn.Module):
    """A noisy-image classifier ``(x_t, t) -> logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.t_emb = nn.Linear(1, 8)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = F.silu(self.conv(x) + self.t_emb(t.float().view(-1, 1) / T).view(-1, 8, 1, 1))
        return self.fc(h.mean(dim=(2, 3)))


def make_cond_fn(classifier: nn.Module, classifier_scale: float) -> Callable[..., Tensor]:
    """guided-diffusion scripts/classifier_sample.py's cond_fn, as the script writes it."""

    def cond_fn(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        assert y is not None
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = classifier(x_in, t)
            log_probs = F.log_softmax(logits, dim=-1)
            selected = log_probs[range(len(logits)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * classifier_scale

    return cond_fn


def reference(variance: str, respacing: str | list[int]) -> SpacedDiffusion:
    return SpacedDiffusion(
        use_timesteps=space_timesteps(T, respacing),
        betas=BETAS,
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=VARIANCES[variance],
        loss_type=gd.LossType.MSE,
    )


def setup(variance: str, respacing: str | list[int], forms: tuple[str, ...], clip: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    model = TinyModel(variance == "learned-range").eval()
    classifier = TinyClassifier().eval()
    y = torch.tensor([0, 1, 2, 3])
    ref = reference(variance, respacing)
    param = GaussianParameterization(variance=variance, clip_denoised=clip)
    guidance = ClassifierGuidance(classifier, scale=SCALE)
    denoiser = Denoiser(
        model, param, GaussianProcess(BETAS), guidances=[guidance], sampler_forms=forms, conditioning={"y": y}
    ).respaced(sorted(space_timesteps(T, respacing)))
    return {"model": model, "classifier": classifier, "y": y, "ref": ref, "denoiser": denoiser}


@torch.no_grad()
@pytest.mark.parametrize("variance", ["fixed-small", "fixed-large", "learned-range"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("respacing", [[1000], "ddim25"])
def test_mean_form_step_equals_condition_mean(variance: str, clip: bool, respacing: str | list[int]) -> None:
    s = setup(variance, respacing, DDPM_FORMS, clip)
    assert s["denoiser"].forms == ("mean",)
    ref, x = s["ref"], torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    kwargs = {"y": s["y"]}
    cond_fn = make_cond_fn(s["classifier"], SCALE)
    for i in (ref.num_timesteps - 1, ref.num_timesteps // 2, 1, 0):
        t = torch.full((4,), i)
        out = ref.p_mean_variance(s["model"], x, t, clip_denoised=clip, model_kwargs=kwargs)
        want = ref.condition_mean(cond_fn, out, x, t, model_kwargs=kwargs)
        pred = s["denoiser"](x, i, posterior=True)
        torch.testing.assert_close(pred.mean, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pred.x0, out["pred_xstart"], rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("respacing", [[1000], "ddim25"])
def test_score_form_step_equals_condition_score(clip: bool, respacing: str | list[int]) -> None:
    s = setup("fixed-small", respacing, DDIM_FORMS, clip)
    assert s["denoiser"].forms == ("score",)
    ref, x = s["ref"], torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    kwargs = {"y": s["y"]}
    cond_fn = make_cond_fn(s["classifier"], SCALE)
    for i in (ref.num_timesteps - 1, ref.num_timesteps // 2, 1, 0):
        t = torch.full((4,), i)
        out = ref.p_mean_variance(s["model"], x, t, clip_denoised=clip, model_kwargs=kwargs)
        want = ref.condition_score(cond_fn, out, x, t, model_kwargs=kwargs)
        pred = s["denoiser"](x, i, posterior=True)
        # x_0 = (x_t − sqrt(1 − ᾱ)·eps) / sqrt(ᾱ): float32 rounding of the shifted eps grows by 1/sqrt(ᾱ).
        amplification = float(ref.sqrt_recip_alphas_cumprod[i])
        torch.testing.assert_close(pred.x0, want["pred_xstart"], rtol=1e-5, atol=1e-5 * amplification)
        torch.testing.assert_close(pred.mean, want["mean"], rtol=1e-5, atol=1e-5)
        # condition_score's shifted eps, before it is turned into x_0 (the classifier sees the training
        # timestep). guided-diffusion re-derives eps from x_0, which loses float32 digits near t = 0.
        sigma = (1 - gd._extract_into_tensor(ref.alphas_cumprod, t, x.shape)).sqrt()
        train_t = torch.from_numpy(np.asarray(ref.timestep_map))[t]
        eps = ref._predict_eps_from_xstart(x, t, out["pred_xstart"]) - sigma * cond_fn(x, train_t, **kwargs)
        loss = max(1.0, 1.0 / float(ref.sqrt_recipm1_alphas_cumprod[i]))
        torch.testing.assert_close(pred.eps, eps, rtol=1e-5, atol=1e-5 * loss)


@torch.no_grad()
def test_gradient_equals_cond_fn_at_mapped_timesteps() -> None:
    """Under respacing the classifier sees the training timestep, as guided-diffusion's wrapped cond_fn."""
    torch.manual_seed(0)
    classifier = TinyClassifier()
    seen: list[Tensor] = []

    def recording(x: Tensor, t: Tensor) -> Tensor:
        seen.append(t)
        return classifier(x, t)

    x, y = torch.randn(4, 3, 8, 8), torch.tensor([3, 2, 1, 0])
    denoiser = Denoiser(
        TinyModel(False),
        GaussianParameterization(),
        GaussianProcess(BETAS),
        guidances=[ClassifierGuidance(recording, scale=SCALE)],
        sampler_forms=DDPM_FORMS,
        conditioning={"y": y},
    ).respaced(sorted(space_timesteps(T, "ddim25")))
    denoiser(x, 10, posterior=True)
    assert seen[-1].tolist() == [400] * 4
    want = make_cond_fn(classifier, SCALE)(x, torch.full((4,), 400), y=y)
    got = ClassifierGuidance(classifier, scale=SCALE).gradient(x, torch.full((4,), 400), y=y)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_rescale_equals_diffusers_rescale_noise_cfg() -> None:
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    gen = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    guided = uncond + 7.5 * (cond - uncond)
    for phi in (0.0, 0.3, 0.7, 1.0):
        want = rescale_noise_cfg(guided, cond, guidance_rescale=phi)
        torch.testing.assert_close(rescale_guided(guided, cond, phi), want, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_classifier_free_equals_glide_model_fn() -> None:
    """GLIDE's model_fn (eps guided on 3 channels, the rest from the batch), on its conditional half."""
    torch.manual_seed(0)
    model = TinyModel(True)
    x, y, t = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), torch.full((4,), 500)

    def glide_model_fn(x_t: Tensor, ts: Tensor, **kwargs: Any) -> Tensor:
        half = x_t[: len(x_t) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = model(combined, ts, **kwargs)
        eps, rest = model_out[:, :3], model_out[:, 3:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + 4.0 * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)

    want = glide_model_fn(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, torch.full_like(y, 4)]))[:4]
    got = ClassifierFreeGuidance(4.0).wrap_model(model, mean_channels=3)(x, t, y=y)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _loop_setup(variance: str, sampler: Any) -> tuple[TinyModel, TinyClassifier, Tensor, Denoiser]:
    torch.manual_seed(0)
    model = TinyModel(variance == "learned-range").eval()
    classifier = TinyClassifier().eval()
    y = torch.tensor([0, 1, 2, 3])
    denoiser = Denoiser(
        model,
        GaussianParameterization(variance=variance, clip_denoised=True),
        GaussianProcess(BETAS),
        guidances=[ClassifierGuidance(classifier, scale=SCALE)],
        sampler_forms=sampler.guidance_forms,
        conditioning={"y": y},
    )
    return model, classifier, y, denoiser


@torch.no_grad()
@pytest.mark.parametrize("variance", ["fixed-small", "learned-range"])
def test_ddpm_with_classifier_guidance_equals_p_sample_loop(variance: str) -> None:
    """The mean form under ``ddpm``: the same model, cond_fn and noise (global RNG, as guided-diffusion)."""
    sampler = ddkit.create("sampler", "ddpm", steps=50, spacing="sections", lambda_min=None)
    model, classifier, y, denoiser = _loop_setup(variance, sampler)
    assert denoiser.forms == ("mean",)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)
    got = sampler.sample(denoiser, x_T)
    torch.manual_seed(7)
    want = reference(variance, [50]).p_sample_loop(
        model,
        (4, 3, 8, 8),
        noise=x_T,
        clip_denoised=True,
        cond_fn=make_cond_fn(classifier, SCALE),
        model_kwargs={"y": y},
        device=torch.device("cpu"),
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, sampler.sample(denoiser.with_process(denoiser.process, guidances=()), x_T))


@torch.no_grad()
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_classifier_guidance_equals_ddim_sample_loop(eta: float) -> None:
    """The score form under ``ddim`` ("ddim25" stride), deterministic and with eta = 1."""
    sampler = ddkit.create("sampler", "ddim", steps=25, eta=eta, lambda_min=None)
    model, classifier, y, denoiser = _loop_setup("fixed-small", sampler)
    assert denoiser.forms == ("score",)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(8)
    got = sampler.sample(denoiser, x_T)
    torch.manual_seed(8)
    want = reference("fixed-small", "ddim25").ddim_sample_loop(
        model,
        (4, 3, 8, 8),
        noise=x_T,
        clip_denoised=True,
        cond_fn=make_cond_fn(classifier, SCALE),
        model_kwargs={"y": y},
        device=torch.device("cpu"),
        eta=eta,
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
