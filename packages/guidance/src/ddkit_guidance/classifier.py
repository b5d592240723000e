"""Classifier guidance (Dhariwal & Nichol 2021): g = s·∇_x log p_φ(y | x_t, t) from a noisy-data classifier.

The gradient is guided-diffusion's ``cond_fn`` of classifier_sample.py; the denoiser adds it
to the transition mean (mean form, Sohl-Dickstein et al. 2015, used by ancestral samplers)
or subtracts sqrt(1 − ᾱ)·g from the predicted noise (score form, Song et al. 2020, used by
DDIM and ODE solvers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddkit.errors import CompositionError, ConfigError
from ddkit.protocols import ModelFn, ModelSpec
from ddkit_guidance._checks import check_choice, check_nonnegative

__all__ = ["ClassifierGuidance", "ClassifierLike"]

#: A classifier ``(x_t, t) -> logits [B, classes]``, or ``{"name": ..., "weights": ..., **flags}``.
ClassifierLike = Callable[..., Tensor] | Mapping[str, Any]

_FORMS: dict[str, tuple[str, ...]] = {"auto": ("mean", "score"), "mean": ("mean",), "score": ("score",)}


class ClassifierGuidance:
    """Classifier guidance with scale ``s``, from any classifier ``(x_t, t) -> logits``.

    ``classifier`` is a callable (e.g. an ``adm-classifier`` module, used as given, so put
    it in eval mode and on the sampling device yourself) or a mapping
    ``{"name": "adm-classifier", "weights": "path.safetensors", **flags}`` built through
    ``ddkit.create("model", name, **flags)`` on first use, loaded, put in eval mode and
    moved to the device of x. ``form`` is ``"auto"`` (the sampler's preference picks: the
    mean form under DDPM, the score form under DDIM), ``"mean"`` or ``"score"``. The
    conditioning must hold the class labels ``y``.

    .. versionadded:: 0.1.0
    """

    name = "classifier"

    def __init__(self, classifier: ClassifierLike, scale: float = 1.0, *, form: str = "auto") -> None:
        self.scale = check_nonnegative("scale", scale)
        self.form = check_choice("form", form, tuple(_FORMS))
        self.forms: tuple[str, ...] = _FORMS[self.form]
        self._config: dict[str, Any] | None = None
        self._classifier: Callable[..., Tensor] | None = None
        if isinstance(classifier, Mapping):
            self._config = _check_config(classifier)
        elif callable(classifier):
            self._classifier = classifier
        else:
            raise ConfigError(
                "'classifier' must be a callable (x_t, t) -> logits or a mapping "
                f"{{'name': ..., 'weights': ...}} naming a registered model (got {classifier!r})"
            )

    def __repr__(self) -> str:
        what = self._config if self._config is not None else type(self._classifier).__name__
        return f"ClassifierGuidance(classifier={what!r}, scale={self.scale}, form={self.form!r})"

    @property
    def classifier(self) -> Callable[..., Tensor]:
        """The classifier, built from its registry name and weights on first use."""
        if self._classifier is None:
            assert self._config is not None
            # Built outside inference mode, so that its weights can take part in the gradient.
            with torch.inference_mode(False):
                self._classifier = _build(self._config)
        return self._classifier

    def check(self, spec: ModelSpec, conditioning: Mapping[str, Any]) -> None:
        """Raise :class:`CompositionError` when the conditioning has no class labels ``y``."""
        if conditioning.get("y") is None:
            raise CompositionError(
                "classifier guidance needs the class labels to guide towards: pass y=<labels, shape [B]> "
                f"in the conditioning (it has {sorted(conditioning) or 'no keys'})"
            )

    def wrap_model(self, model: ModelFn, *, mean_channels: int) -> ModelFn:
        """Not available: classifier guidance acts in the mean or score form."""
        raise CompositionError("classifier guidance acts in the mean or score form; it never wraps the model")

    def gradient(self, x: Tensor, t: Tensor, y: Tensor | None = None, **_: Any) -> Tensor:
        """s·∇_x log softmax(classifier(x, t))[y]; works under ``torch.no_grad()`` and ``inference_mode``."""
        if y is None:
            raise CompositionError("classifier guidance needs y=<class labels> in the conditioning")
        classifier = self.classifier
        # inference_mode(False): a sampler running under torch.inference_mode() still gets a gradient
        # (and a classifier built here is moved to the device as ordinary, differentiable tensors).
        with torch.inference_mode(False), torch.enable_grad():
            if self._config is not None and isinstance(classifier, torch.nn.Module):
                classifier.to(x.device)
            x_in = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
            logits = classifier(x_in, t.clone() if t.is_inference() else t)
            log_probs = F.log_softmax(logits, dim=-1)
            labels = y.clone() if y.is_inference() else y
            selected = log_probs[range(len(logits)), labels.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * self.scale


def _check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(
            "a 'classifier' mapping must name a registered model, e.g. {'name': 'adm-classifier', "
            f"'weights': 'classifier.safetensors', ...}} (got {dict(config)!r})"
        )
    weights = config.get("weights")
    if weights is not None and not isinstance(weights, str):
        import os

        if not isinstance(weights, os.PathLike):
            raise ConfigError(f"'weights' must be a path to a .safetensors file (got {weights!r})")
    return dict(config)


def _build(config: Mapping[str, Any]) -> Callable[..., Tensor]:
    """Create the named model through the registry (never importing its package), load and freeze it."""
    import ddkit

    flags = {k: v for k, v in config.items() if k not in ("name", "weights")}
    model = ddkit.create("model", config["name"], **flags)
    weights = config.get("weights")
    if weights is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(weights)))
    if isinstance(model, torch.nn.Module):
        model.eval().requires_grad_(False)
    if not callable(model):
        raise ConfigError(f"model {config['name']!r} for classifier guidance is not callable (got {model!r})")
    return model  # type: ignore[no-any-return]
