"""ddkit: a modular, plugin-based toolkit for denoising diffusion models.

The registry (``names``, ``create``, ``describe``) builds components by name from any
installed plugin; :class:`Pipeline` composes them; :class:`Trainer` trains them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ddkit.errors import (
    CompositionError,
    ConfigError,
    DdkitError,
    IncompatiblePluginError,
    InputError,
    InputTypeError,
    IntegrityError,
    NonFiniteError,
    PluginConflictError,
    UnknownPluginError,
)
from ddkit.hookspecs import hookimpl
from ddkit.records import KINDS, Record
from ddkit.registry import PLUGIN_API_VERSION, create, describe, names

if TYPE_CHECKING:
    from ddkit.pipeline import Pipeline
    from ddkit.prediction import Prediction
    from ddkit.protocols import (
        Autoencoder,
        Guidance,
        ModelFn,
        ModelSpec,
        Parameterization,
        Sampler,
        SamplerState,
        Schedule,
        TimestepResampler,
        model_spec,
    )
    from ddkit.sampling import SamplingWarning, fit_spacing
    from ddkit.training import Trainer
    from ddkit.trajectory import Trajectory

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "PLUGIN_API_VERSION",
    "Autoencoder",
    "CompositionError",
    "ConfigError",
    "DdkitError",
    "Guidance",
    "IncompatiblePluginError",
    "InputError",
    "InputTypeError",
    "IntegrityError",
    "ModelFn",
    "ModelSpec",
    "NonFiniteError",
    "Parameterization",
    "Pipeline",
    "PluginConflictError",
    "Prediction",
    "Record",
    "Sampler",
    "SamplerState",
    "SamplingWarning",
    "Schedule",
    "TimestepResampler",
    "Trainer",
    "Trajectory",
    "UnknownPluginError",
    "create",
    "describe",
    "fit_spacing",
    "hookimpl",
    "model_spec",
    "names",
]

# Imported on first use: these pull in torch, which `ddkit --help` and `ddkit plugins` never need.
_LAZY = {
    "Pipeline": "ddkit.pipeline",
    "SamplingWarning": "ddkit.sampling",
    "fit_spacing": "ddkit.sampling",
    "Trainer": "ddkit.training",
    "Prediction": "ddkit.prediction",
    "Trajectory": "ddkit.trajectory",
    **dict.fromkeys(
        (
            "Autoencoder",
            "Guidance",
            "ModelFn",
            "ModelSpec",
            "Parameterization",
            "Sampler",
            "SamplerState",
            "Schedule",
            "TimestepResampler",
            "model_spec",
        ),
        "ddkit.protocols",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ddkit' has no attribute {name!r}")
