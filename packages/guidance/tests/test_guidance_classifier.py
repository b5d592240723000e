"""Classifier guidance: the gradient, its checks, and the registry-named classifier."""

from __future__ import annotations

import pytest
import torch
from guidance_helpers import C, LinearClassifier, make_x
from torch import Tensor, nn

import ddkit
from ddkit import CompositionError, ConfigError, Guidance
from ddkit_guidance import ClassifierGuidance


def _closed_form(clf: LinearClassifier, x: Tensor, y: Tensor, scale: float) -> Tensor:
    with torch.no_grad():
        W = clf.fc.weight  # [K, F]
        p = torch.softmax(clf(x, torch.zeros(len(x))), dim=-1)  # [B, K]
        grad = W[y] - p @ W
    return (scale * grad).view_as(x)


def test_gradient_equals_the_closed_form_gradient() -> None:
    torch.manual_seed(0)
    clf = LinearClassifier()
    x, y = make_x(), torch.tensor([0, 3, 1, 1])
    g = ClassifierGuidance(clf, scale=2.5)
    torch.testing.assert_close(g.gradient(x, torch.full((4,), 7), y=y), _closed_form(clf, x, y, 2.5))
    assert torch.equal(clf.seen_t[-2], torch.full((4,), 7))


def test_gradient_equals_autograd_on_any_classifier() -> None:
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(C * 16, 16), nn.SiLU(), nn.Linear(16, 4))
    x, y, t = make_x(), torch.tensor([2, 0, 1, 3]), torch.arange(4)
    x_in = x.clone().requires_grad_(True)
    logp = torch.log_softmax(clf(x_in), dim=-1)
    (want,) = torch.autograd.grad(sum(logp[i, y[i]] for i in range(4)), x_in)
    got = ClassifierGuidance(lambda x, t: clf(x), scale=3.0).gradient(x, t, y=y)
    torch.testing.assert_close(got, 3.0 * want)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_gradient_works_inside_no_grad_and_inference_mode(mode: str) -> None:
    torch.manual_seed(0)
    clf = LinearClassifier()
    x, y = make_x(), torch.tensor([0, 1, 2, 3])
    want = _closed_form(clf, x, y, 1.0)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        xs, ys, ts = x.clone(), y.clone(), torch.zeros(4, dtype=torch.long)
        got = ClassifierGuidance(clf).gradient(xs, ts, y=ys)
    torch.testing.assert_close(got, want)
    assert not x.requires_grad


def test_scale_zero_gives_a_zero_gradient() -> None:
    g = ClassifierGuidance(LinearClassifier(), scale=0)
    assert torch.count_nonzero(g.gradient(make_x(), torch.zeros(4), y=torch.zeros(4, dtype=torch.long))) == 0


def test_needs_y_in_the_conditioning() -> None:
    g = ClassifierGuidance(LinearClassifier())
    assert isinstance(g, Guidance)
    with pytest.raises(CompositionError, match=r"pass y=<labels, shape \[B\]>.*it has \['context'\]"):
        g.check(ddkit.ModelSpec(), {"context": torch.zeros(1)})
    g.check(ddkit.ModelSpec(), {"y": torch.zeros(1)})
    with pytest.raises(CompositionError, match="never wraps the model"):
        g.wrap_model(LinearClassifier(), mean_channels=C)


def test_parameters_are_validated() -> None:
    clf = LinearClassifier()
    for bad in (-0.5, float("nan"), float("inf"), None, "1"):
        with pytest.raises(ConfigError, match=rf"'scale' must be a finite number ≥ 0 \(got {bad!r}\)"):
            ClassifierGuidance(clf, scale=bad)  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=r"'form' must be one of 'auto', 'mean', 'score' \(got 'means'\); did you"
    ):
        ClassifierGuidance(clf, form="means")
    with pytest.raises(ConfigError, match="'classifier' must be a callable"):
        ClassifierGuidance(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must name a registered model"):
        ClassifierGuidance({"weights": "w.safetensors"})
    assert ClassifierGuidance(clf).forms == ("mean", "score")
    assert ClassifierGuidance(clf, form="mean").forms == ("mean",)
    assert ClassifierGuidance(clf, form="score").forms == ("score",)


def test_named_classifier_is_built_lazily_through_the_registry(tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    trained = LinearClassifier(classes=3)
    path = tmp_path / "clf.safetensors"
    save_file(trained.state_dict(), str(path))
    built: list[tuple[str, str, dict]] = []

    def fake_create(kind: str, name: str, **flags):
        built.append((kind, name, flags))
        return LinearClassifier(classes=flags["classes"]).train()

    monkeypatch.setattr(ddkit, "create", fake_create)
    g = ClassifierGuidance({"name": "adm-classifier", "weights": str(path), "classes": 3}, scale=2.0)
    assert built == []  # nothing is built before it is needed
    x, y = make_x(), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        got = g.gradient(x, torch.zeros(4), y=y)
    assert built == [("model", "adm-classifier", {"classes": 3})]
    torch.testing.assert_close(got, _closed_form(trained, x, y, 2.0))
    clf = g.classifier
    assert isinstance(clf, nn.Module)
    assert not clf.training
    assert not any(p.requires_grad for p in clf.parameters())
    g.gradient(x, torch.zeros(4), y=y)
    assert len(built) == 1
    # First use inside torch.inference_mode(): the weights are still usable by autograd.
    fresh = ClassifierGuidance({"name": "adm-classifier", "weights": str(path), "classes": 3}, scale=2.0)
    with torch.inference_mode():
        got = fresh.gradient(x.clone(), torch.zeros(4), y=y.clone())
    torch.testing.assert_close(got, _closed_form(trained, x, y, 2.0))
