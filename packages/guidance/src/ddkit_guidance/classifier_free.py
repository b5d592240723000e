"""Classifier-free guidance (Ho & Salimans 2022): one batched forward over [conditional; unconditional].

guided = uncond + w·(cond − uncond) on the mean channels of the output; variance channels
(learned-variance models) come from the conditional half, as GLIDE does. Options: a scale
schedule over t (:mod:`ddkit_guidance.scales`), Lin et al. 2023's rescale φ, and Kynkäänniemi
et al. 2024's limited interval, outside of which the model runs on the conditional half alone.

The unconditional half replaces each conditioning keyword by its null value: ``y`` by the null
class, any other keyword (``encoder_hidden_states``, ``context``, ...) by a value given as the
guidance parameter ``uncond`` (alias ``negative``; older name ``null_cond``), at sampling time
as ``pipe.sample(..., uncond={...})``, or by the model's learned null embedding
(:mod:`ddkit.conditioning`). Sampling-time values win over the parameter, the parameter over a
learned embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ddkit.errors import CompositionError, ConfigError
from ddkit.protocols import UNCOND_KEYWORDS, ModelFn, ModelSpec, model_spec
from ddkit_guidance._checks import check_unit_interval
from ddkit_guidance.scales import GuidanceScale, ScaleLike

__all__ = ["ClassifierFreeGuidance", "rescale_guided"]


def rescale_guided(guided: Tensor, cond: Tensor, rescale: float) -> Tensor:
    """Lin et al. 2023, eq. 15–16: match the guided prediction's std to the conditional one's, mix by φ.

    Stds are taken per sample over all non-batch dimensions (unbiased, as the paper's code);
    a sample whose guided std is zero is left as it is.
    """
    if rescale == 0.0:
        return guided
    dims = list(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    ratio = torch.where(std_guided > 0, std_cond / std_guided, torch.ones_like(std_guided))
    return rescale * (guided * ratio) + (1.0 - rescale) * guided


def _interval(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    msg = f"'interval' must be a pair (t_lo, t_hi) of training timesteps with 0 ≤ t_lo ≤ t_hi (got {value!r})"
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(msg)
    lo, hi = value
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi))
    if not ok or not 0 <= lo <= hi:
        raise ConfigError(msg)
    return float(lo), float(hi)


def _null_values(name: str, value: object) -> dict[str, Any]:
    """A mapping of conditioning keyword to null value, with TOML-writable forms read.

    A value may be a tensor (or anything ``torch.as_tensor`` takes: a number fills the
    conditioning's shape, nested lists give a tensor) or a string: the path of a
    ``.safetensors`` file holding one tensor, or a tensor stored under the keyword's name.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(
            f"'{name}' must map conditioning keywords to null values, e.g. "
            f"{name}={{'encoder_hidden_states': empty_prompt_embedding}} (got {value!r})"
        )
    out: dict[str, Any] = {}
    for key, null in value.items():
        if key in UNCOND_KEYWORDS:
            raise ConfigError(f"'{name}' cannot give a null value for {key!r}: it is not a model keyword")
        if isinstance(null, str):
            null = _load_null(name, key, null)
        elif not isinstance(null, Tensor):
            try:
                null = torch.as_tensor(null)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ConfigError(
                    f"'{name}'[{key!r}] must be a tensor, a number, nested lists or a .safetensors path "
                    f"(got {type(null).__name__}: {exc})"
                ) from None
        out[key] = null
    return out


def _load_null(name: str, key: str, path: str) -> Tensor:
    from pathlib import Path

    from safetensors.torch import load_file

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"'{name}'[{key!r}] names the file {path!r}, which does not exist")
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # not a safetensors file
        raise ConfigError(f"'{name}'[{key!r}]: {path!r} cannot be read as safetensors ({exc})") from None
    if key in tensors:
        return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise ConfigError(
        f"'{name}'[{key!r}]: {path!r} holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:5])}) "
        f"and none named {key!r}; store one tensor, or one under that name"
    )


def _null_class(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"'null_class' must be an int ≥ 0, the label of 'no class' (got {value!r})")
    return value


class ClassifierFreeGuidance:
    """Classifier-free guidance with scale ``w``: w = 1 is conditional sampling, w = 0 unconditional.

    ``null_class`` is the label of "no class" used for ``y`` in the unconditional half
    (default: the model's ``spec.null_class``, else its ``num_classes``, the extra row a
    model trained with condition dropout has). ``uncond`` (alias ``negative``, older name
    ``null_cond``) gives the null value of any conditioning keyword, e.g.
    ``{"encoder_hidden_states": empty_prompt_embedding}``, for one sample, ``(1, ...)`` or the
    whole batch; in a TOML config a value may be a number, nested lists or a ``.safetensors``
    path (see the module doc). ``pipe.sample(..., uncond={...})`` overrides it for one call.
    ``scale`` may be a list or a callable of t (see :class:`~ddkit_guidance.GuidanceScale`;
    ``num_timesteps`` is the range of t a list is spread over). ``rescale`` is φ of Lin et
    al. 2023; ``interval = (t_lo, t_hi)`` guides only where t_lo ≤ t ≤ t_hi.

    .. versionadded:: 0.1.0
    """

    name = "classifier-free"
    forms: tuple[str, ...] = ("model",)
    #: Sampling keywords it takes for itself (never passed to the network).
    consumes: tuple[str, ...] = UNCOND_KEYWORDS

    def __init__(
        self,
        scale: ScaleLike = 3.0,
        *,
        null_class: int | None = None,
        null_cond: Mapping[str, Any] | None = None,
        uncond: Mapping[str, Any] | None = None,
        negative: Mapping[str, Any] | None = None,
        rescale: float = 0.0,
        interval: Sequence[float] | None = None,
        num_timesteps: int = 1000,
    ) -> None:
        self.scale = GuidanceScale(scale, num_timesteps=num_timesteps)
        self.null_class = _null_class(null_class)
        given = [
            (n, v)
            for n, v in (("uncond", uncond), ("negative", negative), ("null_cond", null_cond))
            if v is not None
        ]
        if len(given) > 1:
            raise ConfigError(
                f"give the null values once: {' and '.join(n for n, _ in given)} are aliases of one "
                "parameter; keep 'uncond'"
            )
        name, value = given[0] if given else ("uncond", None)
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"'{name}' must map conditioning keys to null values (got {value!r})")
        self.null_cond: dict[str, Any] = _null_values(name, value)
        self.rescale = check_unit_interval("rescale", rescale)
        self.interval = _interval(interval)

    @property
    def uncond(self) -> dict[str, Any]:
        """The null value of each conditioning keyword given as a parameter (``uncond``/``negative``)."""
        return self.null_cond

    def __repr__(self) -> str:
        return (
            f"ClassifierFreeGuidance(scale={self.scale!r}, null_class={self.null_class!r}, "
            f"uncond={sorted(self.null_cond)}, rescale={self.rescale}, interval={self.interval})"
        )

    def resolve_null_class(self, spec: ModelSpec) -> int:
        """The label of "no class" for a model with ``spec``, or :class:`CompositionError`."""
        if self.null_class is not None:
            if spec.num_classes is not None and self.null_class > spec.num_classes:
                raise CompositionError(
                    f"null_class={self.null_class} is outside the model's labels: it has num_classes="
                    f"{spec.num_classes}, so the null row (if trained with condition dropout) is "
                    f"{spec.num_classes}; pass null_class={spec.num_classes} or leave it unset"
                )
            return self.null_class
        if spec.null_class is not None:
            return spec.null_class
        if spec.num_classes is not None:
            return spec.num_classes
        raise CompositionError(
            "classifier-free guidance needs the label of 'no class' for the unconditional half, but the "
            "model declares neither null_class nor num_classes; pass null_class=<the label the model was "
            "trained with under condition dropout>, or uncond={'y': <null labels>}"
        )

    def check(self, spec: ModelSpec, conditioning: Mapping[str, Any]) -> None:
        """Raise :class:`CompositionError` unless there is a condition to drop and a null value for it.

        Null values given for keywords the call does not pass are reported at the first model
        call (a pipeline checks itself before it knows the sampling keywords).
        """
        nulls = {**self.null_cond, **_sampling_nulls(conditioning)}
        has_y = conditioning.get("y") is not None
        if not has_y and not nulls:
            raise CompositionError(
                "classifier-free guidance needs a condition to drop: the conditioning has no 'y' (class "
                "labels) and no unconditional value is given; pass y=labels, or "
                "uncond={'encoder_hidden_states': <its unconditional value>}"
            )
        if has_y and "y" not in nulls:
            # A model without classes that takes other conditioning gets their unconditional values
            # from the parameter, the call or a learned null embedding; the labels steer another guidance.
            other = nulls or spec.conditioning is None or bool(spec.conditioning)
            if not (other and spec.num_classes is None and spec.null_class is None):
                self.resolve_null_class(spec)

    def wrap_model(self, model: ModelFn, *, mean_channels: int) -> ModelFn:
        """The model call that runs [conditional; unconditional] as one batch and combines them."""
        spec = model_spec(model)
        null = None
        if "y" not in self.null_cond:
            try:
                null = self.resolve_null_class(spec)
            except CompositionError:
                null = None  # raised again at call time if a 'y' has to be dropped
        return _GuidedModel(self, model, spec, mean_channels, null)

    def gradient(self, x: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
        """Not available: classifier-free guidance acts only in the model form."""
        raise CompositionError(
            "classifier-free guidance acts only in the model form (it wraps the network call); "
            "it has no gradient for the score or mean form"
        )

    def active(self, t: Tensor) -> Tensor | None:
        """Which samples are guided at ``t``: ``None`` for all, else a boolean mask [B]."""
        if self.interval is None:
            return None
        lo, hi = self.interval
        return (t >= lo) & (t <= hi)


def _sampling_nulls(conditioning: Mapping[str, Any]) -> dict[str, Any]:
    """The null values given at sampling time as ``uncond=`` or ``negative=`` (one of them)."""
    given = [key for key in UNCOND_KEYWORDS if conditioning.get(key) is not None]
    if not given:
        return {}
    if len(given) > 1:
        raise CompositionError(
            f"{' and '.join(given)} are aliases: give the unconditional values once (uncond={{...}})"
        )
    return _null_values(given[0], conditioning[given[0]])


class _GuidedModel:
    """The wrapped network call; keeps the inner model's spec so later wrappers still see it."""

    __slots__ = ("guidance", "mean_channels", "model", "null_class", "spec")

    def __init__(
        self,
        guidance: ClassifierFreeGuidance,
        model: ModelFn,
        spec: ModelSpec,
        mean_channels: int,
        null: int | None,
    ) -> None:
        self.guidance = guidance
        self.model = model
        self.spec = spec
        self.mean_channels = mean_channels
        self.null_class = null

    def __call__(self, x: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
        g = self.guidance
        B = x.shape[0]
        nulls = g.null_cond
        if any(key in conditioning for key in UNCOND_KEYWORDS):
            nulls = {**nulls, **_sampling_nulls(conditioning)}
            conditioning = {k: v for k, v in conditioning.items() if k not in UNCOND_KEYWORDS}
        missing = sorted(set(nulls) - set(conditioning))
        if missing:
            raise CompositionError(
                f"unconditional values are given for {missing}, but the call passes only "
                f"{sorted(conditioning) or 'no conditioning'}; pass those keywords or drop their null values"
            )
        w = g.scale(t)
        if isinstance(w, float) and w == 1.0:
            return self.model(x, t, **conditioning)  # w = 1 is the conditional prediction, exactly
        mask = g.active(t)
        idx: Tensor | None = None  # the guided samples, None for all
        if mask is not None:
            idx = mask.nonzero().squeeze(1)
            k = int(idx.numel())
            if k == 0:
                return self.model(x, t, **conditioning)
            if k == B:
                idx = None
        x_u = x if idx is None else x[idx]
        t_u = t if idx is None else t[idx]
        cond2 = {key: self._pair(key, value, B, idx, x.device, nulls) for key, value in conditioning.items()}
        out = self.model(torch.cat([x, x_u]), torch.cat([t, t_u]), **cond2)
        out_c, out_u = out[:B], out[B:]
        c = self.mean_channels if self.mean_channels > 0 else x.shape[1]
        cond_mean = out_c[:, :c] if idx is None else out_c[idx, :c]
        if isinstance(w, Tensor):
            w = (w if idx is None else w[idx]).to(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
        uncond_mean = out_u[:, :c]
        guided = uncond_mean + w * (cond_mean - uncond_mean)
        guided = rescale_guided(guided, cond_mean, g.rescale)
        mean = guided if idx is None else out_c[:, :c].index_copy(0, idx, guided)
        if c == out.shape[1]:
            return mean
        return torch.cat([mean, out_c[:, c:]], dim=1)

    def _pair(
        self,
        key: str,
        value: Any,
        B: int,
        idx: Tensor | None,
        device: torch.device,
        null_cond: Mapping[str, Any],
    ) -> Any:
        """The conditioning value for the batch [conditional; unconditional]."""
        if value is None and key not in null_cond:
            return None  # an absent condition stays absent in both halves
        if key == "y" and not isinstance(value, Tensor):
            value = torch.as_tensor(value, device=device)
        if key == "y" and isinstance(value, Tensor) and value.ndim == 0:
            value = value.reshape(1).expand(B)
        batched = isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == B
        if not batched:
            if key in null_cond or key == "y":
                raise CompositionError(
                    f"conditioning {key!r} must be a tensor with one entry per sample (batch {B}) to be "
                    f"replaced by its null value (got {type(value).__name__} "
                    f"{tuple(value.shape) if isinstance(value, Tensor) else ''})"
                )
            return value  # shared by both halves
        k = B if idx is None else int(idx.numel())
        if key in null_cond:
            null = self._null_value(key, null_cond[key], value, B, k, idx)
        elif key == "y":
            if self.null_class is None:
                self.null_class = self.guidance.resolve_null_class(self.spec)
            null = torch.full((k, *value.shape[1:]), self.null_class, dtype=value.dtype, device=value.device)
        else:
            null = value if idx is None else value[idx]
        return torch.cat([value, null])

    @staticmethod
    def _null_value(key: str, null: Any, value: Tensor, B: int, k: int, idx: Tensor | None) -> Tensor:
        """``null`` for ``k`` samples: given for one sample (with or without a batch axis) or for all B."""
        null = torch.as_tensor(null, device=value.device).to(value.dtype)
        result: Tensor
        item = tuple(value.shape[1:])
        if null.ndim == 0:
            result = null.expand(k, *item)
        elif tuple(null.shape) == item:
            result = null.unsqueeze(0).expand(k, *item)
        elif tuple(null.shape) == (1, *item):
            result = null.expand(k, *item)
        elif tuple(null.shape) == tuple(value.shape):
            result = null if idx is None else null[idx]
        else:
            raise CompositionError(
                f"the unconditional value of {key!r} has shape {tuple(null.shape)}, but {key!r} has shape "
                f"{tuple(value.shape)}; give the null value for one sample {item} or (1, ...), "
                f"or for the whole batch {tuple(value.shape)}"
            )
        return result
