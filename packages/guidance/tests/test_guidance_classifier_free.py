"""Classifier-free guidance: scale 1/0, one 2B forward, variance channels, null values, rescale, interval."""

from __future__ import annotations

import math

import pytest
import torch
from guidance_helpers import C, ClassNet, Probe, ancestral, make_x

from ddkit import CompositionError, ConfigError, Guidance
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization
from ddkit_guidance import ClassifierFreeGuidance, rescale_guided

Y = torch.tensor([0, 1, 2, 3])


def test_is_a_guidance_in_the_model_form() -> None:
    g = ClassifierFreeGuidance(2.0)
    assert isinstance(g, Guidance)
    assert g.forms == ("model",)


@torch.no_grad()
def test_scale_one_is_conditional_sampling(process, param) -> None:
    model = ClassNet()
    x = make_x()
    guided = Denoiser(model, param, process, guidances=[ClassifierFreeGuidance(1.0)], conditioning={"y": Y})
    plain = Denoiser(model, param, process, conditioning={"y": Y})
    assert torch.equal(ancestral(guided, x), ancestral(plain, x))
    # A per-sample scale of 1 (no shortcut) gives the conditional prediction up to rounding.
    ones = ClassifierFreeGuidance(lambda t: torch.ones(t.shape[0]))
    d = Denoiser(model, param, process, guidances=[ones], conditioning={"y": Y})
    torch.testing.assert_close(d(x, 10).eps, plain(x, 10).eps, rtol=0, atol=1e-6)


@torch.no_grad()
def test_scale_zero_is_unconditional_sampling(process, param) -> None:
    model = ClassNet()
    x = make_x()
    guided = Denoiser(model, param, process, guidances=[ClassifierFreeGuidance(0.0)], conditioning={"y": Y})
    uncond = Denoiser(model, param, process, conditioning={"y": torch.full_like(Y, 4)})
    torch.testing.assert_close(ancestral(guided, x), ancestral(uncond, x), rtol=0, atol=1e-6)


@torch.no_grad()
def test_one_model_call_per_step_with_a_2b_batch(process, param) -> None:
    model = ClassNet()
    d = Denoiser(model, param, process, guidances=[ClassifierFreeGuidance(3.0)], conditioning={"y": Y})
    ancestral(d, make_x())
    assert [c["batch"] for c in model.calls] == [8] * process.num_timesteps
    first = model.calls[0]["y"]
    assert torch.equal(first, torch.tensor([0, 1, 2, 3, 4, 4, 4, 4]))  # [conditional; null]
    assert d.nfe == process.num_timesteps


@torch.no_grad()
def test_guided_prediction_matches_the_formula(process, param) -> None:
    model = ClassNet()
    x, w = make_x(), 2.5
    d = Denoiser(model, param, process, guidances=[ClassifierFreeGuidance(w)], conditioning={"y": Y})
    t = torch.full((4,), 7)
    cond, uncond = model(x, t, y=Y), model(x, t, y=torch.full_like(Y, 4))
    torch.testing.assert_close(d.model_output(x, 7), uncond + w * (cond - uncond), rtol=0, atol=1e-6)


@torch.no_grad()
def test_variance_channels_come_from_the_conditional_half(process) -> None:
    model = ClassNet(learn_sigma=True)
    param = GaussianParameterization(variance="learned-range", clip_denoised=False)
    d = Denoiser(model, param, process, guidances=[ClassifierFreeGuidance(4.0)], conditioning={"y": Y})
    x, t = make_x(), torch.full((4,), 20)
    out = d.model_output(x, 20)
    cond, uncond = model(x, t, y=Y), model(x, t, y=torch.full_like(Y, 4))
    assert out.shape == (4, 2 * C, 4, 4)
    assert not torch.allclose(cond[:, C:], uncond[:, C:])
    torch.testing.assert_close(out[:, C:], cond[:, C:], rtol=0, atol=0)
    torch.testing.assert_close(
        out[:, :C], uncond[:, :C] + 4.0 * (cond[:, :C] - uncond[:, :C]), rtol=0, atol=1e-6
    )


def _null_seen(model: ClassNet, process, param, **kwargs) -> list[int]:
    d = Denoiser(
        model, param, process, guidances=[ClassifierFreeGuidance(2.0, **kwargs)], conditioning={"y": Y}
    )
    d.model_output(make_x(), 3)
    return model.calls[-1]["y"][4:].tolist()


@torch.no_grad()
def test_null_class_default_explicit_and_from_spec(process, param) -> None:
    assert _null_seen(ClassNet(num_classes=4), process, param) == [4] * 4  # num_classes: the extra row
    assert _null_seen(ClassNet(num_classes=4, null_class=0), process, param) == [0] * 4  # spec.null_class
    assert _null_seen(ClassNet(num_classes=4), process, param, null_class=2) == [2] * 4  # explicit wins


def test_missing_null_class_fails_before_sampling(process, param) -> None:
    model = ClassNet(num_classes=None)
    # ClassNet takes **extra, so other conditioning may carry the condition: named at the first call.
    d = Denoiser(model, param, process, guidances=[ClassifierFreeGuidance(2.0)], conditioning={"y": Y})
    with pytest.raises(CompositionError, match="neither null_class nor num_classes; pass null_class="):
        d.model_output(make_x(), 5)
    assert model.calls == []
    with pytest.raises(CompositionError, match="null_class=9 is outside the model's labels"):
        Denoiser(
            ClassNet(),
            param,
            process,
            guidances=[ClassifierFreeGuidance(2.0, null_class=9)],
            conditioning={"y": Y},
        )


def test_nothing_to_drop_fails_before_sampling(process, param) -> None:
    with pytest.raises(CompositionError, match="needs a condition to drop"):
        Denoiser(ClassNet(), param, process, guidances=[ClassifierFreeGuidance(2.0)])
    with pytest.raises(CompositionError, match="needs a condition to drop"):
        Denoiser(
            ClassNet(), param, process, guidances=[ClassifierFreeGuidance(2.0)], conditioning={"y": None}
        )
    # A null value for a keyword the call does not pass is named at the first model call.
    d = Denoiser(
        ClassNet(),
        param,
        process,
        guidances=[ClassifierFreeGuidance(2.0, null_cond={"context": torch.zeros(5)})],
        conditioning={"y": Y},
    )
    with pytest.raises(CompositionError, match=r"unconditional values are given for \['context'\]"):
        d.model_output(make_x(), 5)


@torch.no_grad()
@pytest.mark.parametrize("null_shape", [(5,), (1, 5), (4, 5)])
def test_null_embedding_for_other_conditioning(process, param, null_shape) -> None:
    model = ClassNet(num_classes=None)
    context = torch.randn(4, 5)
    null = torch.full(null_shape, -7.0)
    g = ClassifierFreeGuidance(2.0, null_cond={"context": null})
    d = Denoiser(model, param, process, guidances=[g], conditioning={"context": context})
    d.model_output(make_x(), 5)
    seen = model.calls[-1]["context"]
    assert torch.equal(seen[:4], context)
    assert torch.equal(seen[4:], torch.full((4, 5), -7.0))


def test_null_embedding_of_the_wrong_shape_is_named(process, param) -> None:
    g = ClassifierFreeGuidance(2.0, null_cond={"context": torch.zeros(3)})
    d = Denoiser(
        ClassNet(num_classes=None), param, process, guidances=[g], conditioning={"context": torch.ones(4, 5)}
    )
    with pytest.raises(CompositionError, match=r"unconditional value of 'context' has shape \(3,\)"):
        d.model_output(make_x(), 5)


def test_rescale_matches_the_paper_by_hand() -> None:
    gen = torch.Generator().manual_seed(1)
    cond, guided = torch.randn(2, 3, 4, 4, generator=gen), 3 * torch.randn(2, 3, 4, 4, generator=gen)
    phi = 0.7
    out = rescale_guided(guided, cond, phi)
    for b in range(2):
        n = cond[b].numel()
        std_c = math.sqrt(((cond[b] - cond[b].mean()) ** 2).sum().item() / (n - 1))
        std_g = math.sqrt(((guided[b] - guided[b].mean()) ** 2).sum().item() / (n - 1))
        want = phi * guided[b] * (std_c / std_g) + (1 - phi) * guided[b]
        torch.testing.assert_close(out[b], want, rtol=1e-5, atol=1e-6)
    assert torch.equal(rescale_guided(guided, cond, 0.0), guided)
    # φ = 1 gives the conditional prediction's std exactly.
    full = rescale_guided(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5, atol=0)


@torch.no_grad()
def test_rescale_inside_the_guidance(process, param) -> None:
    model = ClassNet()
    x, t = make_x(), torch.full((4,), 30)
    d = Denoiser(
        model, param, process, guidances=[ClassifierFreeGuidance(5.0, rescale=0.5)], conditioning={"y": Y}
    )
    cond, uncond = model(x, t, y=Y), model(x, t, y=torch.full_like(Y, 4))
    want = rescale_guided(uncond + 5.0 * (cond - uncond), cond, 0.5)
    torch.testing.assert_close(d.model_output(x, 30), want, rtol=0, atol=1e-6)


@torch.no_grad()
def test_interval_guides_only_inside_and_skips_the_unconditional_half(process, param) -> None:
    model = ClassNet()
    g = ClassifierFreeGuidance(3.0, interval=(10, 29))
    d = Denoiser(model, param, process, guidances=[g], conditioning={"y": Y})
    ancestral(d, make_x())
    batches = {int(c["t"][0]): c["batch"] for c in model.calls}
    assert all(batches[t] == (8 if 10 <= t <= 29 else 4) for t in batches)
    x = make_x()
    plain = Denoiser(model, param, process, conditioning={"y": Y})
    assert torch.equal(d.model_output(x, 40), plain.model_output(x, 40))
    assert torch.equal(d.model_output(x, 9), plain.model_output(x, 9))
    assert not torch.allclose(d.model_output(x, 10), plain.model_output(x, 10))


@torch.no_grad()
def test_interval_with_per_sample_timesteps_runs_only_the_guided_samples_twice() -> None:
    probe = Probe()
    wrapped = ClassifierFreeGuidance(3.0, interval=(10, 20)).wrap_model(probe, mean_channels=C)
    x = torch.zeros(4, C, 2, 2)
    out = wrapped(x, torch.tensor([5, 10, 20, 30]), y=Y)
    assert probe.batches == [6]  # 4 conditional + 2 unconditional
    assert out[:, 0, 0, 0].tolist() == [1.0, 3.0, 3.0, 1.0]


def test_parameters_are_validated() -> None:
    cases = [
        ({"scale": -1}, r"'scale' must be a finite number ≥ 0 \(got -1\)"),
        ({"scale": float("nan")}, r"'scale' must be a finite number ≥ 0 \(got nan\)"),
        ({"scale": float("inf")}, r"'scale' must be a finite number ≥ 0 \(got inf\)"),
        ({"scale": True}, r"'scale' must be a finite number ≥ 0 \(got True\)"),
        ({"scale": "3"}, r"'scale' must be a number, a list of numbers or a callable \(got '3'\)"),
        ({"scale": [1, -2]}, r"'scale\[1\]' must be a finite number ≥ 0 \(got -2\)"),
        ({"scale": []}, r"'scale' as a list must hold at least one scale"),
        ({"rescale": 1.5}, r"'rescale' must be a number in \[0, 1\] \(got 1.5\)"),
        ({"interval": (30, 10)}, r"'interval' must be a pair \(t_lo, t_hi\)"),
        ({"interval": (-1, 10)}, r"'interval' must be a pair"),
        ({"interval": 5}, r"'interval' must be a pair"),
        ({"null_class": -1}, r"'null_class' must be an int ≥ 0, the label of 'no class' \(got -1\)"),
        ({"null_class": 1.0}, r"'null_class' must be an int ≥ 0"),
        ({"null_cond": [1]}, r"'null_cond' must map conditioning keys to null values"),
        ({"num_timesteps": 0}, r"'num_timesteps' must be a positive int \(got 0\)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            ClassifierFreeGuidance(**kwargs)


def test_has_no_gradient_form() -> None:
    with pytest.raises(CompositionError, match="only in the model form"):
        ClassifierFreeGuidance(2.0).gradient(torch.zeros(1, C), torch.zeros(1), y=Y[:1])
