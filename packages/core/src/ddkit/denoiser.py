"""The denoiser a sampler calls: guidance ∘ parameterization ∘ model, bound to one chain.

Guidances apply in a fixed order: those acting in the model form wrap the network call in
the order they are listed (the first listed sits closest to the network); then those in
the score form shift the predicted noise, in list order; then those in the mean form
shift the transition mean, in list order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ddkit.diffusion.parameterization import GaussianParameterization
from ddkit.diffusion.process import Coef, GaussianProcess, Step
from ddkit.errors import CompositionError
from ddkit.prediction import Prediction
from ddkit.protocols import GUIDANCE_FORMS, Guidance, ModelFn, ModelSpec, declares_spec, model_spec

__all__ = ["Denoiser", "choose_form", "dynamic_threshold"]


def choose_form(guidance: Guidance, sampler_forms: Sequence[str], sampler_name: str = "the sampler") -> str:
    """The form ``guidance`` acts in under a sampler accepting ``sampler_forms`` (preferred first)."""
    for form in sampler_forms:
        if form in guidance.forms:
            return form
    gname = getattr(guidance, "name", type(guidance).__name__)
    raise CompositionError(
        f"guidance {gname!r} acts in the {' or '.join(guidance.forms)} form, but {sampler_name} accepts only "
        f"{', '.join(sampler_forms) or 'no guidance'}; choose another sampler or another form"
    )


def dynamic_threshold(percentile: float) -> Callable[[Tensor], Tensor]:
    """Imagen's dynamic thresholding (Saharia et al. 2022): rescale x_0 by its ``percentile`` of |x_0|."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"'dynamic_threshold' must be a percentile in (0, 1] (got {percentile!r})")

    def threshold(x0: Tensor) -> Tensor:
        flat = x0.reshape(x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0.dtype)
        s = s.reshape(-1, *([1] * (x0.ndim - 1)))
        return x0.clamp(-s, s) / s

    return threshold


class Denoiser:
    """Predicts x_0, eps and the reverse transition for x_t at a step of ``process``.

    Built once per sampling call: it holds the conditioning (class labels, ...) so that
    samplers never see it, and counts model evaluations in ``nfe``.

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "_guided_model",
        "_mean_guidances",
        "_model_conditioning",
        "_model_input",
        "_own_input",
        "_score_guidances",
        "clip_denoised",
        "conditioning",
        "denoised_fn",
        "forms",
        "guidances",
        "model",
        "nfe",
        "parameterization",
        "process",
        "spec",
    )

    def __init__(
        self,
        model: ModelFn,
        parameterization: GaussianParameterization,
        process: GaussianProcess,
        *,
        guidances: Iterable[Guidance] = (),
        sampler_forms: Sequence[str] = GUIDANCE_FORMS,
        conditioning: Mapping[str, Any] | None = None,
        clip_denoised: bool | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
        forms: Sequence[str] | None = None,
        spec: ModelSpec | None = None,
    ) -> None:
        self.model = model
        self.parameterization = parameterization
        self.process = process
        self.guidances = tuple(guidances)
        self.conditioning = dict(conditioning or {})
        self.clip_denoised = parameterization.clip_denoised if clip_denoised is None else clip_denoised
        self.denoised_fn = denoised_fn
        if forms is None:
            forms = tuple(choose_form(g, sampler_forms) for g in self.guidances)
        self.forms = tuple(forms)
        self.nfe = 0
        #: What the model declares (read once: :func:`~ddkit.protocols.model_spec` inspects it; ``spec``
        #: gives it when the caller has read it for this model).
        self.spec = spec = model_spec(model) if spec is None else spec
        # Labels given to a model that declares no classes steer a guidance (classifier guidance
        # on an unconditional network), not the network: it does not see them.
        self._model_conditioning = self.conditioning
        if "y" in self.conditioning and spec.num_classes is None and declares_spec(model):
            self._model_conditioning = {k: v for k, v in self.conditioning.items() if k != "y"}
        guided: ModelFn = model
        for g, form in zip(self.guidances, self.forms):
            g.check(spec, self.conditioning)
            if form == "model":
                channels = spec.in_channels
                mean_channels = channels if channels is not None else -1
                guided = g.wrap_model(guided, mean_channels=mean_channels)
        self._guided_model = guided
        self._model_input = getattr(parameterization, "model_input", None)
        # Whether the parameterization reads the input its own way (EDM's preconditioning); the
        # default's input off a path is x itself, which __call__ passes without the call.
        default = getattr(type(parameterization), "model_input", None) is GaussianParameterization.model_input
        self._own_input = self._model_input is not None and not default
        self._score_guidances = tuple(g for g, f in zip(self.guidances, self.forms) if f == "score")
        self._mean_guidances = tuple(g for g, f in zip(self.guidances, self.forms) if f == "mean")

    def with_process(self, process: GaussianProcess, **changes: Any) -> Denoiser:
        """The same model, parameterization, guidances and conditioning on another chain."""
        if changes.keys() <= {"clip_denoised", "denoised_fn"}:
            # What a sampler binds once per call: the guidances are already checked and wrapped
            # around the model, so copy them instead of building (and re-checking) them again.
            out = Denoiser.__new__(Denoiser)
            for name in Denoiser.__slots__:
                setattr(out, name, getattr(self, name))
            out.process = process
            out.nfe = 0
            out.conditioning = dict(self.conditioning)
            same = self._model_conditioning is self.conditioning
            out._model_conditioning = out.conditioning if same else dict(self._model_conditioning)
            if "clip_denoised" in changes:
                clip = changes["clip_denoised"]
                out.clip_denoised = self.parameterization.clip_denoised if clip is None else clip
            if "denoised_fn" in changes:
                out.denoised_fn = changes["denoised_fn"]
            return out
        kwargs: dict[str, Any] = {
            "guidances": self.guidances,
            "conditioning": self.conditioning,
            "clip_denoised": self.clip_denoised,
            "denoised_fn": self.denoised_fn,
            "forms": self.forms,
        }
        kwargs.update(changes)
        return Denoiser(self.model, self.parameterization, process, **kwargs)

    def respaced(self, use_timesteps: Iterable[int], **changes: Any) -> Denoiser:
        """This denoiser on the chain that visits only ``use_timesteps`` of its own."""
        return self.with_process(self.process.respace(use_timesteps), **changes)

    def model_input(self, x: Tensor, t: Step, alpha_bar: Coef | None = None) -> tuple[Tensor, Tensor]:
        """The network's input for the chain's x at step ``t``: the path's x_t (or preconditioned x), time."""
        if self._model_input is not None:
            x_in, model_t = self._model_input(self.process, x, t, alpha_bar)
            return x_in, model_t
        return x, self.process.model_timesteps(t, x.shape[0], x.device)

    @property
    def path_input(self) -> bool:
        """Whether the network's input is the path's x_t = ``process.scale(t, x)``·x (no preconditioning).

        A sampler that has that product already (e.g. from its own fused step) may pass it to
        :meth:`__call__` as ``x_in`` and save the pass over x that computing it costs.

        .. versionadded:: 0.2.0
        """
        model_input = getattr(type(self.parameterization), "model_input", None)
        return self.process.path is not None and model_input is GaussianParameterization.model_input

    @property
    def reads_x_linearly(self) -> bool:
        """Whether x reaches a prediction only as the network's input and in x̂_0's linear form a·x + b·y.

        True without guidance in the score or mean form (they take x itself), clipping or
        ``denoised_fn``, and with the built-in reading of the output. A sampler that folds x̂_0
        into its step (:meth:`Prediction.x0_terms`) may then carry the network's input alone
        between steps whose states no one sees.

        .. versionadded:: 0.2.0
        """
        return (
            not self._score_guidances
            and not self._mean_guidances
            and not self.clip_denoised
            and self.denoised_fn is None
            and getattr(type(self.parameterization), "predict", None) is GaussianParameterization.predict
        )

    def model_output(self, x: Tensor, t: Step, alpha_bar: Coef | None = None) -> Tensor:
        """The raw (model-form guided) network output for x at step ``t`` of the chain."""
        x_in, model_t = self.model_input(x, t, alpha_bar)
        self.nfe += 1
        return self._guided_model(x_in, model_t, **self._model_conditioning)

    def __call__(
        self,
        x: Tensor,
        t: Step,
        *,
        alpha_bar: Coef | None = None,
        posterior: bool = False,
        x_in: Tensor | None = None,
    ) -> Prediction:
        """Predict for ``x`` at step ``t`` (an index of the chain; fractional with ``alpha_bar``).

        ``posterior=True`` also fills the reverse transition's mean and variance. ``x_in``: the
        network's input for ``x`` when the caller has it, ``process.scale(t, x)·x`` (only where
        :attr:`path_input`).
        """
        process = self.process
        # model_input and model_output inlined: this runs once per model evaluation.
        if x_in is not None:
            model_t = process.model_timesteps(t, x.shape[0], x.device)
        elif self._own_input or (process.path is not None and self._model_input is not None):
            x_in, model_t = self._model_input(process, x, t, alpha_bar)  # type: ignore[misc]
        else:
            x_in, model_t = x, process.model_timesteps(t, x.shape[0], x.device)
        self.nfe += 1
        cond = self._model_conditioning
        output = self._guided_model(x_in, model_t, **cond) if cond else self._guided_model(x_in, model_t)
        pred = self.parameterization.predict(
            process,
            output,
            x,
            t,
            clip_denoised=self.clip_denoised,
            denoised_fn=self.denoised_fn,
            alpha_bar=alpha_bar,
            posterior=posterior,
        )
        if self._score_guidances:
            pred = self._guide_score(pred, x, t, model_t, alpha_bar, posterior)
        if self._mean_guidances and posterior:
            assert pred.mean is not None
            assert pred.variance is not None
            mean = pred.mean.float()
            for g in self._mean_guidances:
                mean = mean + pred.variance * self._gradient(g, x, t, model_t).float()
            pred.mean = mean
        return pred

    def _guide_score(
        self, pred: Prediction, x: Tensor, t: Step, model_t: Tensor, alpha_bar: Coef | None, posterior: bool
    ) -> Prediction:
        ab = self.process.alpha_bar(t, x) if alpha_bar is None else alpha_bar
        sigma = (1.0 - ab) ** 0.5
        eps = pred.eps
        for g in self._score_guidances:
            eps = eps - sigma * self._gradient(g, x, t, model_t)
        # As guided-diffusion's condition_score: x_0 follows the shifted noise, unclipped.
        x0 = self.process.x0_from_eps(x, t, eps, alpha_bar)
        mean = self.process.q_posterior_mean(x0, x, t) if posterior else pred.mean
        return pred.replace(x0=x0, eps=eps, mean=mean)

    def _gradient(self, g: Guidance, x: Tensor, t: Step, model_t: Tensor) -> Tensor:
        """A guidance's gradient in the chain's x: it sees the path's x_t = k·x (so ∇ scales by k)."""
        k = self.process.scale(t, x)
        if self.process.path is not None:  # the path's time, not a preconditioner's c_noise
            model_t = self.process.model_timesteps(t, x.shape[0], x.device)
        if type(k) is float and k == 1.0:
            return g.gradient(x, model_t, **self.conditioning)
        return g.gradient(x * k, model_t, **self.conditioning) * k
