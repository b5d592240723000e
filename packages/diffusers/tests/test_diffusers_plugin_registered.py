"""ddkit-diffusers registers its model and autoencoder through the ``ddkit`` entry-point group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from ddkit.testing import PluginRegistration


class TestDiffusersPluginRegistered(PluginRegistration):
    distribution = "ddkit-diffusers"
    names: ClassVar[Mapping[str, Sequence[str]] | None] = {
        "model": ["diffusers"],
        "autoencoder": ["diffusers-vae"],
    }
