"""The ADM U-Net of "Diffusion Models Beat GANs" (Dhariwal & Nichol, 2021) and its upsampler.

Constructor arguments are those of guided-diffusion's ``UNetModel`` (``attention_resolutions``
here are *downsample factors*, as there; the flag-level factories in
:mod:`ddkit_models.factories` take resolutions) plus:

- ``null_class``: one extra label-embedding row at index ``num_classes`` meaning "no
  class", for classifier-free guidance (off by default so released checkpoints load);
- ``attention_backend``: ``"auto"``, ``"xformers"``, ``"sdpa"`` or ``"math"``;
- ``memory_format``: ``"auto"`` runs CPU inference on channels-last activations (faster
  oneDNN convolutions; outputs come back in the input's layout), ``"channels_last"``
  always, ``"preserve"`` keeps the input's layout.

Parameter names and shapes equal the reference's for the same configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddkit import ModelSpec
from ddkit.errors import CompositionError
from ddkit_models.attention import AttentionBlock, check_backend
from ddkit_models.blocks import Downsample, ResBlock, TimestepEmbedSequential, Upsample
from ddkit_models.nn import (
    as_timesteps,
    check_memory_format,
    conv_nd,
    convert_convs,
    group_norm_act,
    normalization,
    timestep_embedding,
    to_working_layout,
    zero_module,
)

__all__ = ["ADMSuperRes", "ADMUNet", "Encoder", "build_encoder"]


@dataclass(frozen=True)
class Encoder:
    """What :func:`build_encoder` returns: the down path and its bookkeeping.

    ``skip_channels``: each input block's output channels (the decoder's skips);
    ``channels`` and ``downsample``: the middle block's width and downsample factor;
    ``feature_size``: the summed widths (the classifier's spatial pools read them).
    """

    input_blocks: nn.ModuleList
    middle_block: TimestepEmbedSequential
    skip_channels: list[int]
    channels: int
    downsample: int
    feature_size: int


def _check_common(
    model_channels: int,
    num_res_blocks: int,
    channel_mult: Sequence[float],
    dims: int,
    dropout: float,
) -> None:
    if dims not in (1, 2, 3):
        raise ValueError(f"'dims' must be 1, 2 or 3 (got {dims!r})")
    if model_channels <= 0:
        raise ValueError(f"'model_channels' must be a positive int (got {model_channels!r})")
    if num_res_blocks <= 0:
        raise ValueError(f"'num_res_blocks' must be a positive int (got {num_res_blocks!r})")
    if not channel_mult or any(m <= 0 for m in channel_mult):
        raise ValueError(
            f"'channel_mult' must be a non-empty sequence of positive numbers (got {channel_mult!r})"
        )
    for m in channel_mult:
        if int(m * model_channels) % 32:
            raise ValueError(
                f"every level's channels must be a multiple of 32 for GroupNorm(32): "
                f"model_channels={model_channels} × channel_mult {m} = {int(m * model_channels)}"
            )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"'dropout' must be in [0, 1) (got {dropout!r})")


def build_encoder(
    *,
    in_channels: int,
    model_channels: int,
    num_res_blocks: int,
    attention_resolutions: Iterable[int],
    dropout: float,
    channel_mult: Sequence[float],
    conv_resample: bool,
    dims: int,
    use_checkpoint: bool,
    num_heads: int,
    num_head_channels: int,
    use_scale_shift_norm: bool,
    resblock_updown: bool,
    use_new_attention_order: bool,
    attention_backend: str,
) -> Encoder:
    """The input blocks and middle block shared by the U-Net and the classifier."""
    emb_dim = model_channels * 4
    attn_at = set(attention_resolutions)

    def res(ch: int, out: int, **kw: bool) -> ResBlock:
        return ResBlock(
            ch,
            emb_dim,
            dropout,
            out_channels=out,
            dims=dims,
            use_checkpoint=use_checkpoint,
            use_scale_shift_norm=use_scale_shift_norm,
            **kw,
        )

    def attn(ch: int) -> AttentionBlock:
        return AttentionBlock(
            ch,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_checkpoint=use_checkpoint,
            use_new_attention_order=use_new_attention_order,
            attention_backend=attention_backend,
        )

    ch = int(channel_mult[0] * model_channels)
    blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
    skip_channels, feature_size, ds = [ch], ch, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            out = int(mult * model_channels)
            layers: list[nn.Module] = [res(ch, out)]
            ch = out
            if ds in attn_at:
                layers.append(attn(ch))
            blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
            feature_size += ch
        if level != len(channel_mult) - 1:
            down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, dims, ch)
            blocks.append(TimestepEmbedSequential(down))
            skip_channels.append(ch)
            feature_size += ch
            ds *= 2
    middle = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
    feature_size += ch
    return Encoder(blocks, middle, skip_channels, ch, ds, feature_size)


class ADMUNet(nn.Module):
    """The ADM U-Net: ``model(x, t, y=None) -> [B, out_channels, *spatial]``.

    ``t`` holds training timesteps (``[B]``, possibly fractional); ``y`` class labels
    (``[B]`` long) for a class-conditional model; a model built with ``null_class=True``
    reads a missing ``y`` as the null class. An unconditional model refuses ``y`` (a
    :class:`ddkit.errors.CompositionError`) rather than silently ignoring the labels.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        null_class: bool = False,
        attention_backend: str = "auto",
        memory_format: str = "auto",
    ) -> None:
        super().__init__()
        _check_common(model_channels, num_res_blocks, channel_mult, dims, dropout)
        self.memory_format = check_memory_format(memory_format)
        if num_classes is not None and num_classes <= 0:
            raise ValueError(f"'num_classes' must be a positive int or None (got {num_classes!r})")
        if null_class and num_classes is None:
            raise ValueError(
                "'null_class' needs a class-conditional model: set num_classes (or class_cond=True)"
            )
        check_backend(attention_backend)
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        elif num_heads_upsample <= 0:
            raise ValueError(
                "'num_heads_upsample' must be a positive int, or -1 to use num_heads "
                f"(got {num_heads_upsample!r})"
            )
        attention_resolutions = tuple(attention_resolutions)

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = tuple(channel_mult)
        self.conv_resample = conv_resample
        self.dims = dims
        self.num_classes = num_classes
        self.null_class = null_class
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample

        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + int(null_class), emb_dim)

        common = {
            "dropout": dropout,
            "dims": dims,
            "use_checkpoint": use_checkpoint,
            "use_scale_shift_norm": use_scale_shift_norm,
        }
        enc = build_encoder(
            in_channels=in_channels,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            channel_mult=channel_mult,
            conv_resample=conv_resample,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order,
            attention_backend=attention_backend,
            **common,  # type: ignore[arg-type]
        )
        self.input_blocks = enc.input_blocks
        self.middle_block = enc.middle_block
        skips, ch, ds = list(enc.skip_channels), enc.channels, enc.downsample
        self._feature_size = enc.feature_size

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                out = int(model_channels * mult)
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), emb_dim, out_channels=out, **common)]  # type: ignore[arg-type]
                ch = out
                if ds in attention_resolutions:
                    layers.append(
                        AttentionBlock(
                            ch,
                            num_heads=num_heads_upsample,
                            num_head_channels=num_head_channels,
                            use_checkpoint=use_checkpoint,
                            use_new_attention_order=use_new_attention_order,
                            attention_backend=attention_backend,
                        )
                    )
                if level and i == num_res_blocks:
                    layers.append(
                        ResBlock(ch, emb_dim, out_channels=ch, up=True, **common)  # type: ignore[arg-type]
                        if resblock_updown
                        else Upsample(ch, conv_resample, dims, ch)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch

        first = int(channel_mult[0] * model_channels)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(conv_nd(dims, first, out_channels, 3, padding=1))
        )
        if use_fp16:
            self.convert_to_fp16()

    # -- configuration -------------------------------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        """Channels, sample shape and classes, for the pipeline's composition checks."""
        return ModelSpec(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            sample_shape=self._sample_shape(self.in_channels),
            num_classes=self.num_classes,
            null_class=self.num_classes if self.null_class else None,
        )

    def _sample_shape(self, channels: int) -> tuple[int, ...] | None:
        if self.dims == 3:  # the frame axis is free
            return None
        return (channels, *(self.image_size,) * self.dims)

    def convert_to_fp16(self) -> None:
        """Cast the torso's convolutions to float16, as the reference's ``use_fp16``.

        Norms, embeddings and the output head stay float32. Float16 convolutions are
        slow on most CPUs: prefer ``torch.autocast`` there.
        """
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            convert_convs(part, torch.float16)
        self.dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16`."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            convert_convs(part, torch.float32)
        self.dtype = torch.float32

    def set_attention_backend(self, backend: str) -> None:
        """Switch every attention layer to ``backend`` (``auto``, ``xformers``, ``sdpa``, ``math``)."""
        _set_backend(self, backend)

    # -- forward -------------------------------------------------------------------------

    def _embed(self, x: Tensor, t: Tensor | float, y: Tensor | None) -> Tensor:
        t = as_timesteps(t, x.shape[0], x.device)
        emb = cast(Tensor, self.time_embed(timestep_embedding(t, self.model_channels)))
        if self.num_classes is None:
            if y is not None:
                raise CompositionError(
                    f"this model is unconditional (num_classes=None) but got class labels y= "
                    f"(shape {list(y.shape)}): build it with class_cond=True and num_classes=<N> to "
                    "condition on labels, or call it without y"
                )
        else:
            if y is None:
                if not self.null_class:
                    raise ValueError(
                        f"this model is class-conditional ({self.num_classes} classes): pass y=labels "
                        "(build it with null_class=True to allow unconditional calls)"
                    )
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            elif y.shape != (x.shape[0],):
                raise ValueError(
                    f"y must have shape [{x.shape[0]}] (one label per sample), got {list(y.shape)}"
                )
            emb = emb + self.label_emb(y)
        return emb

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        emb = self._embed(x, t, y)
        h, restore = to_working_layout(x.to(self.dtype), self.memory_format)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        h = group_norm_act(cast(nn.GroupNorm, self.out[0]), h.to(x.dtype))
        out = cast(Tensor, self.out[2](h))
        return out.contiguous() if restore else out


class ADMSuperRes(ADMUNet):
    """The upsampler: an :class:`ADMUNet` that also sees ``low_res`` upsampled to ``x``'s size.

    ``in_channels`` is the channel count of ``x`` (and of ``low_res``); the first
    convolution takes both, concatenated.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        *args: object,
        small_size: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(image_size, in_channels * 2, *args, **kwargs)  # type: ignore[arg-type]
        self.in_channels = in_channels  # what the caller passes as x; the spec reports it
        self.small_size = small_size

    def forward(  # type: ignore[override]
        self, x: Tensor, t: Tensor | float, low_res: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        if low_res is None:
            raise ValueError("the super-resolution model needs low_res= (the low-resolution image)")
        if self.dims != 2:
            raise ValueError(f"super-resolution is implemented for 2-D images (dims={self.dims})")
        up = F.interpolate(low_res, x.shape[2:], mode="bilinear")
        return super().forward(torch.cat([x, up.to(x.dtype)], dim=1), t, y)


def _set_backend(model: nn.Module, backend: str) -> None:
    from ddkit_models.attention import QKVAttention

    check_backend(backend)
    for m in model.modules():
        if isinstance(m, QKVAttention):
            m.backend = check_backend(backend)
