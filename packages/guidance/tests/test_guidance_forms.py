"""Forms picked through core's Denoiser, the composed order of several guidances, and early errors."""

from __future__ import annotations

import pytest
import torch
from guidance_helpers import ClassNet, LinearClassifier, make_x

from ddkit import CompositionError
from ddkit.denoiser import Denoiser
from ddkit_guidance import ClassifierFreeGuidance, ClassifierGuidance

DDPM_FORMS = ("model", "mean", "score")
DDIM_FORMS = ("model", "score")
Y = torch.tensor([0, 1, 2, 3])


def _denoiser(process, param, guidances, forms, **kwargs):
    return Denoiser(
        ClassNet(), param, process, guidances=guidances, sampler_forms=forms, conditioning={"y": Y}, **kwargs
    )


def test_auto_form_follows_the_sampler_preference(process, param) -> None:
    clf, cfg = ClassifierGuidance(LinearClassifier()), ClassifierFreeGuidance(2.0)
    assert _denoiser(process, param, [clf], DDPM_FORMS).forms == ("mean",)
    assert _denoiser(process, param, [clf], DDIM_FORMS).forms == ("score",)
    assert _denoiser(process, param, [cfg, clf], DDPM_FORMS).forms == ("model", "mean")
    assert _denoiser(process, param, [cfg, clf], DDIM_FORMS).forms == ("model", "score")
    assert _denoiser(
        process, param, [ClassifierGuidance(LinearClassifier(), form="score")], DDPM_FORMS
    ).forms == ("score",)


def test_unsupported_combinations_fail_before_sampling(process, param) -> None:
    with pytest.raises(
        CompositionError, match="'classifier' acts in the mean form, but the sampler accepts only"
    ):
        _denoiser(process, param, [ClassifierGuidance(LinearClassifier(), form="mean")], DDIM_FORMS)
    with pytest.raises(CompositionError, match="'classifier-free' acts in the model form"):
        _denoiser(process, param, [ClassifierFreeGuidance(2.0)], ("mean", "score"))
    with pytest.raises(CompositionError, match="needs the class labels"):
        Denoiser(ClassNet(), param, process, guidances=[ClassifierGuidance(LinearClassifier())])


@torch.no_grad()
def test_mean_form_shifts_the_mean_by_variance_times_gradient(process, param) -> None:
    torch.manual_seed(0)
    clf = ClassifierGuidance(LinearClassifier(), scale=4.0)
    model = ClassNet()
    x = make_x()
    guided = Denoiser(model, param, process, guidances=[clf], sampler_forms=DDPM_FORMS, conditioning={"y": Y})
    plain = Denoiser(model, param, process, conditioning={"y": Y})
    p, q = guided(x, 12, posterior=True), plain(x, 12, posterior=True)
    grad = clf.gradient(x, torch.full((4,), 12), y=Y)
    torch.testing.assert_close(p.mean, q.mean + q.variance * grad)
    torch.testing.assert_close(p.x0, q.x0)


@torch.no_grad()
def test_score_form_shifts_the_noise(process, param) -> None:
    torch.manual_seed(0)
    clf = ClassifierGuidance(LinearClassifier(), scale=4.0)
    model = ClassNet()
    x = make_x()
    guided = Denoiser(model, param, process, guidances=[clf], sampler_forms=DDIM_FORMS, conditioning={"y": Y})
    plain = Denoiser(model, param, process, conditioning={"y": Y})
    p, q = guided(x, 12), plain(x, 12)
    grad = clf.gradient(x, torch.full((4,), 12), y=Y)
    ab = float(process.alphas_cumprod[12])
    torch.testing.assert_close(p.eps, q.eps - (1 - ab) ** 0.5 * grad)
    torch.testing.assert_close(p.x0, (x - (1 - ab) ** 0.5 * p.eps) / ab**0.5)


@torch.no_grad()
def test_classifier_free_then_classifier_in_one_denoiser(process, param) -> None:
    """The model form applies first (on the network call), the mean form last (on its prediction)."""
    torch.manual_seed(0)
    model = ClassNet()
    cfg, clf = ClassifierFreeGuidance(3.0), ClassifierGuidance(LinearClassifier(), scale=2.0)
    x = make_x()
    both = Denoiser(
        model, param, process, guidances=[clf, cfg], sampler_forms=DDPM_FORMS, conditioning={"y": Y}
    )
    cfg_only = Denoiser(model, param, process, guidances=[cfg], conditioning={"y": Y})
    assert both.forms == ("mean", "model")
    p, q = both(x, 25, posterior=True), cfg_only(x, 25, posterior=True)
    torch.testing.assert_close(p.mean, q.mean + q.variance * clf.gradient(x, torch.full((4,), 25), y=Y))
    model.calls.clear()
    both(x, 25, posterior=True)
    assert [c["batch"] for c in model.calls] == [8]
