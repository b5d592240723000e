"""The pluggy hooks through which every plugin, core included, registers components.

Each hook takes no arguments and returns a list of :class:`ddkit.Record`. A plugin is a
module listed under the ``ddkit`` entry-point group whose functions are decorated with
:data:`ddkit.hookimpl`; a plugin may declare ``DDKIT_PLUGIN_API = "1.0"`` (see
:data:`ddkit.PLUGIN_API_VERSION`).
"""

from __future__ import annotations

import pluggy

from ddkit.records import Record

__all__ = ["HOOK_BY_KIND", "hookimpl", "hookspec"]

PROJECT = "ddkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ddkit_schedules() -> list[Record]:
    """Noise schedules: factories returning a :class:`ddkit.protocols.Schedule`."""
    raise AssertionError("hookspec")


@hookspec
def ddkit_parameterizations() -> list[Record]:
    """Parameterizations: factories returning a :class:`ddkit.protocols.Parameterization`."""
    raise AssertionError("hookspec")


@hookspec
def ddkit_models() -> list[Record]:
    """Networks: factories returning an ``nn.Module`` called as ``model(x, t, **conditioning)``."""
    raise AssertionError("hookspec")


@hookspec
def ddkit_samplers() -> list[Record]:
    """Samplers: factories returning a :class:`ddkit.protocols.Sampler`."""
    raise AssertionError("hookspec")


@hookspec
def ddkit_guidances() -> list[Record]:
    """Guidances: factories returning a :class:`ddkit.protocols.Guidance`."""
    raise AssertionError("hookspec")


@hookspec
def ddkit_resamplers() -> list[Record]:
    """Training-timestep resamplers: factories returning a :class:`ddkit.protocols.TimestepResampler`."""
    raise AssertionError("hookspec")


@hookspec
def ddkit_autoencoders() -> list[Record]:
    """Autoencoders for latent pipelines: factories returning a :class:`ddkit.protocols.Autoencoder`."""
    raise AssertionError("hookspec")


#: Which hook answers for each kind.
HOOK_BY_KIND: dict[str, str] = {
    "schedule": "ddkit_schedules",
    "parameterization": "ddkit_parameterizations",
    "model": "ddkit_models",
    "sampler": "ddkit_samplers",
    "guidance": "ddkit_guidances",
    "resampler": "ddkit_resamplers",
    "autoencoder": "ddkit_autoencoders",
}
