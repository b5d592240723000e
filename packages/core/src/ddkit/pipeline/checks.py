"""Checks that the parts of a pipeline fit together; each mismatch names both parts and the fix.

Run when a pipeline is built (model against parameterization, sample shape and guidances;
guidances against the sampler) and when it samples (conditioning against the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ddkit.denoiser import choose_form
from ddkit.diffusion.parameterization import GaussianParameterization, output_channel_error
from ddkit.errors import CompositionError
from ddkit.protocols import Guidance, ModelSpec, Sampler, declares_spec

__all__ = [
    "check_channels",
    "check_guidances",
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
    labels = y if isinstance(y, Tensor) else torch.as_tensor(y)
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
