"""The protocols every component meets. Plugins implement them; the pipeline relies on nothing else.

The data flow of one sampling call::

    denoiser(x_t, t) = score/mean guidance ∘ parameterization ∘ model-form guidance ∘ model
    sampler.iterate(denoiser, x_T) -> SamplerState, ... ; the last state's ``x`` is the sample

A sampler never knows which network, parameterization or guidance is in use; a model
never knows which sampler runs it; guidance sees only the model call and predictions.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ddkit.prediction import Prediction

if TYPE_CHECKING:
    from ddkit.denoiser import Denoiser
    from ddkit.diffusion.process import GaussianProcess

__all__ = [
    "GUIDANCE_FORMS",
    "UNCOND_KEYWORDS",
    "Autoencoder",
    "Generator",
    "Guidance",
    "ModelFn",
    "ModelSpec",
    "Parameterization",
    "Sampler",
    "SamplerState",
    "Schedule",
    "TimestepResampler",
    "conditioning_keywords",
    "declares_spec",
    "model_spec",
]

#: One generator for the batch, or one per sample (sample i then does not depend on the batch).
Generator = torch.Generator | Sequence[torch.Generator] | None

#: Where a guidance acts: around the model call, on the predicted noise, or on the transition mean.
GUIDANCE_FORMS: tuple[str, ...] = ("model", "score", "mean")

#: Sampling keywords that carry the unconditional value of other conditioning keywords
#: (``uncond={"encoder_hidden_states": empty_prompt}``): they are meant for a guidance that
#: lists them in its optional ``consumes`` attribute, and never reach the network.
UNCOND_KEYWORDS: tuple[str, ...] = ("uncond", "negative")


@runtime_checkable
class ModelFn(Protocol):
    """The network call: ``model(x_t, t, **conditioning) -> output``.

    ``t`` holds the *training* timestep of each sample (shape ``[B]``, possibly fractional
    for continuous-time samplers); the output has the shape of ``x_t`` with the channel
    dimension (dim 1) multiplied by the parameterization's factor (2 for learned variances).
    """

    def __call__(self, x: Tensor, t: Tensor, **conditioning: Any) -> Tensor: ...


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a model promises, so that a composition is checked before it runs.

    ``None`` means "unknown": the check is skipped. ``null_class`` is the label index a
    model trained with condition dropout uses for "no class" (classifier-free guidance).
    ``conditioning`` names the keywords besides ``y`` the model takes (``("encoder_hidden_states",)``;
    ``()`` for none); :func:`model_spec` reads it from the model's call signature when not given.
    """

    in_channels: int | None = None
    out_channels: int | None = None
    sample_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    null_class: int | None = None
    conditioning: tuple[str, ...] | None = None


def model_spec(model: object) -> ModelSpec:
    """Read a model's :class:`ModelSpec`: its ``spec`` attribute, else common attribute names."""
    read = _declared if isinstance(model, torch.nn.Module) and not _own_getattr(model) else _attribute
    spec = read(model, "spec")
    if isinstance(spec, ModelSpec):
        if spec.conditioning is None:
            keywords = conditioning_keywords(model)
            if keywords is not None:
                spec = replace(spec, conditioning=keywords)
        return spec
    return ModelSpec(
        in_channels=read(model, "in_channels"),
        out_channels=read(model, "out_channels"),
        sample_shape=read(model, "sample_shape"),
        num_classes=read(model, "num_classes"),
        null_class=read(model, "null_class"),
        conditioning=conditioning_keywords(model),
    )


def _attribute(model: object, name: str) -> Any:
    return getattr(model, name, None)


def _own_getattr(module: torch.nn.Module) -> bool:
    """Whether a module class answers missing names its own way (diffusers' ModelMixin reads its config)."""
    return type(module).__getattr__ is not torch.nn.Module.__getattr__


def _declared(module: Any, name: str) -> Any:
    """``getattr(module, name, None)`` for a torch module, without the AttributeError a missing name
    costs (nn.Module formats its message: about 2 µs per name, five names per sampling call)."""
    if name in module.__dict__ or hasattr(type(module), name):
        return getattr(module, name, None)
    for store in ("_parameters", "_buffers", "_modules"):
        held = module.__dict__.get(store)
        if held is not None and name in held:
            return held[name]
    return None


#: :func:`conditioning_keywords` per plain function, bound (a method: ``self`` left out) or not; every
#: sampling call reads them, and ``inspect.signature`` costs about 20 µs, a cheap sampler's whole step.
_KEYWORDS: weakref.WeakKeyDictionary[types.FunctionType, dict[bool, tuple[str, ...] | None]] = (
    weakref.WeakKeyDictionary()
)


def conditioning_keywords(model: object) -> tuple[str, ...] | None:
    """The keywords besides ``x``, ``t`` and ``y`` that ``model`` takes; None if it takes ``**kwargs``."""
    fn = getattr(model, "forward", None) if isinstance(model, torch.nn.Module) else model
    func = getattr(fn, "__func__", fn)
    if not isinstance(func, types.FunctionType):
        return _keywords(fn)
    per_func = _KEYWORDS.get(func)
    if per_func is None:
        per_func = _KEYWORDS[func] = {}
    bound = fn is not func
    if bound not in per_func:
        per_func[bound] = _keywords(fn)
    return per_func[bound]


def _keywords(fn: object) -> tuple[str, ...] | None:
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = [p for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    return tuple(p.name for p in named[2:] if p.name != "y")


def declares_spec(model: object) -> bool:
    """Whether the model states its spec (so ``num_classes=None`` means "unconditional", not "unknown")."""
    return isinstance(getattr(model, "spec", None), ModelSpec)


@runtime_checkable
class Schedule(Protocol):
    """A noise schedule over ``timesteps`` discrete training steps."""

    @property
    def timesteps(self) -> int:
        """The number T of training steps."""
        ...

    @property
    def betas(self) -> np.ndarray:
        """The betas of the T training steps, float64, each in (0, 1]."""
        ...

    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ at continuous time ``t`` in [0, 1]: ᾱ(0) = 1 and ᾱ((i + 1) / T) is training step i's ᾱ."""
        ...


@runtime_checkable
class Parameterization(Protocol):
    """What the network predicts and how its variance is given.

    ``prediction`` is one of ``epsilon``, ``x0``, ``previous-x``, ``v``; ``variance`` one of
    ``fixed-small``, ``fixed-large``, ``learned``, ``learned-range``.
    """

    prediction: str
    variance: str
    clip_denoised: bool

    @property
    def learned_variance(self) -> bool:
        """Whether the network also outputs the variance (doubling its channels)."""
        ...

    def output_channels(self, channels: int) -> int:
        """How many output channels a network needs for data with ``channels`` channels."""
        ...

    def predict(
        self,
        process: GaussianProcess,
        output: Tensor,
        x_t: Tensor,
        t: Tensor,
        *,
        clip_denoised: bool | None = None,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
        alpha_bar: Tensor | None = None,
        posterior: bool = True,
    ) -> Prediction:
        """Read a raw network output as a :class:`Prediction` (guided-diffusion's p_mean_variance)."""
        ...

    def target(self, process: GaussianProcess, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The regression target for the mean part of the network output."""
        ...


class SamplerState:
    """One state of a sampling trajectory, yielded after each step.

    ``t`` is the training timestep the state was predicted from; ``x`` the new sample
    after the step (x_0 after the last); ``x0`` the model's prediction of the clean
    sample; ``log_prob`` the per-sample log density of the transition a stochastic
    sampler drew (``None`` for deterministic steps); ``nfe`` the model evaluations so far.

    A sampler may pass the step's :class:`Prediction` as ``x0``: its x̂_0 is then computed
    only if someone reads ``state.x0`` (``sample()`` never does).
    """

    __slots__ = ("_x0", "log_prob", "nfe", "step", "t", "x")

    def __init__(
        self,
        step: int,
        t: float,
        x: Tensor,
        x0: Tensor | Prediction,
        nfe: int,
        log_prob: Tensor | None = None,
    ) -> None:
        self.step = step
        self.t = t
        self.x = x
        self._x0 = x0
        self.nfe = nfe
        self.log_prob = log_prob

    @property
    def x0(self) -> Tensor:
        """The model's prediction of the clean sample at this step."""
        x0 = self._x0
        if type(x0) is Prediction:
            x0 = self._x0 = x0.x0
        return x0  # type: ignore[return-value]

    @x0.setter
    def x0(self, value: Tensor) -> None:
        self._x0 = value

    def __repr__(self) -> str:
        return f"SamplerState(step={self.step}, t={self.t}, nfe={self.nfe}, x=Tensor{tuple(self.x.shape)})"


@runtime_checkable
class Sampler(Protocol):
    """Walks a denoiser from noise to data.

    ``guidance_forms`` lists the guidance forms it can apply, preferred first (an
    ancestral sampler prefers the mean form, an ODE solver can only take the score form).
    """

    guidance_forms: tuple[str, ...]
    stochastic: bool

    def check(self, denoiser: Denoiser) -> None:
        """Raise :class:`ddkit.CompositionError` for a combination that cannot work."""
        ...

    def iterate(
        self,
        denoiser: Denoiser,
        x_T: Tensor,
        *,
        generator: Generator = None,
        callback: Callable[[SamplerState], None] | None = None,
        progress: bool = False,
        init: Tensor | None = None,
        strength: float | None = None,
        mask: Tensor | None = None,
        known: Tensor | None = None,
    ) -> Iterator[SamplerState]:
        """Yield a state per step, starting from ``x_T`` (or from ``init`` noised to ``strength``)."""
        ...

    def sample(self, denoiser: Denoiser, x_T: Tensor, **options: Any) -> Tensor:
        """Run :meth:`iterate` to the end and return the final sample."""
        ...


@runtime_checkable
class Guidance(Protocol):
    """Changes what the denoiser returns.

    ``forms`` lists the forms it can act in (see :data:`GUIDANCE_FORMS`), preferred first.
    The model form wraps the network call (:meth:`wrap_model`); the score and mean forms
    use :meth:`gradient`, g = s·∇ log p(y | x_t): the score form sets
    eps ← eps − sqrt(1 − ᾱ_t)·g and the mean form mean ← mean + Σ·g.

    A guidance may also have a ``consumes`` attribute: the sampling keywords of
    :data:`UNCOND_KEYWORDS` it takes for itself (a model-form guidance pops them from the
    conditioning before calling the network).
    """

    forms: tuple[str, ...]

    def check(self, spec: ModelSpec, conditioning: Mapping[str, Any]) -> None:
        """Raise :class:`ddkit.CompositionError` when the model or conditioning cannot take it."""
        ...

    def wrap_model(self, model: ModelFn, *, mean_channels: int) -> ModelFn:
        """Model form: a new model call (e.g. classifier-free: one batched forward of 2B)."""
        ...

    def gradient(self, x: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
        """Score and mean forms: the scaled guidance gradient at ``x`` (``t``: training timesteps)."""
        ...


@runtime_checkable
class TimestepResampler(Protocol):
    """Draws training timesteps with importance weights, and learns from reported losses."""

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(t, weights)``: long timesteps and float importance weights, shape ``[batch_size]``."""
        ...

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Report per-sample losses of this rank (gathered across ranks where distributed)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Data-only state (tensors, numbers, lists) to save in a checkpoint."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state from :meth:`state_dict`."""
        ...


@runtime_checkable
class Autoencoder(Protocol):
    """Maps data to the latents a latent pipeline's model works in, and back.

    ``encode`` is deterministic (a VAE returns its posterior's mean or mode) and both
    directions are unscaled: the pipeline maps data to latents as
    ``z = (encode(x) - shift_factor) * scaling_factor`` and back as
    ``x = decode(z / scaling_factor + shift_factor)``, so that latents have roughly unit
    variance. ``shift_factor`` is 0.0 for an autoencoder without one. An autoencoder may also
    have ``latent_shape(sample_shape) -> tuple`` (one data sample's shape to one latent's).
    A pipeline keeps its autoencoder frozen (eval mode, no gradients).

    .. versionadded:: 0.1.0
    """

    scaling_factor: float
    shift_factor: float

    def encode(self, x: Tensor) -> Tensor:
        """The unscaled latents of a data batch ``x``."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """The data batch of unscaled latents ``z``."""
        ...
