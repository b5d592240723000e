"""What a sampling call is given, checked once before its first step, and its result after the last.

Every sampler built on :class:`~ddkit.sampling.SamplerBase` runs these checks, so a bad input
is refused before any model evaluation with a :class:`~ddkit.errors.DdkitError` that names the
value and the fix, instead of a dtype error from inside the network or a sample of NaN:

- ``x_T``: a floating tensor (a NumPy array is taken as one) of shape [B, C, ...], fitting the
  model's declared channels and sample shape, of a dtype the model's weights can take, and
  finite (one ``isfinite`` over ``x_T``: one host synchronisation per call);
- ``generator``: ``None``, a ``torch.Generator``, or one per sample (an int seed is refused
  with the line that makes a generator from it);
- the model's first output: a tensor (a model returning ``None`` is named at its first call);
- the result: one ``isfinite`` over the final sample. A NaN or infinity that appears during
  sampling (from the model, or an unstable step) raises :class:`~ddkit.errors.NonFiniteError`
  after the last step, naming the samples affected and how to find the first bad step; the
  steps themselves stay free of host synchronisation.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ddkit.errors import InputError, InputTypeError, NonFiniteError
from ddkit.protocols import Generator, ModelSpec, SamplerState, model_spec

__all__ = [
    "MAX_STEPS",
    "check_final",
    "check_generator",
    "check_start",
    "check_steps",
    "check_x_T",
    "watch_first_output",
]

#: The most sampling steps a sampler may take: as many as the longest schedule has training steps
#: (:data:`ddkit.diffusion.schedules.MAX_TIMESTEPS`); a continuous solver's grid is built in memory.
MAX_STEPS = 100_000


def check_steps(steps: object) -> int | None:
    """``steps`` if it is None or a positive int of at most :data:`MAX_STEPS`, else a ddkit error."""
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise InputTypeError(f"'steps' must be a positive int (got {steps!r}); None: the sampler's default")
    if steps < 1:
        raise InputError(f"'steps' must be a positive int (got {steps!r}); None: the sampler's default")
    if steps > MAX_STEPS:
        raise InputError(
            f"'steps' must be at most {MAX_STEPS} (got {steps!r}); samplers take 10 to 1000 steps "
            "(None: the sampler's default)"
        )
    return steps


def check_x_T(
    x_T: object,
    model: object = None,
    *,
    name: str = "x_T",
    finite: bool = True,
    spec: ModelSpec | None = None,
) -> Tensor:
    """``x_T`` as a tensor, checked against ``model``'s declared shape and weights' dtype, and finite.

    A NumPy array becomes a tensor (sharing memory). ``finite=False`` skips the one check that
    reads the values (for a caller whose sampler checks them again); ``spec``, when the caller has
    read ``model_spec(model)`` already, saves reading it again (with ``model=None``: the declared
    shape and channels are checked, not the weights' dtype). Raises :class:`InputTypeError` for
    something that is not a floating array and :class:`InputError` (or :class:`NonFiniteError`)
    for a shape, dtype or value the model cannot take.
    """
    x = _as_tensor(x_T, name)
    if not x.is_floating_point():
        raise InputTypeError(
            f"{name} must be a floating-point tensor of standard normal noise (got dtype {x.dtype}); "
            f"use torch.randn(...) or {name}.float()"
        )
    if x.ndim < 2:
        raise InputError(
            f"{name} must have a batch and a channel dimension, shape [B, C, ...] (got {tuple(x.shape)}); "
            "for scalar data use shape [B, 1]"
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} holds no samples (shape {tuple(x.shape)}); give at least one")
    if model is not None or spec is not None:
        _check_fits_model(x, model, name, spec)
    # A finite sum proves every element finite in one cheap reduction (about 10x faster than
    # isfinite(x).all() on CPU); a NaN, an infinity or an overflowing sum takes the exact check.
    if finite and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(dim=1).sum())
        raise NonFiniteError(
            f"{name} holds NaN or infinity (in {bad} of {x.shape[0]} samples); sampling would return NaN: "
            "start from finite noise, e.g. torch.randn(shape)"
        )
    return x


def check_generator(generator: object, batch: int) -> None:
    """Refuse a ``generator`` that cannot draw ``batch`` samples, saying what to pass instead."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, int) and not isinstance(generator, bool):
        raise InputTypeError(
            f"'generator' must be a torch.Generator, one per sample, or None (got the int {generator}); "
            f"for a seed pass generator=torch.Generator().manual_seed({generator})"
        )
    if (
        isinstance(generator, (str, bytes))
        or not isinstance(generator, Sequence)
        or not all(isinstance(g, torch.Generator) for g in generator)
    ):
        raise InputTypeError(
            "'generator' must be None, a torch.Generator, or a list of torch.Generator, one per sample "
            f"(got {type(generator).__name__})"
        )
    if len(generator) != batch:
        raise InputError(
            f"a list of generators must hold one per sample: {batch} (got {len(generator)}); "
            "pass a single torch.Generator to draw the whole batch from one"
        )


def check_start(denoiser: Any, x_T: object, generator: Generator) -> Tensor:
    """Everything a sampling call is given, before its first step (see the module docstring)."""
    model = getattr(denoiser, "model", None)
    spec = getattr(denoiser, "spec", None)  # a Denoiser has read its model's spec
    x = check_x_T(x_T, model, spec=spec if isinstance(spec, ModelSpec) else None)
    check_generator(generator, x.shape[0])
    if isinstance(model, nn.Module):
        param = getattr(denoiser, "parameterization", None)
        channels = getattr(param, "output_channels", None)
        watch_first_output(model, channels if callable(channels) else None)
    return x


def watch_first_output(model: nn.Module, output_channels: Callable[[int], int] | None = None) -> None:
    """Refuse, at the model's next call, an output that is not a tensor shaped for its input.

    ``output_channels(C)`` is how many channels the parameterization expects for C input
    channels. A forward hook that removes itself after one call: no cost on later steps.
    """
    handles: list[Any] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        for handle in handles:
            handle.remove()
        x = args[0] if args and isinstance(args[0], Tensor) else None
        shape = tuple(x.shape) if x is not None else "?"
        title = f"the model {type(module).__name__}"
        if not isinstance(output, Tensor):
            raise InputTypeError(
                f"{title} returned {type(output).__name__} for x of shape {shape}; its "
                "forward(x, t, **conditioning) must return a tensor: the prediction shaped like x "
                "(twice the channels for a learned variance)"
            )
        if x is None or x.ndim < 2:
            return
        want = output_channels(x.shape[1]) if output_channels is not None else None
        fits = output.ndim == x.ndim and output.shape[0] == x.shape[0] and output.shape[2:] == x.shape[2:]
        if not fits or (want is not None and output.shape[1] != want):
            channels = want if want is not None else x.shape[1]
            expected = (x.shape[0], channels, *x.shape[2:])
            raise InputError(
                f"{title} returned shape {tuple(output.shape)} for x of shape {shape}, but the "
                f"parameterization needs {expected}: check the model's out_channels (learn_sigma doubles "
                "them), its image size, and that the data fits the model"
            )

    handles.append(model.register_forward_hook(hook))


def check_final(sampler: str, state: SamplerState, total: int) -> None:
    """After the last of ``total`` steps, refuse a sample holding NaN or infinity (one ``isfinite``)."""
    if state.step + 1 != total or bool(torch.isfinite(state.x).all()):
        return
    bad = int((~torch.isfinite(state.x)).flatten(1).any(dim=1).sum())
    raise NonFiniteError(
        f"sampler {sampler!r}: the sample is NaN or infinite after its last step (step {total} of {total}) "
        f"in {bad} of {state.x.shape[0]} samples, although x_T was finite: the model's output or a step "
        "was not finite. Pass callback=lambda s: print(s.step, s.x.isfinite().all()) to find the first "
        "bad step; check the model's weights (a NaN weight after training), its dtype, and the sampler's "
        "settings (fewer steps or a deterministic sampler)"
    )


def weights_dtype(model: object) -> torch.dtype | None:
    """The one floating dtype of ``model``'s parameters (None: not a module, or mixed precisions)."""
    if not isinstance(model, nn.Module):
        return None
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return next(iter(dtypes)) if len(dtypes) == 1 else None


def _as_tensor(value: object, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch
        np = None  # type: ignore[assignment]
    if np is not None and isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise InputTypeError(
                f"{name} must be floating-point noise (got a NumPy array of dtype {value.dtype}); "
                "use np.random.standard_normal(shape) or .astype(np.float32)"
            )
        return torch.from_numpy(value)
    raise InputTypeError(
        f"{name} must be a torch.Tensor (or a NumPy array) of noise shaped [B, C, ...] "
        f"(got {type(value).__name__}); use torch.randn(n, *sample_shape)"
    )


def _check_fits_model(x: Tensor, model: object, name: str, spec: ModelSpec | None = None) -> None:
    """The sample shape and channels the model declares, and a dtype its weights can take."""
    if spec is None:
        spec = model_spec(model)
    shape = tuple(x.shape[1:])
    if (
        spec.sample_shape is not None
        and len(spec.sample_shape) == len(shape)
        and shape != tuple(spec.sample_shape)
    ):
        raise InputError(
            f"{name} has samples of shape {list(shape)}, but the model declares sample shape "
            f"{list(spec.sample_shape)}; draw x_T of shape [B, {', '.join(map(str, spec.sample_shape))}]"
        )
    if spec.in_channels is not None and shape[0] != spec.in_channels:
        raise InputError(
            f"{name} has {shape[0]} channels (shape {tuple(x.shape)}), but the model takes "
            f"{spec.in_channels} (in_channels={spec.in_channels}); give x_T of shape "
            f"[B, {spec.in_channels}, ...]"
        )
    if x.dtype == torch.float32:
        # float32 noise is what every model takes (a float16 network casts its input itself), so
        # there is no need to walk the model's weights (a U-Net has hundreds) for their dtype.
        return
    dtype = weights_dtype(model)
    if dtype is not None and x.dtype != dtype:
        kind = str(x.dtype).replace("torch.", "")
        weights = str(dtype).replace("torch.", "")
        raise InputError(
            f"{name} is {kind} but the model's weights are {weights}; pass {name}.to({dtype}) "
            f"(Pipeline.sample does this for you), or model.to({x.dtype}) to sample in {kind}"
        )
