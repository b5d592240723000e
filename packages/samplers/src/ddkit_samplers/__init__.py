"""ddkit-samplers: DDPM, DDIM, PLMS, iPNDM, DEIS, DPM-Solver++, Euler, Heun, Euler-ancestral, Flow-SDE.

Each sampler is a :class:`ddkit.sampling.SamplerBase`: built by ``ddkit.create("sampler", name,
**params)``, it walks a :class:`ddkit.denoiser.Denoiser` from noise to data and yields a
:class:`ddkit.SamplerState` per step. Submodules are imported on first use, so that listing
plugins (which imports this package for its ``_plugin`` module) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddkit_samplers.ddim import DDIM
    from ddkit_samplers.ddpm import DDPM
    from ddkit_samplers.deis import DEIS
    from ddkit_samplers.dpm_solver import DPMSolverPP
    from ddkit_samplers.flow_sde import FlowSDE
    from ddkit_samplers.ipndm import IPNDM
    from ddkit_samplers.karras import Euler, EulerAncestral, Heun
    from ddkit_samplers.plms import PLMS

__all__ = [
    "DDIM",
    "DDPM",
    "DEIS",
    "IPNDM",
    "PLMS",
    "DPMSolverPP",
    "Euler",
    "EulerAncestral",
    "FlowSDE",
    "Heun",
]
__version__ = "0.1.0"

_WHERE = {
    "DDIM": "ddim",
    "DDPM": "ddpm",
    "DEIS": "deis",
    "IPNDM": "ipndm",
    "PLMS": "plms",
    "DPMSolverPP": "dpm_solver",
    "FlowSDE": "flow_sde",
    "Euler": "karras",
    "EulerAncestral": "karras",
    "Heun": "karras",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"ddkit_samplers.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ddkit_samplers' has no attribute {name!r}")
