"""The registry's factories: ``ddkit.create("model", name, **flags)``.

Keyword names and values are guided-diffusion's (``create_model``, ``sr_create_model``,
``create_classifier``), with its scripts' defaults: typed values (``True``, ``(1, 2, 2)``) and,
for the list-valued flags, its strings (``"1,2,2"``, ``"32,16,8"``). ``ddkit.create`` checks
types against these signatures; a whole command line of strings (``"--use_fp16 True"``) goes
through :func:`ddkit_models.load_checkpoint`, which converts every flag first.

The signatures spell out every flag, although the three share most of them: they are what
``ddkit.create`` checks keywords against and what the docs' catalogue lists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ddkit_models.classifier import ADMClassifier
from ddkit_models.flags import classifier_config, model_config, superres_config
from ddkit_models.mlp import MLPDenoiser
from ddkit_models.unet import ADMSuperRes, ADMUNet

__all__ = ["adm_classifier", "adm_superres", "adm_unet", "mlp"]


def _given(values: dict[str, Any], fn: Callable[..., Any]) -> dict[str, Any]:
    """The arguments the caller gave: those not left at the signature's default, and ``**extra``.

    Only these reach the flag checks, so that e.g. an explicit ``out_channels`` is not
    taken to contradict a ``learn_sigma`` the caller never set.
    """
    extra = values.pop("extra")
    params = inspect.signature(fn).parameters
    return {**{k: v for k, v in values.items() if params[k].default is not v}, **extra}


def adm_unet(
    *,
    image_size: int = 64,
    num_channels: int = 128,
    num_res_blocks: int = 2,
    channel_mult: str | Sequence[float] = "",
    learn_sigma: bool = False,
    class_cond: bool = False,
    use_checkpoint: bool = False,
    attention_resolutions: str | Sequence[int] = "16,8",
    num_heads: int = 4,
    num_head_channels: int = -1,
    num_heads_upsample: int = -1,
    use_scale_shift_norm: bool = True,
    dropout: float = 0.0,
    resblock_updown: bool = False,
    use_fp16: bool = False,
    use_new_attention_order: bool = False,
    in_channels: int = 3,
    null_class: bool = False,
    attention_backend: str = "auto",
    memory_format: str = "auto",
    **extra: Any,
) -> ADMUNet:
    """The ADM U-Net from guided-diffusion's model flags.

    ``channel_mult=""`` picks the multipliers for ``image_size``; ``attention_resolutions``
    are resolutions (``"32,16,8"``). ddkit additions: ``in_channels``, ``null_class`` (an
    extra label row for classifier-free guidance), ``attention_backend``, ``memory_format``
    (``"auto"``: channels-last activations on a CPU), and the
    keywords ``model_channels`` (= ``num_channels``), ``num_classes`` (implies class
    conditioning), ``out_channels``, ``dims``, ``conv_resample``.
    """
    values = _given(dict(locals()), adm_unet)
    return ADMUNet(**model_config(values))


def adm_superres(
    *,
    large_size: int = 256,
    small_size: int = 64,
    num_channels: int = 128,
    num_res_blocks: int = 2,
    learn_sigma: bool = False,
    class_cond: bool = False,
    use_checkpoint: bool = False,
    attention_resolutions: str | Sequence[int] = "16,8",
    num_heads: int = 4,
    num_head_channels: int = -1,
    num_heads_upsample: int = -1,
    use_scale_shift_norm: bool = True,
    dropout: float = 0.0,
    resblock_updown: bool = False,
    use_fp16: bool = False,
    in_channels: int = 3,
    null_class: bool = False,
    attention_backend: str = "auto",
    memory_format: str = "auto",
    **extra: Any,
) -> ADMSuperRes:
    """The ADM upsampler from guided-diffusion's super-resolution flags.

    Called as ``model(x, t, low_res=image_at_small_size, y=labels)``. Accepts the
    :func:`adm_unet` additions too, ``image_size`` meaning ``large_size`` and
    ``channel_mult`` overriding the per-size default.
    """
    values = _given(dict(locals()), adm_superres)
    return ADMSuperRes(**superres_config(values))


def adm_classifier(
    *,
    image_size: int = 64,
    classifier_width: int = 128,
    classifier_depth: int = 2,
    classifier_attention_resolutions: str | Sequence[int] = "32,16,8",
    classifier_use_scale_shift_norm: bool = True,
    classifier_resblock_updown: bool = True,
    classifier_pool: str = "attention",
    classifier_use_fp16: bool = False,
    in_channels: int = 3,
    attention_backend: str = "auto",
    memory_format: str = "auto",
    **extra: Any,
) -> ADMClassifier:
    """The noisy-image classifier from guided-diffusion's classifier flags.

    ``classifier(x, t) -> logits``. Pools: ``adaptive``, ``attention``, ``spatial``,
    ``spatial_v2``. Shorter names are accepted (``width``, ``depth``, ``pool``), and ddkit
    additions ``num_classes`` (1000), ``channel_mult`` (per-size default),
    ``num_head_channels`` (64), ``dropout``.
    """
    values = _given(dict(locals()), adm_classifier)
    return ADMClassifier(**classifier_config(values))


def mlp(
    *,
    dim: int = 2,
    hidden: int = 256,
    depth: int = 3,
    num_classes: int | None = None,
    out_dim: int | None = None,
    learn_sigma: bool = False,
    dropout: float = 0.0,
    time_scale: float = 1.0,
    skip: bool = True,
) -> MLPDenoiser:
    """A time-conditioned residual MLP for vector data ``[B, dim]``.

    ``num_classes`` makes it class-conditional, with the null class (for classifier-free
    guidance) at index ``num_classes``; ``learn_sigma`` doubles the output for learned
    variances. ``time_scale`` multiplies ``t`` before its sinusoidal embedding. ``skip`` adds
    a time-dependent linear path from ``x`` to the outputs shaped like it, so predictions keep
    growing with ``x`` off the data (see :class:`~ddkit_models.mlp.MLPDenoiser`).
    """
    return MLPDenoiser(
        dim=dim,
        hidden=hidden,
        depth=depth,
        num_classes=num_classes,
        out_dim=out_dim,
        learn_sigma=learn_sigma,
        dropout=dropout,
        time_scale=time_scale,
        skip=skip,
    )
