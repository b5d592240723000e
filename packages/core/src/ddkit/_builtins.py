"""Core's own components, registered through the same ``ddkit`` entry-point group as any plugin.

Factories are "module:attribute" strings, so listing them imports nothing beyond this module.
"""

from __future__ import annotations

from ddkit.hookspecs import hookimpl
from ddkit.records import Record

DDKIT_PLUGIN_API = "1.0"

_SCHEDULES = "ddkit.diffusion.schedules"
_PARAMS = "ddkit.diffusion.parameterization"
_RESAMPLE = "ddkit.diffusion.resample"
_PATHS = "ddkit.diffusion.paths"
_EDM = (
    "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, arXiv:2206.00364"
)
_DDPM = "Ho et al. 2020, Denoising Diffusion Probabilistic Models, arXiv:2006.11239"
_IDDPM = "Nichol & Dhariwal 2021, Improved Denoising Diffusion Probabilistic Models, arXiv:2102.09672"


@hookimpl
def ddkit_schedules() -> list[Record]:
    return [
        Record(
            "linear",
            f"{_SCHEDULES}:linear",
            "Linear betas 1e-4..0.02, scaled by 1000/T (DDPM).",
            paper=_DDPM,
        ),
        Record(
            "cosine",
            f"{_SCHEDULES}:cosine",
            "ᾱ(t) = cos²((t + 0.008)/1.008 · π/2), betas capped at 0.999.",
            paper=_IDDPM,
        ),
        Record(
            "scaled-linear",
            f"{_SCHEDULES}:scaled_linear",
            "Betas linear in sqrt space, 0.00085..0.012 (latent diffusion).",
            paper="Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models, "
            "arXiv:2112.10752",
        ),
        Record(
            "sigmoid",
            f"{_SCHEDULES}:sigmoid",
            "ᾱ(t) from a shifted, scaled logistic with start, end and tau.",
            paper="Chen 2023, On the Importance of Noise Scheduling for Diffusion Models, arXiv:2301.10972",
        ),
        Record(
            "explicit",
            f"{_SCHEDULES}:explicit",
            "A schedule given by its betas, each in (0, 1].",
        ),
        Record(
            "rectified-flow",
            f"{_PATHS}:rectified_flow",
            "Flow matching path α = 1 − t, σ = t, with SD3's time shift; the network gets t·timesteps.",
            paper="Liu et al. 2022, Flow Straight and Fast, arXiv:2209.03003; Esser et al. 2024 (SD3), "
            "arXiv:2403.03206",
        ),
        Record(
            "edm",
            f"{_PATHS}:edm",
            "Variance-exploding path α = 1, σ ∈ [sigma_min, sigma_max]; the network gets σ.",
            paper=_EDM,
        ),
        Record(
            "vp-continuous",
            f"{_PATHS}:vp_continuous",
            "Continuous VP SDE path, β(t) linear from beta_min to beta_max.",
            paper="Song et al. 2021, Score-Based Generative Modeling through SDEs, arXiv:2011.13456",
        ),
    ]


@hookimpl
def ddkit_parameterizations() -> list[Record]:
    return [
        Record(
            "epsilon",
            f"{_PARAMS}:epsilon",
            "The network predicts the added noise.",
            paper=_DDPM,
        ),
        Record(
            "x0",
            f"{_PARAMS}:x0",
            "The network predicts the clean sample x_0.",
            paper=_DDPM,
        ),
        Record(
            "previous-x",
            f"{_PARAMS}:previous_x",
            "The network predicts the mean of x_{t-1}.",
            paper=_DDPM,
        ),
        Record(
            "v",
            f"{_PARAMS}:v",
            "The network predicts v = sqrt(ᾱ)·eps − sqrt(1 − ᾱ)·x_0.",
            paper="Salimans & Ho 2022, Progressive Distillation for Fast Sampling of Diffusion Models, "
            "arXiv:2202.00512",
        ),
        Record(
            "velocity",
            f"{_PARAMS}:velocity",
            "The network predicts a path's velocity dα/dt·x_0 + dσ/dt·ε (ε − x_0 on rectified flow).",
            paper="Lipman et al. 2022, Flow Matching for Generative Modeling, arXiv:2210.02747",
        ),
        Record(
            "edm",
            f"{_PARAMS}:edm",
            "EDM's preconditioning (c_skip, c_out, c_in, c_noise) and loss weighting, sigma_data 0.5.",
            paper=_EDM,
        ),
    ]


@hookimpl
def ddkit_resamplers() -> list[Record]:
    return [
        Record(
            "uniform",
            f"{_RESAMPLE}:UniformResampler",
            "Training steps drawn uniformly, weight 1.",
            paper=_DDPM,
        ),
        Record(
            "loss-second-moment",
            f"{_RESAMPLE}:LossSecondMomentResampler",
            "Steps drawn by the RMS of their last 10 losses, importance-weighted.",
            paper=_IDDPM,
        ),
        Record(
            "logit-normal",
            f"{_RESAMPLE}:LogitNormalResampler",
            "Continuous time t = sigmoid(N(mean, std²)), weight 1 (SD3's timestep density).",
            paper="Esser et al. 2024, Scaling Rectified Flow Transformers, arXiv:2403.03206",
        ),
        Record(
            "log-normal",
            f"{_RESAMPLE}:LogNormalResampler",
            "Noise level ln σ ~ N(mean, std²), weight 1 (EDM's training density).",
            paper=_EDM,
        ),
    ]


@hookimpl
def ddkit_autoencoders() -> list[Record]:
    return [
        Record(
            "pixel-shuffle",
            "ddkit.autoencoders:pixel_shuffle",
            "Parameter-free, exactly invertible space-to-depth (factor² channels per patch), for latent "
            "pipelines with core alone.",
        ),
    ]
