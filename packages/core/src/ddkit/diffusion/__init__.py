"""Gaussian diffusion math: schedules, the forward/reverse process, parameterizations, losses."""

from __future__ import annotations

from ddkit.diffusion.parameterization import PREDICTIONS, VARIANCES, GaussianParameterization
from ddkit.diffusion.process import GaussianProcess

__all__ = ["PREDICTIONS", "VARIANCES", "GaussianParameterization", "GaussianProcess"]
