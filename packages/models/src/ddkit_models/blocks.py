"""The U-Net's building blocks: residual blocks, resampling and the block container.

Module trees and parameter names mirror guided-diffusion (``in_layers``, ``emb_layers``,
``out_layers``, ``skip_connection``, ``op``, ``conv``) so its checkpoints load strictly;
the forward passes read those parameters through the fused helpers of :mod:`ddkit_models.nn`.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddkit_models.nn import avg_pool_nd, conv_nd, group_norm_act, normalization, upsample_conv2d, zero_module

__all__ = ["Downsample", "ResBlock", "TimestepBlock", "TimestepEmbedSequential", "Upsample"]


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """A sequence that hands the embedding to the children that take one."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling (inner two axes for 3-D), then an optional 3×3 conv.

    In 2-D the two are fused (:func:`~ddkit_models.nn.upsample_conv2d`).
    """

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, channels, self.out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_conv and self.dims == 2:
            conv = cast(nn.Conv2d, self.conv)
            return upsample_conv2d(x, conv.weight, conv.bias)  # 2.25× fewer multiply-adds
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return cast(Tensor, self.conv(x)) if self.use_conv else x


class Downsample(nn.Module):
    """×2 downsampling (inner two axes for 3-D): a strided 3×3 conv, or average pooling."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        stride: int | tuple[int, ...] = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError(
                    f"pooling cannot change channels ({channels} -> {self.out_channels}); "
                    "use conv_resample=True"
                )
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.op(x))


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling.

    With ``use_scale_shift_norm`` the embedding gives a FiLM scale and shift applied after
    the second normalization; otherwise it is added before it. ``up``/``down`` resample
    both branches between the first normalization and the first convolution.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        self.h_upd: nn.Module
        self.x_upd: nn.Module
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        self.skip_connection: nn.Module
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            out = torch.utils.checkpoint.checkpoint(self._forward, x, emb, use_reentrant=False)
            return cast(Tensor, out)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        in_norm, in_conv = cast(nn.GroupNorm, self.in_layers[0]), self.in_layers[2]
        out_norm, out_conv = cast(nn.GroupNorm, self.out_layers[0]), self.out_layers[3]
        h = group_norm_act(in_norm, x)
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = in_conv(h)
        emb_out = self.emb_layers(emb).to(h.dtype)
        emb_out = emb_out.view(*emb_out.shape, *(1,) * (h.dim() - 2))
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = group_norm_act(out_norm, h, scale, shift)
        else:
            h = group_norm_act(out_norm, h + emb_out)
        drop = cast(nn.Dropout, self.out_layers[2])
        if drop.p > 0:  # skip the no-op pass of a zero-rate dropout
            h = drop(h)
        h = cast(Tensor, out_conv(h))
        skip = cast(Tensor, self.skip_connection(x))
        # In place (a convolution's backward does not read its output) unless autocast
        # made the branch narrower than the skip, whose dtype the sum takes.
        return h.add_(skip) if h.dtype == skip.dtype else skip + h
