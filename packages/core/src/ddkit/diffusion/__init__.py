"""Gaussian diffusion math: schedules, the forward/reverse process, parameterizations, losses.

One concept per module: :mod:`~ddkit.diffusion.schedules` (betas and continuous ᾱ(t)),
:mod:`~ddkit.diffusion.process` (the chain's tables, q and the posterior),
:mod:`~ddkit.diffusion.parameterization` (network output → prediction),
:mod:`~ddkit.diffusion.respace` (section strings), :mod:`~ddkit.diffusion.likelihood`
(the variational bound), :mod:`~ddkit.diffusion.losses` (training objectives) and
:mod:`~ddkit.diffusion.resample` (training-timestep samplers).
"""

from __future__ import annotations

from ddkit.diffusion.losses import LOSSES, training_losses
from ddkit.diffusion.parameterization import PREDICTIONS, VARIANCES, GaussianParameterization, p_mean_variance
from ddkit.diffusion.process import GaussianProcess, validate_betas
from ddkit.diffusion.resample import LossSecondMomentResampler, UniformResampler
from ddkit.diffusion.respace import space_timesteps
from ddkit.diffusion.schedules import NoiseSchedule

__all__ = [
    "LOSSES",
    "PREDICTIONS",
    "VARIANCES",
    "GaussianParameterization",
    "GaussianProcess",
    "LossSecondMomentResampler",
    "NoiseSchedule",
    "UniformResampler",
    "p_mean_variance",
    "space_timesteps",
    "training_losses",
    "validate_betas",
]
