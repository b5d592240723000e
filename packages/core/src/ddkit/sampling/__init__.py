"""Sampler-agnostic helpers: spacings, per-sample noise, and the base class samplers share.

Third-party samplers reuse these with exactly the powers of ddkit's own: subclass
:class:`SamplerBase`, implement ``_plan`` and ``_run``, and get validation, x_0 options,
generators, image-to-image, inpainting, callbacks, progress bars and NFE counting.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from ddkit.sampling.base import (
    AUTO_START_SIGNAL,
    DEFAULT_LAMBDA_MIN,
    FEW_STEPS,
    Plan,
    Run,
    SamplerBase,
    SamplingWarning,
    Transition,
    auto_lambda_min,
    check_reduction,
    gaussian_log_density,
    gaussian_log_prob,
    positive_int,
    real,
)
from ddkit.sampling.fitted import fit_spacing
from ddkit.sampling.noise import check_generator, randn
from ddkit.sampling.spacing import (
    SPACINGS,
    Spacing,
    check_spacing,
    continuous_schedule,
    discrete_timesteps,
    karras_sigmas,
    last_timestep_above,
    sigma_to_t,
    sigmas_of,
    t_to_sigma,
)

__all__ = [
    "AUTO_START_SIGNAL",
    "DEFAULT_LAMBDA_MIN",
    "FEW_STEPS",
    "SPACINGS",
    "Plan",
    "Run",
    "SamplerBase",
    "SamplingWarning",
    "Spacing",
    "Transition",
    "auto_lambda_min",
    "check_generator",
    "check_reduction",
    "check_spacing",
    "continuous_schedule",
    "discrete_timesteps",
    "fit_spacing",
    "gaussian_log_density",
    "gaussian_log_prob",
    "karras_sigmas",
    "last_timestep_above",
    "positive_int",
    "randn",
    "real",
    "sigma_to_t",
    "sigmas_of",
    "t_to_sigma",
]
