"""Checks that the parts of a pipeline fit together; each mismatch names both parts and the fix.

Run when a pipeline is built (model against parameterization, sample shape and guidances;
guidances against the sampler), when it samples (the number of samples, ``x_T`` and the
conditioning against the model) and when it computes a loss (``x0`` and ``t`` against the
model and the schedule), always before any model evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ddkit.denoiser import choose_form
from ddkit.diffusion.parameterization import GaussianParameterization, output_channel_error
from ddkit.errors import CompositionError, InputError, InputTypeError
from ddkit.protocols import Generator, Guidance, ModelSpec, Sampler, declares_spec
from ddkit.sampling.inputs import check_generator, check_x_T, weights_dtype

__all__ = [
    "check_channels",
    "check_guidances",
    "check_loss_inputs",
    "check_sampling_start",
    "declares_spec",
    "normalize_conditioning",
    "probe_conditioning",
]


def probe_conditioning() -> dict[str, Any]:
    """Conditioning that stands for "class labels given" when a composition is checked before sampling."""
    return {"y": torch.zeros(1, dtype=torch.long)}


def _variance_title(param: GaussianParameterization, title: str) -> str:
    return f"{title} (variance={param.variance!r})"


def check_channels(
    spec: ModelSpec,
    model_title: str,
    param: GaussianParameterization,
    param_title: str,
    sample_shape: Sequence[int] | None,
) -> None:
    """The model's output channels against the variance mode, and the sample shape against its input."""
    declared = tuple(spec.sample_shape) if spec.sample_shape is not None else None
    if sample_shape is not None and declared is not None and len(sample_shape) != len(declared):
        raise CompositionError(
            f"[sample] shape {list(sample_shape)} has {len(sample_shape)} dimensions, but {model_title} "
            f"samples shape {list(declared)}; set shape = {list(declared)} or change the model"
        )
    if sample_shape is not None and spec.in_channels is not None and sample_shape[0] != spec.in_channels:
        raise CompositionError(
            f"[sample] shape {list(sample_shape)} has {sample_shape[0]} channels, but {model_title} takes "
            f"{spec.in_channels} (in_channels={spec.in_channels}); set shape = "
            f"[{spec.in_channels}, {', '.join(map(str, sample_shape[1:]))}] or change the model"
        )
    channels = (
        spec.in_channels if spec.in_channels is not None else (sample_shape[0] if sample_shape else None)
    )
    if channels is None or spec.out_channels is None:
        return
    if spec.out_channels != param.output_channels(channels):
        raise CompositionError(
            f"{model_title} does not fit {_variance_title(param, param_title)}: "
            + output_channel_error(param, channels, spec.out_channels)
        )


def check_guidances(
    guidances: Sequence[Guidance],
    titles: Sequence[str],
    sampler: Sampler,
    sampler_title: str,
    spec: ModelSpec,
    model_title: str,
) -> tuple[str, ...]:
    """The form each guidance acts in under ``sampler``; raise when a guidance cannot run there.

    Each guidance also checks the model with class labels present (every guidance ddkit ships
    steers towards labels), so classifier-free guidance on a model without a null class fails here.
    """
    forms = []
    for guidance, title in zip(guidances, titles):
        forms.append(choose_form(guidance, tuple(sampler.guidance_forms), sampler_title))
        try:
            guidance.check(spec, probe_conditioning())
        except CompositionError as exc:
            raise CompositionError(f"{title} does not fit {model_title}: {exc}") from exc
    return tuple(forms)


def normalize_conditioning(
    n: int | None,
    conditioning: Mapping[str, Any],
    model: object,
    spec: ModelSpec,
    model_title: str,
    device: torch.device,
    *,
    labels_used_elsewhere: bool = False,
    check_values: bool = True,
) -> dict[str, Any]:
    """The conditioning as the model takes it (``y`` as a long tensor [n] on ``device``), checked.

    ``y`` may be one label for the whole batch, a list, or a tensor. Labels given to an
    unconditional model are an error unless a guidance uses them (``labels_used_elsewhere``,
    e.g. classifier guidance steering an unconditional model). ``check_values=False`` skips
    the label range check, which reads the labels back to the host (training steps skip it).
    """
    cond = dict(conditioning)
    y = cond.get("y")
    if y is None:
        cond.pop("y", None)
        if spec.num_classes is not None and spec.null_class is None:
            raise CompositionError(
                f"{model_title} is class-conditional ({spec.num_classes} classes) but no class labels were "
                "given; pass y=<a label, or one label per sample>"
            )
        return cond
    if declares_spec(model) and spec.num_classes is None and not labels_used_elsewhere:
        raise CompositionError(
            f"class labels y were given, but {model_title} is unconditional (its spec declares no classes) "
            "and no guidance uses labels; drop y, or use a class-conditional model (e.g. adm-unet with "
            "class_cond = true)"
        )
    labels = _labels(y)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise CompositionError(f"class labels y must be integers (got dtype {labels.dtype})")
    labels = labels.to(device=device, dtype=torch.long)
    if labels.ndim == 0 and n is not None:
        labels = labels.expand(n)
    if labels.ndim != 1 or (n is not None and labels.shape[0] != n):
        want = f"[{n}]" if n is not None else "[batch]"
        raise CompositionError(
            f"class labels y must have shape {want}, one per sample (got {tuple(labels.shape)})"
        )
    if check_values and spec.num_classes is not None and labels.numel():
        allowed = {spec.null_class} if spec.null_class is not None else set()
        lo, hi = int(labels.min()), int(labels.max())
        bad = [v for v in (lo, hi) if not 0 <= v < spec.num_classes and v not in allowed]
        if bad:
            null = f" or {spec.null_class} (null)" if spec.null_class is not None else ""
            raise CompositionError(
                f"class label {bad[0]} is outside {model_title}'s labels 0..{spec.num_classes - 1}{null}"
            )
    cond["y"] = labels
    return cond


def _labels(y: object) -> Tensor:
    """``y`` as a tensor, or a clear refusal of something that is not integer class labels."""
    if isinstance(y, Tensor):
        return y
    if isinstance(y, (str, bytes)) or (isinstance(y, (list, tuple)) and any(isinstance(v, str) for v in y)):
        raise InputTypeError(
            f"class labels y must be integers, one label or one per sample (got {y!r}); map class names "
            "to their indices first, e.g. y=classes.index('cat')"
        )
    try:
        return torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputTypeError(
            f"class labels y must be an int, a list of ints or an integer tensor (got {type(y).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


def _count(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InputTypeError(
            f"n must be a positive int, the number of samples (got {type(n).__name__} {n!r})"
        )
    if n < 1:
        raise InputError(f"n must be a positive int, the number of samples (got {n!r})")
    return n


def check_sampling_start(
    n: object,
    x_T: object,
    generator: Generator,
    model: object,
    sample_shape: Sequence[int] | None = None,
    *,
    spec: ModelSpec | None = None,
) -> tuple[int, Tensor | None]:
    """The number of samples and ``x_T`` (or ``None``: draw it), checked before any sampling work.

    A NumPy ``x_T`` becomes a tensor; an ``x_T`` of another floating dtype than the model's
    weights (float64 noise for float32 weights) is cast to theirs (the sample comes back in it);
    ``x_T`` must fit the model's declared shape and ``sample_shape`` (the pipeline's, latent in
    a latent pipeline). Its finiteness is the sampler's check (:mod:`ddkit.sampling.inputs`).
    """
    count = None if n is None else _count(n)
    x: Tensor | None = None
    if x_T is not None:
        import numpy as np

        if isinstance(x_T, np.ndarray) and np.issubdtype(x_T.dtype, np.floating):
            x_T = torch.from_numpy(x_T)
        # float32 noise is left as it is (the model casts it): no walk over the weights then.
        dtype = weights_dtype(model) if isinstance(x_T, Tensor) and x_T.dtype != torch.float32 else None
        if isinstance(x_T, Tensor) and dtype is not None and _recast(x_T, dtype):
            x_T = x_T.to(dtype)  # float64 or float16 noise for float32 weights (and so on)
        # The declared shape; the dtype fits now (cast above, or float32, which every model takes).
        x = check_x_T(x_T, None if spec is not None else model, finite=False, spec=spec)
        if sample_shape is not None and tuple(x.shape[1:]) != tuple(sample_shape):
            raise InputError(
                f"x_T has samples of shape {list(x.shape[1:])}, but the pipeline samples shape "
                f"{list(sample_shape)}; give x_T of shape [B, {', '.join(map(str, sample_shape))}]"
            )
        if count is not None and x.shape[0] != count:
            raise InputError(f"x_T holds {x.shape[0]} samples but n={count}; give one of them, or both equal")
        count = x.shape[0]
    if count is None:
        raise InputError("give n, the number of samples, or x_T, the starting noise")
    check_generator(generator, count)
    return count, x


def _recast(x: Tensor, weights: torch.dtype) -> bool:
    """Whether noise of ``x``'s dtype is cast to the weights' (float32 noise is left to the model)."""
    return x.is_floating_point() and x.dtype not in (weights, torch.float32)


def check_loss_inputs(
    process: Any,
    x0: object,
    t: object,
    noise: object,
    spec: ModelSpec,
    model_title: str,
    sample_shape: Sequence[int] | None = None,
) -> None:
    """``x0``, ``t`` and ``noise`` of a training loss against the model and the schedule.

    ``t`` must be one step per sample: integer steps in [0, T − 1], fractional steps on a path
    down to −1 (its clean end). Negative steps never wrap around to the end of the schedule.
    The range check reads ``t`` and runs only for a CPU ``t`` (free there); on an accelerator it
    would stall every training step, and the trainer's own draws are in range by construction.
    """
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        got = f"dtype {x0.dtype}" if isinstance(x0, Tensor) else type(x0).__name__
        raise InputTypeError(f"x0 must be a floating-point tensor of data, shape [B, C, ...] (got {got})")
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise InputError(
            f"x0 must be a batch of data of shape [B, C, ...] with B >= 1 (got {tuple(x0.shape)}); "
            "for scalar data use shape [B, 1]"
        )
    shape = tuple(x0.shape[1:])
    declared = tuple(spec.sample_shape) if spec.sample_shape is not None else None
    if sample_shape is not None:
        declared = tuple(sample_shape)  # the pipeline's (latent, in a latent pipeline): what x0 must be
    if (declared is not None and len(declared) == len(shape) and shape != declared) or (
        spec.in_channels is not None and shape[0] != spec.in_channels
    ):
        want = list(declared) if declared is not None else f"[{spec.in_channels}, ...]"
        raise InputError(
            f"x0 has samples of shape {list(shape)}, but {model_title} takes {want}: the data does not "
            "fit the model; resize the data or build the model for this shape"
        )
    if noise is not None and (not isinstance(noise, Tensor) or noise.shape != x0.shape):
        what = str(tuple(noise.shape)) if isinstance(noise, Tensor) else type(noise).__name__
        raise InputError(f"noise must be a tensor shaped like x0 {tuple(x0.shape)} (got {what})")
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise InputTypeError(
            f"t must be a tensor of timesteps, one per sample (got {type(t).__name__}); "
            f"e.g. torch.full(({x0.shape[0]},), {t!r})"
        )
    if t.dtype == torch.bool or t.is_complex():
        raise InputTypeError(f"t must hold integer (or fractional) timesteps (got dtype {t.dtype})")
    if t.shape != (x0.shape[0],):
        raise InputError(
            f"t must have shape [{x0.shape[0]}], one timestep per sample of x0 (got {tuple(t.shape)})"
        )
    if t.device.type != "cpu" or t.numel() == 0:
        return
    total = int(process.num_timesteps)
    low = -1.0 if t.is_floating_point() and getattr(process, "path", None) is not None else 0.0
    lo, hi = float(t.min()), float(t.max())
    if not (low <= lo and hi <= total - 1):  # also false for NaN
        bad = lo if not low <= lo else hi
        raise InputError(
            f"timestep {bad:g} in t is outside the schedule's steps {low:g}..{total - 1} (T = {total}); "
            "negative steps do not count from the end: give t in that range"
        )
