"""ddkit's sampler conformance kit, run over UniPC in each of its modes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ddkit.testing import SamplerConformance


class TestUniPC(SamplerConformance):
    sampler_name = "unipc"


class TestUniPCOrder3(SamplerConformance):
    sampler_name = "unipc"
    sampler_params: ClassVar[Mapping[str, Any]] = {"order": 3}


class TestUniPCBh1(SamplerConformance):
    sampler_name = "unipc"
    sampler_params: ClassVar[Mapping[str, Any]] = {"variant": "bh1", "final_sigma": "min"}


class TestUniPCQualifiedName(SamplerConformance):
    """The same checks through the ``distribution:name`` spelling that resolves name conflicts."""

    sampler_name = "ddkit-sampler-example:unipc"
    sampler_params: ClassVar[Mapping[str, Any]] = {"order": 1, "corrector": False}
    accuracy_steps = 100  # order 1 without its corrector is DDIM: first order
