"""The Pipeline: schedule, parameterization, model, sampler, guidances, loss and resampler, composed.

A pipeline is built from names and parameters (a dict or a TOML file, see
:mod:`ddkit.pipeline.config`) or from objects, checked as a whole when it is built, and
then samples, computes training losses, swaps parts and saves itself.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddkit.denoiser import Denoiser
from ddkit.diffusion.parameterization import GaussianParameterization
from ddkit.diffusion.paths import process_of
from ddkit.diffusion.process import GaussianProcess
from ddkit.errors import CompositionError, ConfigError, UnknownPluginError
from ddkit.pipeline import _toml, checks, latent
from ddkit.pipeline.config import (
    ParsedConfig,
    Part,
    check_parts,
    parse_config,
    parse_guidance,
    parse_part,
    registry_factory,
    report,
)
from ddkit.protocols import (
    UNCOND_KEYWORDS,
    Generator,
    Guidance,
    ModelSpec,
    Sampler,
    SamplerState,
    Schedule,
    model_spec,
)
from ddkit.registry import create
from ddkit.trajectory import Trajectory

__all__ = ["Pipeline"]

#: Parameters the pipeline fills in from the schedule when a part takes them and the config does not.
_DERIVED: dict[str, tuple[str, ...]] = {"resampler": ("timesteps",), "guidance": ("num_timesteps",)}
#: Attributes of built parts recorded in the normalized config (so a saved pipeline pins them).
_RECORDED: dict[str, tuple[str, ...]] = {
    "schedule": ("timesteps",),
    "parameterization": ("variance", "clip_denoised"),
}


def _build(part: Part) -> Any:
    """Create one part through the registry, naming the part in any error its factory raises."""
    if part.obj is not None:
        return part.obj
    assert part.name is not None
    try:
        return create(part.kind, part.name, **{**part.injected, **part.params})
    except (CompositionError, UnknownPluginError):
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{part.label} {exc}") from exc


def _autoencoder_title(titles: Mapping[str, Any] | None, autoencoder: Any) -> str | None:
    """How messages name the autoencoder: its config title, else its type; None without one."""
    if autoencoder is None:
        return None
    title = (titles or {}).get("autoencoder")
    return str(title) if title else f"autoencoder ({type(autoencoder).__name__})"


def _unclipped_for_latents(part: Part) -> None:
    """Latents are not bounded like pixels in [-1, 1]: no x_0 clipping unless the config asks for it."""
    if part.name is None or "clip_denoised" in part.params:
        return
    import inspect

    try:
        accepted = inspect.signature(registry_factory(part.kind, part.name)).parameters
    except (TypeError, ValueError):
        return
    if "clip_denoised" in accepted:
        part.params["clip_denoised"] = False


def _record_attributes(part: Part, obj: Any) -> None:
    """Write the values a part was built with back into its params, where they are plain values."""
    if part.name is None:
        return
    import inspect

    try:
        accepted = inspect.signature(registry_factory(part.kind, part.name)).parameters
    except (TypeError, ValueError):
        return
    for key in _RECORDED.get(part.section, ()):
        value = getattr(obj, key, None)
        if key in accepted and key not in part.params and isinstance(value, (bool, int, float, str)):
            part.params[key] = value


class Pipeline:
    """A checked composition of the parts that train and sample a diffusion model.

    Build one with :meth:`from_config`, :meth:`from_toml` or :meth:`load`. ``model`` is the
    network being trained; ``ema`` holds its exponential moving averages keyed by rate
    (``"0.9999"``), and sampling uses the first of them unless ``use_ema`` is False.

    Defaults for parts a config leaves out: schedule ``linear`` (1000 steps),
    parameterization ``epsilon`` (``fixed-small`` variance), sampler ``ddpm`` over the full
    chain, no guidance, loss ``mse``, resampler ``uniform``; the sample shape is the model's
    ``spec.sample_shape``.

    With an ``autoencoder`` (config table ``[autoencoder]``, see :class:`~ddkit.Autoencoder`)
    the pipeline is a latent one: the model, the noise, ``sample_shape`` and :meth:`loss` are
    in latent space; :meth:`encode` and :meth:`decode` cross over, and :meth:`sample` takes
    ``init``/``known``/``mask`` in data space and returns decoded samples.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        schedule: Schedule,
        parameterization: GaussianParameterization,
        sampler: Sampler,
        guidances: Sequence[Guidance] = (),
        resampler: Any = None,
        loss: str = "mse",
        min_snr_gamma: float | None = None,
        sample_shape: Sequence[int] | None = None,
        config: Mapping[str, Any] | None = None,
        titles: Mapping[str, Any] | None = None,
        ema: Mapping[str, nn.Module] | None = None,
        use_ema: bool = True,
        process: GaussianProcess | None = None,
        autoencoder: Any = None,
    ) -> None:
        self.model = model
        if autoencoder is not None:
            title = _autoencoder_title(titles, autoencoder) or "the autoencoder"
            latent.check_autoencoder(autoencoder, title)
            latent.freeze(autoencoder)
        self.autoencoder: Any = autoencoder
        self.schedule = schedule
        self.process = process if process is not None else process_of(schedule)
        self.parameterization = parameterization
        self.sampler = sampler
        self.guidances: tuple[Guidance, ...] = tuple(guidances)
        self.resampler = resampler
        self.loss_name = loss
        self.min_snr_gamma = min_snr_gamma
        self.ema: dict[str, nn.Module] = dict(ema or {})
        self.use_ema = use_ema
        self.config: dict[str, Any] = dict(config or {})
        names = dict(titles or {})
        self._titles: dict[str, Any] = {
            "model": names.get("model", f"model ({type(model).__name__})"),
            "parameterization": names.get(
                "parameterization", f"parameterization {parameterization.prediction!r}"
            ),
            "sampler": names.get("sampler", f"sampler ({type(sampler).__name__})"),
            "autoencoder": _autoencoder_title(titles, autoencoder),
            "guidance": list(
                names.get(
                    "guidance", [f"guidance {getattr(g, 'name', type(g).__name__)!r}" for g in self.guidances]
                )
            ),
        }
        spec = self.spec
        shape = tuple(sample_shape) if sample_shape is not None else spec.sample_shape
        self.sample_shape: tuple[int, ...] | None = tuple(shape) if shape is not None else None
        check_process = getattr(parameterization, "check_process", None)
        if check_process is not None:
            try:
                check_process(self.process)
            except ValueError as exc:
                raise CompositionError(f"{self._titles['parameterization']}: {exc}") from exc
        checks.check_channels(
            spec, self._titles["model"], parameterization, self._titles["parameterization"], self.sample_shape
        )
        self.guidance_forms = checks.check_guidances(
            self.guidances,
            self._titles["guidance"],
            sampler,
            self._titles["sampler"],
            spec,
            self._titles["model"],
        )
        # The sampler's own checks (e.g. a previous-x model on a shortened chain), before any sampling.
        probe = checks.probe_conditioning() if spec.num_classes is not None or self.guidances else {}
        sampler.check(self._make_denoiser(probe))

    # -- building ------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **objects: Any) -> Pipeline:
        """Build a pipeline from a config dict (the shape of the TOML file); ``objects`` are used as given.

        ``objects`` may replace parts (``model=my_module``) or give a parameter of a part
        (``classifier=clf`` for the ``classifier`` guidance). Every problem in the config is
        reported as one :class:`~ddkit.ConfigError` before anything is built; parts that do
        not fit together raise :class:`~ddkit.CompositionError` naming both.
        """
        if isinstance(cfg, Mapping) and "weights" in cfg and "ddkit" in cfg:
            raise ConfigError(
                "this is a saved pipeline's pipeline.toml (it has [ddkit] and [weights] tables); load it "
                "with Pipeline.load(<its directory>) so that its weights are verified and loaded"
            )
        return cls._from_parsed(parse_config(cfg, objects, _DERIVED))

    @classmethod
    def from_toml(cls, path: str | Path, **objects: Any) -> Pipeline:
        """Build a pipeline from a TOML config file (see :meth:`from_config`)."""
        return cls.from_config(read_config(path), **objects)

    @classmethod
    def _from_parsed(cls, parsed: ParsedConfig) -> Pipeline:
        parts = parsed.parts
        schedule = _build(parts["schedule"])
        _record_attributes(parts["schedule"], schedule)
        timesteps = int(schedule.timesteps)
        for part in parsed.all_parts():
            for key in part.injected:
                part.injected[key] = timesteps
        if "autoencoder" in parts:
            _unclipped_for_latents(parts["parameterization"])
        param = _build(parts["parameterization"])
        _record_attributes(parts["parameterization"], param)
        sampler = _build(parts["sampler"])
        guidances = [_build(g) for g in parsed.guidance]
        resampler = _build(parts["resampler"])
        autoencoder = _build(parts["autoencoder"]) if "autoencoder" in parts else None
        model = _build(parts["model"])
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"{parts['model'].title} is a {type(model).__name__}, not a torch.nn.Module; "
                "the model must be an nn.Module called as model(x, t, **conditioning)"
            )
        titles = {
            "model": parts["model"].title,
            "parameterization": parts["parameterization"].title,
            "sampler": parts["sampler"].title,
            "guidance": [g.title for g in parsed.guidance],
        }
        if autoencoder is not None:
            titles["autoencoder"] = parts["autoencoder"].title
        shape = parsed.sample.get("shape")
        return cls(
            model=model,
            schedule=schedule,
            parameterization=param,
            sampler=sampler,
            guidances=guidances,
            resampler=resampler,
            loss=parsed.loss["name"],
            min_snr_gamma=parsed.loss.get("min_snr_gamma"),
            sample_shape=shape,
            config=parsed.normalized(),
            titles=titles,
            autoencoder=autoencoder,
        )

    def _replace(self, **changes: Any) -> Pipeline:
        """A new pipeline sharing this one's model and EMA weights, with some parts changed."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "schedule": self.schedule,
            "parameterization": self.parameterization,
            "sampler": self.sampler,
            "guidances": self.guidances,
            "resampler": self.resampler,
            "loss": self.loss_name,
            "min_snr_gamma": self.min_snr_gamma,
            "sample_shape": self.sample_shape,
            "config": self.config,
            "titles": self._titles,
            "ema": self.ema,
            "use_ema": self.use_ema,
            "process": self.process,
            "autoencoder": self.autoencoder,
        }
        kwargs.update(changes)
        new = type(self)(**kwargs)
        new.ema = self.ema  # shared, so a trainer updating the averages updates every view
        return new

    def _build_parts(self, parts: list[Part]) -> list[Any]:
        """Check, then build, parts for :meth:`with_sampler` and :meth:`with_guidance`."""
        problems = check_parts(parts, _DERIVED)
        if problems:
            raise ConfigError(report(problems))
        for part in parts:
            for key in part.injected:
                part.injected[key] = self.process.original_num_steps
        return [_build(part) for part in parts]

    def with_sampler(self, sampler: Any, **params: Any) -> Pipeline:
        """The same pipeline (sharing the model) with another sampler: ``with_sampler("ddim", steps=50)``.

        ``sampler`` is a registered name or a sampler object (then ``params`` must be empty).
        """
        problems: list[str] = []
        if isinstance(sampler, str):
            part = parse_part("sampler", "[sampler]", {"name": sampler, **params}, problems)
        else:
            if params:
                raise ConfigError("with_sampler(obj, ...) takes no parameters when given a sampler object")
            part = parse_part("sampler", "[sampler]", sampler, problems)
        if part is None:
            raise ConfigError(report(problems))
        (built,) = self._build_parts([part])
        config = {**self.config, "sampler": part.normalized()}
        titles = {**self._titles, "sampler": part.title}
        return self._replace(sampler=built, config=config, titles=titles)

    def with_guidance(self, guidance: Any) -> Pipeline:
        """The same pipeline (sharing the model) with another list of guidances (``[]`` for none).

        Items are names, tables ``{"name": "classifier-free", "scale": 3.0}`` or guidance objects.
        """
        problems: list[str] = []
        parts = parse_guidance(guidance, problems)
        if problems:
            raise ConfigError(report(problems))
        built = self._build_parts(parts)
        config = {**self.config, "guidance": [p.normalized() for p in parts]}
        titles = {**self._titles, "guidance": [p.title for p in parts]}
        return self._replace(guidances=built, config=config, titles=titles)

    # -- model and device ----------------------------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        """What the model declares: channels, sample shape, classes (see :class:`~ddkit.ModelSpec`)."""
        return model_spec(self.model)

    @property
    def sampling_model(self) -> nn.Module:
        """What sampling runs: the first EMA average when there is one and ``use_ema``, else the model."""
        if self.use_ema and self.ema:
            return next(iter(self.ema.values()))
        return self.model

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        for tensors in (self.model.parameters(), self.model.buffers()):
            for tensor in tensors:  # the first is enough (not a list of them all: a U-Net has hundreds)
                return tensor.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> Pipeline:
        """Move the model, its EMA averages and the autoencoder to ``device`` (in place); returns self."""
        self.model.to(device)
        for average in self.ema.values():
            average.to(device)
        if isinstance(self.autoencoder, nn.Module):
            self.autoencoder.to(device)
        return self

    # -- latent space --------------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Data to the model's space: the scaled latents of ``x``, or ``x`` itself without an autoencoder."""
        if self.autoencoder is None:
            return x
        return latent.encode_to_latents(self.autoencoder, x.to(self.device))

    def decode(self, z: Tensor) -> Tensor:
        """The model's space to data: ``z`` decoded by the autoencoder, or ``z`` itself without one."""
        if self.autoencoder is None:
            return z
        return latent.decode_latents(self.autoencoder, z)

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        """One sample's shape as :meth:`sample` returns it: ``sample_shape``, decoded in a latent pipeline.

        A latent pipeline decodes one zero latent to find it (once; e.g. ``(3, 64, 64)`` for
        ``(4, 8, 8)`` latents), so that callers such as image writers see the data's shape.
        """
        if self.autoencoder is None or self.sample_shape is None:
            return self.sample_shape
        cached = self.__dict__.get("_data_shape")
        if cached is None:
            probe = torch.zeros(1, *self.sample_shape, device=self.device)
            cached = self.__dict__["_data_shape"] = tuple(self.decode(probe).shape[1:])
        return tuple(cached)

    def _inputs(
        self, x: Tensor, init: Tensor | None, mask: Tensor | None, known: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(init, mask, known)`` for image-to-image and inpainting, given in data space, in the model's."""
        if self.autoencoder is None:
            return init, mask, known
        return (
            self.encode(init) if init is not None else None,
            latent.latent_mask(mask, x) if mask is not None else None,
            self.encode(known) if known is not None else None,
        )

    # -- sampling ------------------------------------------------------------------------

    def _labels_for_guidance(self) -> bool:
        return any(form in ("score", "mean") for form in self.guidance_forms)

    def _conditioning(
        self, n: int | None, conditioning: Mapping[str, Any], spec: ModelSpec | None = None
    ) -> dict[str, Any]:
        model = self.sampling_model
        cond = checks.normalize_conditioning(
            n,
            conditioning,
            model,
            model_spec(model) if spec is None else spec,
            self._titles["model"],
            self.device,
            labels_used_elsewhere=self._labels_for_guidance(),
        )
        for key, value in cond.items():
            if isinstance(value, Tensor) and key != "y":
                cond[key] = value.to(self.device)
        return self._uncond(cond)

    def _uncond(self, cond: dict[str, Any]) -> dict[str, Any]:
        """Route ``uncond``/``negative`` and the model's learned null embeddings to the guidance taking them.

        A learned null embedding (:mod:`ddkit.conditioning`) is the unconditional value of its
        keyword unless ``uncond=`` at sampling time, or the guidance's own ``uncond``, gives one.
        """
        from ddkit.conditioning import null_embeddings

        consumers = [g for g in self.guidances if set(UNCOND_KEYWORDS) & set(getattr(g, "consumes", ()))]
        given = [key for key in UNCOND_KEYWORDS if cond.get(key) is not None]
        for key in UNCOND_KEYWORDS:
            if cond.get(key) is None:
                cond.pop(key, None)
        if given and not consumers:
            raise CompositionError(
                f"{given[0]}=... gives unconditional values for classifier-free guidance, but no guidance of "
                'this pipeline takes it; add [[guidance]] name = "classifier-free" (or '
                "pipe.with_guidance([...])), or drop it"
            )
        learned = null_embeddings(self.sampling_model)
        if not consumers or not learned:
            return cond
        for key in given:
            if not isinstance(cond[key], Mapping):
                raise CompositionError(
                    f"{key}=... must map conditioning keywords to their unconditional values, e.g. "
                    f"{key}={{'encoder_hidden_states': empty_prompt}} (got {type(cond[key]).__name__})"
                )
        taken: set[str] = set()
        for key in given:
            taken.update(cond[key])
        for g in consumers:
            taken.update(getattr(g, "uncond", None) or {})
        extra = {k: v.detach() for k, v in learned.items() if k not in taken and k in cond}
        if extra:
            target = given[0] if given else UNCOND_KEYWORDS[0]
            cond[target] = {**extra, **dict(cond.get(target) or {})}
        return cond

    def denoiser(self, **conditioning: Any) -> Denoiser:
        """What the sampler calls: guidances ∘ parameterization ∘ sampling model, with ``conditioning``."""
        n = None
        y = conditioning.get("y")
        if isinstance(y, Tensor) and y.ndim == 1:
            n = y.shape[0]
        return self._denoiser(n, conditioning)

    def _make_denoiser(self, conditioning: Mapping[str, Any], spec: ModelSpec | None = None) -> Denoiser:
        from ddkit.pipeline.compile import sampling_model

        model = sampling_model(self)  # compiled when the config says [model] compile = true
        return Denoiser(
            model,
            self.parameterization,
            self.process,
            guidances=self.guidances,
            forms=self.guidance_forms,
            conditioning=conditioning,
            spec=spec if model is self.sampling_model else None,
        )

    def _denoiser(
        self, n: int | None, conditioning: Mapping[str, Any], spec: ModelSpec | None = None
    ) -> Denoiser:
        """The checked denoiser of one call (``spec``: the sampling model's, when the caller has read it)."""
        denoiser = self._make_denoiser(self._conditioning(n, conditioning, spec), spec)
        self.sampler.check(denoiser)
        return denoiser

    def noise(self, n: int, *, generator: Generator = None) -> Tensor:
        """x_T for ``n`` samples: the path's start, standard normal noise of the sample shape on the
        pipeline's device, scaled by sqrt(α² + σ²) at the path's start (σ_max·ε on ``edm``; 1 elsewhere).

        A single generator draws the batch on its own device; a list of ``n`` generators draws
        sample i from generator i (so it does not depend on the batch it is drawn in).
        """
        unit = self._unit_noise(n, generator)
        k = self.process.scale(self.process.num_timesteps - 1, unit)
        return unit if k == 1.0 else unit.mul_(k)

    def _unit_noise(self, n: int, generator: Generator) -> Tensor:
        if self.sample_shape is None:
            raise ConfigError(
                "the sample shape is unknown: the model does not declare one; set [sample] shape = [C, H, W] "
                "in the config or pass x_T=<noise>"
            )
        shape = (n, *self.sample_shape)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, the number of samples (got {n!r})")
        if generator is None:
            return torch.randn(shape, device=self.device)
        if isinstance(generator, torch.Generator):
            return torch.randn(shape, generator=generator, device=generator.device).to(self.device)
        gens = list(generator)
        if len(gens) != n:
            raise ValueError(f"a list of generators must hold one per sample: {n} (got {len(gens)})")
        draws = [torch.randn(self.sample_shape, generator=g, device=g.device).to(self.device) for g in gens]
        return torch.stack(draws)

    def _start(
        self, n: int | None, x_T: Tensor | None, generator: Generator, spec: ModelSpec | None = None
    ) -> tuple[int, Tensor]:
        # Before any work: n, x_T (NumPy and float64 taken), its shape and the generator.
        n, x = checks.check_sampling_start(
            n, x_T, generator, self.sampling_model, self.sample_shape, spec=spec
        )
        if x is not None:
            return n, x.to(self.device)
        return n, self.noise(n, generator=generator)

    @contextlib.contextmanager
    def _eval(self, model: nn.Module) -> Iterator[None]:
        if not any(m.training for m in model.modules()):
            yield  # in eval mode throughout already: switching would only walk the modules twice
            return
        training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(training)

    def samples_iter(
        self,
        n: int | None = None,
        *,
        generator: Generator = None,
        x_T: Tensor | None = None,
        progress: bool = False,
        init: Tensor | None = None,
        strength: float | None = None,
        mask: Tensor | None = None,
        known: Tensor | None = None,
        **conditioning: Any,
    ) -> Iterator[SamplerState]:
        """Yield the sampler's states from noise to data; the last state's ``x`` is the sample.

        Arguments as :meth:`sample`. Gradients are off between the states, except where a
        guidance turns them on for itself. In a latent pipeline the states hold latents
        (:meth:`decode` turns the last one into data).
        """
        spec = model_spec(self.sampling_model)  # read once per call: it inspects the model's forward
        n, x = self._start(n, x_T, generator, spec)
        denoiser = self._denoiser(n, conditioning, spec)
        model = self.sampling_model
        init, mask, known = self._inputs(x, init, mask, known)
        steps = self.sampler.iterate(
            denoiser,
            x,
            generator=generator,
            progress=progress,
            init=init,
            strength=strength,
            mask=mask,
            known=known,
        )
        with self._eval(model):
            while True:
                with torch.no_grad():
                    state = next(steps, None)
                if state is None:
                    return
                yield state

    def sample(
        self,
        n: int | None = None,
        *,
        generator: Generator = None,
        x_T: Tensor | None = None,
        progress: bool = False,
        decode: bool = True,
        init: Tensor | None = None,
        strength: float | None = None,
        mask: Tensor | None = None,
        known: Tensor | None = None,
        **conditioning: Any,
    ) -> Tensor:
        """Draw ``n`` samples (shape ``[n, *sample_shape]``) with the pipeline's sampler and guidances.

        ``generator`` (one, or one per sample) makes the draw reproducible; ``x_T`` gives the
        starting noise; ``conditioning`` goes to the model (``y``: one label or one per sample).
        ``init`` + ``strength`` start from an image (image-to-image); ``mask`` (1 = known) +
        ``known`` inpaint. ``uncond={keyword: value}`` (or ``negative=``) gives classifier-free
        guidance the unconditional value of any conditioning keyword for this call.

        In a latent pipeline ``x_T`` is latent noise, ``init``, ``known`` and ``mask`` are in
        data space (a latent element is known only where all its pixels are, see
        :func:`~ddkit.pipeline.latent.latent_mask`), and the samples are decoded unless
        ``decode=False``, which returns the latents.
        """
        spec = model_spec(self.sampling_model)  # read once per call: it inspects the model's forward
        n, x = self._start(n, x_T, generator, spec)
        denoiser = self._denoiser(n, conditioning, spec)
        init, mask, known = self._inputs(x, init, mask, known)
        with self._eval(self.sampling_model), torch.no_grad():
            z = self.sampler.sample(
                denoiser,
                x,
                generator=generator,
                progress=progress,
                init=init,
                strength=strength,
                mask=mask,
                known=known,
            )
        return self.decode(z) if decode else z

    # -- reinforcement learning ----------------------------------------------------------

    def rollout(
        self,
        n: int | None = None,
        *,
        generator: Generator = None,
        x_T: Tensor | None = None,
        reduction: str = "mean",
        init: Tensor | None = None,
        strength: float | None = None,
        mask: Tensor | None = None,
        known: Tensor | None = None,
        **conditioning: Any,
    ) -> Trajectory:
        """Sample as :meth:`sample` does; return the whole :class:`~ddkit.Trajectory` with log-probabilities.

        ``traj.log_probs[k]`` is the log-density of step k's drawn transition under the current
        weights (``reduction``: ``"mean"`` or ``"sum"`` over the non-batch dimensions; with
        inpainting only generated elements count). Needs a stochastic sampler that describes its
        steps (:meth:`~ddkit.sampling.SamplerBase.transition`): ddpm, ddim with eta > 0,
        euler-ancestral, flow-sde. In a latent pipeline the states are latents.

        .. versionadded:: 0.2.0
        """
        from ddkit.pipeline.rollout import rollout

        return rollout(
            self,
            n,
            generator=generator,
            x_T=x_T,
            reduction=reduction,
            init=init,
            strength=strength,
            mask=mask,
            known=known,
            **conditioning,
        )

    def transition_log_prob(self, traj: Trajectory, step: int, *, reduction: str = "mean") -> Tensor:
        """log p_θ(x_{k+1} | x_k) of a stored step under the current weights, ``[n]``, differentiable.

        One model forward (no sampler loop); under the weights that drew ``traj`` it equals
        ``traj.log_probs[step]``. The ratio of PPO (DDPO, Flow-GRPO) is
        ``exp(pipe.transition_log_prob(traj, k) - traj.log_probs[k])``.

        .. versionadded:: 0.2.0
        """
        from ddkit.pipeline.rollout import transition_log_prob

        return transition_log_prob(self, traj, step, reduction=reduction)

    # -- training loss -------------------------------------------------------------------

    def loss(
        self,
        x0: Tensor,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        model: Callable[..., Tensor] | None = None,
        **conditioning: Any,
    ) -> dict[str, Tensor]:
        """Per-sample training losses of the (raw, not EMA) model on the batch ``x0``.

        Returns ``loss`` and, where they apply, ``mse`` and ``vb`` (guided-diffusion's
        ``training_losses``). ``t`` defaults to timesteps drawn uniformly and ``noise`` to
        standard normal noise, both from ``generator`` (or torch's global generator).
        ``model`` replaces the network call (e.g. a DistributedDataParallel wrapper of it).
        In a latent pipeline ``x0`` are latents: pass ``pipe.encode(x)`` (the Trainer does).
        """
        from ddkit.diffusion.losses import training_losses

        checks.check_loss_inputs(
            self.process, x0, t, noise, self.spec, self._titles["model"], self.sample_shape
        )
        B = x0.shape[0]
        device = generator.device if generator is not None else x0.device
        if t is None:
            t = torch.randint(0, self.process.num_timesteps, (B,), generator=generator, device=device)
            t = t.to(x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
        cond = checks.normalize_conditioning(
            B, conditioning, self.model, self.spec, self._titles["model"], x0.device, check_values=False
        )
        result: dict[str, Tensor] = training_losses(
            self.process,
            self.parameterization,
            model if model is not None else self.model,
            x0,
            t,
            noise=noise,
            loss=self.loss_name,
            model_kwargs=cond,
            min_snr_gamma=self.min_snr_gamma,
        )
        return result

    # -- saving --------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``ema_<rate>.safetensors`` and ``pipeline.toml`` to ``directory``."""
        from ddkit.pipeline.io import save

        return save(self, directory)

    @classmethod
    def load(cls, directory: str | Path, **objects: Any) -> Pipeline:
        """Rebuild a saved pipeline, checking each weights file's SHA-256 first (:mod:`ddkit.pipeline.io`)."""
        from ddkit.pipeline.io import load

        return load(directory, **objects)

    def to_toml(self) -> str:
        """The normalized config as TOML text (objects marked; they cannot be rebuilt from it)."""
        return _toml.dumps(_plain_config(self.config))

    def __repr__(self) -> str:
        guidance = ", ".join(self._titles["guidance"]) or "none"
        return (
            f"Pipeline({self._titles['model']}, schedule={self.config.get('schedule', {}).get('name', '?')!r}"
            f"×{self.process.num_timesteps}, {self._titles['parameterization']} "
            f"(variance={self.parameterization.variance!r}), {self._titles['sampler']}, "
            f"guidance: {guidance}, "
            + (f"{self._titles['autoencoder']}, " if self.autoencoder is not None else "")
            + f"loss={self.loss_name!r})"
        )


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config for TOML: a None parameter whose default differs is written ``"none"``, others dropped.

    TOML has no null, and a missing key means the default (:mod:`ddkit.pipeline.nulls`).
    """
    from ddkit.pipeline.config import PART_KINDS
    from ddkit.pipeline.nulls import write_nulls

    def part(section: str, table: Any) -> Any:
        if not isinstance(table, Mapping) or not isinstance(table.get("name"), str):
            return table
        try:
            factory = registry_factory(PART_KINDS[section], table["name"])
        except Exception:  # an object's marker or an unknown name: nothing to look up
            factory = None
        return write_nulls(table, factory)

    config = {
        section: (
            [part(section, t) for t in value]
            if section == "guidance" and isinstance(value, list)
            else part(section, value)
            if section in PART_KINDS
            else value
        )
        for section, value in config.items()
    }

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and math.isnan(value):
            return value
        return value

    return {k: clean(v) for k, v in config.items() if v is not None}


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, naming the file and line in a syntax error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no config file at {str(p)!r}")
    try:
        return _toml.load(p)
    except _toml.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
