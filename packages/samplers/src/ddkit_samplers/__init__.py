"""ddkit-samplers: DDPM, DDIM (with inversion), PLMS, DPM-Solver++, Euler, Heun and Euler-ancestral.

Each sampler is a :class:`ddkit.sampling.SamplerBase`: built by ``ddkit.create("sampler", name,
**params)``, it walks a :class:`ddkit.denoiser.Denoiser` from noise to data and yields a
:class:`ddkit.SamplerState` per step.
"""

from __future__ import annotations

from ddkit_samplers.ddim import DDIM
from ddkit_samplers.ddpm import DDPM
from ddkit_samplers.dpm_solver import DPMSolverPP
from ddkit_samplers.karras import Euler, EulerAncestral, Heun
from ddkit_samplers.plms import PLMS

__all__ = ["DDIM", "DDPM", "PLMS", "DPMSolverPP", "Euler", "EulerAncestral", "Heun"]
__version__ = "0.1.0"
