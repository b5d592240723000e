"""Scale schedules: a list over descending t bands (one entry per sampling step), or a callable of t."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from guidance_helpers import C, Probe

from ddkit import CompositionError, ConfigError
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess
from ddkit_guidance import ClassifierFreeGuidance, GuidanceScale

Y = torch.tensor([0, 1])


def _sections(T: int, n: int) -> list[int]:
    """guided-diffusion's space_timesteps(T, [n]): n steps spread evenly, both ends included."""
    stride = (T - 1) / (n - 1)
    return [round(i * stride) for i in range(n)]


@torch.no_grad()
@pytest.mark.parametrize(
    "use",
    [
        _sections(1000, 10),
        list(range(0, 1000, 100)),  # DDIM "ddim10" stride / leading
        list(range(99, 1000, 100)),  # trailing
    ],
)
def test_list_entry_i_is_used_at_sampling_step_i(use) -> None:
    process = GaussianProcess(np.linspace(1e-4, 0.02, 1000)).respace(use)
    schedule = [float(s) for s in range(10, 0, -1)]  # step 0 (noisiest) gets 10, the last step 1
    probe = Probe()
    d = Denoiser(
        probe,
        GaussianParameterization(clip_denoised=False),
        process,
        guidances=[ClassifierFreeGuidance(schedule)],
        conditioning={"y": Y},
    )
    x = torch.zeros(2, C, 2, 2)
    seen = [float(d.model_output(x, i)[0, 0, 0, 0]) for i in reversed(range(10))]
    assert seen == schedule


def test_list_bands_over_fractional_and_out_of_range_t() -> None:
    scale = GuidanceScale([3.0, 2.0, 1.0], num_timesteps=300)
    t = torch.tensor([299.5, 200.0, 199.99, 100.0, 0.0, 300.0])
    assert scale(t).tolist() == [3.0, 3.0, 2.0, 2.0, 1.0, 3.0]
    with pytest.raises(CompositionError, match=r"spread over timesteps \[0, 300\).*set num_timesteps"):
        scale(torch.tensor([999]))


@torch.no_grad()
def test_callable_of_t_gives_a_per_sample_scale() -> None:
    probe = Probe()
    g = ClassifierFreeGuidance(lambda t: t.double() / 10)
    wrapped = g.wrap_model(probe, mean_channels=C)
    out = wrapped(torch.zeros(2, C, 2, 2), torch.tensor([10, 35]), y=Y)
    assert out[:, 0, 0, 0].tolist() == [1.0, 3.5]
    assert probe.batches == [4]
    constant = ClassifierFreeGuidance(lambda t: 2.0).wrap_model(probe, mean_channels=C)
    assert constant(torch.zeros(2, C, 2, 2), torch.tensor([1, 2]), y=Y)[:, 0, 0, 0].tolist() == [2.0, 2.0]


def test_callable_results_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"must return finite numbers ≥ 0 \(got -1.0\)"):
        GuidanceScale(lambda t: -1.0)(torch.zeros(2))
    with pytest.raises(ConfigError, match=r"a tensor of shape \[2\]"):
        GuidanceScale(lambda t: torch.ones(3))(torch.zeros(2))


def test_a_list_longer_than_the_timesteps_is_refused() -> None:
    with pytest.raises(ConfigError, match="lists 4 scales but 'num_timesteps' is 3"):
        GuidanceScale([1, 2, 3, 4], num_timesteps=3)
