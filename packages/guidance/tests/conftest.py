"""Fixtures for the guidance unit tests: a short linear-beta chain and an epsilon parameterization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from guidance_helpers import T

from ddkit.diffusion import GaussianParameterization, GaussianProcess

torch.set_num_threads(1)


@pytest.fixture
def process() -> GaussianProcess:
    return GaussianProcess(np.linspace(1e-4, 0.02, T))


@pytest.fixture
def param() -> GaussianParameterization:
    return GaussianParameterization(clip_denoised=False)
