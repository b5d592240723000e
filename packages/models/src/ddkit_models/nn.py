"""Layer helpers shared by the networks.

The constructors return plain ``torch.nn`` modules so that parameter names match
guided-diffusion's; the functional helpers (:func:`group_norm_act`) are where the speed
comes from: they read those modules' parameters and do in two passes over the
activations what the reference does in four (norm, FiLM multiply, FiLM add, SiLU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MEMORY_FORMATS",
    "GroupNorm32",
    "as_timesteps",
    "avg_pool_nd",
    "check_memory_format",
    "conv_nd",
    "convert_convs",
    "group_norm_act",
    "normalization",
    "timestep_embedding",
    "to_working_layout",
    "upsample_conv2d",
    "zero_module",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def conv_nd(dims: int, in_channels: int, out_channels: int, kernel_size: int, **kwargs: object) -> nn.Module:
    """A 1-, 2- or 3-D convolution (``nn.Conv1d``/``2d``/``3d``)."""
    if dims == 1:
        return nn.Conv1d(in_channels, out_channels, kernel_size, **kwargs)  # type: ignore[arg-type]
    if dims == 2:
        return nn.Conv2d(in_channels, out_channels, kernel_size, **kwargs)  # type: ignore[arg-type]
    if dims == 3:
        return nn.Conv3d(in_channels, out_channels, kernel_size, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"'dims' must be 1, 2 or 3 (got {dims!r})")


def avg_pool_nd(dims: int, kernel_size: int | tuple[int, ...], stride: int | tuple[int, ...]) -> nn.Module:
    """A 1-, 2- or 3-D average pooling."""
    if dims == 1:
        return nn.AvgPool1d(kernel_size, stride)  # type: ignore[arg-type]
    if dims == 2:
        return nn.AvgPool2d(kernel_size, stride)  # type: ignore[arg-type]
    if dims == 3:
        return nn.AvgPool3d(kernel_size, stride)  # type: ignore[arg-type]
    raise ValueError(f"'dims' must be 1, 2 or 3 (got {dims!r})")


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: residual branches start as the identity."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that normalizes half-precision activations in float32.

    Statistics over a group overflow or lose precision in float16; float32 inputs are
    normalized as they are, without the reference's round trip.
    """

    def forward(self, x: Tensor) -> Tensor:
        return group_norm_act(self, x, act=False)


def normalization(channels: int) -> GroupNorm32:
    """The normalization of every ADM block: 32 groups."""
    return GroupNorm32(32, channels)


def group_norm_act(
    norm: nn.GroupNorm,
    x: Tensor,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    *,
    act: bool = True,
) -> Tensor:
    """``silu(norm(x) * (1 + scale) + shift)`` with ``norm``'s parameters.

    Without gradients (inference) the norm's affine parameters are folded into the
    per-sample FiLM ``scale``/``shift`` (shape ``[B, C, 1, ...]``) so that one ``addcmul``
    replaces affine, multiply and add, and the SiLU runs in place; channels-last inputs
    get their statistics from :func:`_centered_channels_last` (PyTorch's channels-last
    GroupNorm kernel ran 2-6x slower than its contiguous one here). When gradients are
    recorded the plain sequence is used: on the CPU the backward of the folded form (an
    ``addcmul`` with two broadcast operands, and the small ops that build them) measured
    10-25 % slower than that of the affine norm, multiply and add. Low-precision inputs
    are normalized in float32 and returned in their own dtype.
    """
    dtype = x.dtype
    h = x.float() if dtype in _LOW_PRECISION else x
    weight = None if norm.weight is None else norm.weight.to(h.dtype)
    bias = None if norm.bias is None else norm.bias.to(h.dtype)
    grad = torch.is_grad_enabled()
    channels_last = (
        h.dim() == 4 and not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last)
    )
    if grad or (scale is None and shift is None and not channels_last):
        h = F.group_norm(h, norm.num_groups, weight, bias, norm.eps)
        if scale is not None:
            h = h * (1 + scale.to(h.dtype))
        if shift is not None:
            h = h + shift.to(h.dtype)
    else:
        shape = (1, -1, *(1,) * (h.dim() - 2))
        unit = h.new_ones(())
        gain = 1 + scale.to(h.dtype) if scale is not None else unit
        offset = shift.to(h.dtype) if shift is not None else unit - 1
        if bias is not None:
            offset = torch.addcmul(offset, bias.view(shape), gain)
        if weight is not None:
            gain = gain * weight.view(shape)
        if channels_last:
            h, var = _centered_channels_last(h, norm.num_groups)
            rstd = var.add_(norm.eps).rsqrt_().repeat_interleave(h.shape[1] // norm.num_groups, dim=1)
            gain = gain * rstd.view(h.shape[0], -1, 1, 1)
            h = h.mul_(gain).add_(offset)  # in the centred buffer (out= would break torch.compile)
        else:
            h = torch.addcmul(offset, F.group_norm(h, norm.num_groups, None, None, norm.eps), gain)
    if act:
        h = F.silu(h, inplace=not grad)
    return h.to(dtype) if h.dtype != dtype else h


def _centered_channels_last(x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """``x`` minus its group means (a new channels-last tensor) and the group variances ``[B, G]``.

    Two passes over ``[B, H·W, C]`` (channel sums, then the centred squares), so the
    variance is that of the centred values, as numerically sound as the fused kernel's.
    """
    b, c = x.shape[:2]
    tokens = x.permute(0, 2, 3, 1).reshape(b, -1, c)  # a view: channels are the fastest axis
    count = tokens.shape[1] * (c // groups)
    mean = tokens.sum(1).view(b, groups, -1).sum(-1).div_(count)  # [B, G]
    centred = x - mean.repeat_interleave(c // groups, dim=1).view(b, c, 1, 1)
    flat = centred.permute(0, 2, 3, 1).reshape(b, -1, c)
    var = torch.linalg.vecdot(flat, flat, dim=1).view(b, groups, -1).sum(-1).div_(count)
    return centred, var


def upsample_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv3x3(nearest_upsample_2x(x))`` without materializing the upsampled input.

    Each of the four output phases (row parity, column parity) of a 3×3 convolution over a
    nearest-upsampled image sees a 2×2 window of ``x`` with taps summed from the 3×3
    kernel, so four 2×2 convolutions at the low resolution give the same result with 16
    instead of 36 multiply-adds per low-resolution pixel. Equal to the reference up to
    float rounding (the summed taps).
    """
    b, _, h, w = x.shape
    # Row taps for output row parity 0 (rows i-1, i) and 1 (rows i, i+1); same for columns.
    rows = (
        torch.stack([weight[:, :, 0], weight[:, :, 1] + weight[:, :, 2]], dim=2),
        torch.stack([weight[:, :, 0] + weight[:, :, 1], weight[:, :, 2]], dim=2),
    )
    padded = F.pad(x, (1, 1, 1, 1))
    phases = []
    for a in (0, 1):
        r = rows[a]  # [O, C, 2, 3]
        for c, kernel in enumerate(
            (
                torch.stack([r[..., 0], r[..., 1] + r[..., 2]], dim=3),
                torch.stack([r[..., 0] + r[..., 1], r[..., 2]], dim=3),
            )
        ):
            phases.append(F.conv2d(padded[:, :, a : a + h + 1, c : c + w + 1], kernel, bias))
    out_channels = phases[0].shape[1]
    # Interleave the phases: out[:, :, 2i + a, 2j + c] = phases[2a + c][:, :, i, j]. The buffer
    # is laid out like the input (channels-last stays channels-last).
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        buf = phases[0].new_empty(b, h, 2, w, 2, out_channels)
        grid = buf.permute(0, 5, 1, 2, 3, 4)
        result = buf.view(b, 2 * h, 2 * w, out_channels).permute(0, 3, 1, 2)
    else:
        grid = phases[0].new_empty(b, out_channels, h, 2, w, 2)
        result = grid.view(b, out_channels, 2 * h, 2 * w)
    for a in (0, 1):
        for c in (0, 1):
            grid[:, :, :, a, :, c] = phases[2 * a + c]
    return result


#: Where the torso's activations live: ``auto`` (channels-last for CPU inference), ``channels_last``
#: or ``preserve`` (the input's layout).
MEMORY_FORMATS: tuple[str, ...] = ("auto", "channels_last", "preserve")


def check_memory_format(value: str) -> str:
    """Validate a ``memory_format`` option."""
    if value not in MEMORY_FORMATS:
        raise ValueError(
            f"'memory_format' must be one of {', '.join(map(repr, MEMORY_FORMATS))} (got {value!r})"
        )
    return value


def to_working_layout(x: Tensor, policy: str) -> tuple[Tensor, bool]:
    """``x`` in the layout the torso runs in, and whether the output must be made contiguous again.

    oneDNN's CPU convolutions run faster forward on channels-last activations (the ADM
    U-Net's inference about 1.1× on its own, even with contiguous weights), but their
    backward and GroupNorm's backward run slower, so ``auto`` switches only for 4-D CPU
    inputs when no gradient is recorded. The caller gets the output in its input's layout.
    """
    if x.dim() != 4 or policy == "preserve":
        return x, False
    if policy == "auto" and (x.device.type != "cpu" or torch.is_grad_enabled()):
        return x, False
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, False
    return x.contiguous(memory_format=torch.channels_last), x.is_contiguous()


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embeddings ``[cos(t·f), sin(t·f)]`` of (possibly fractional) timesteps, float32.

    ``t`` is ``[B]`` (or a scalar, broadcast by the caller); frequencies go from 1 down to
    ``1 / max_period`` as in the reference; an odd ``dim`` is zero-padded.
    """
    half = dim // 2
    # Same operation order as the reference: large t amplifies any rounding difference.
    arange = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * arange / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def convert_convs(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the weights of every convolution under ``module`` (the reference's fp16 torso)."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            m.weight.data = m.weight.data.to(dtype)
            if m.bias is not None:
                m.bias.data = m.bias.data.to(dtype)


def as_timesteps(t: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """``t`` as a ``[batch]`` tensor: a number or 0-d tensor is broadcast, a ``[B]`` tensor kept."""
    if not isinstance(t, Tensor):
        t = torch.tensor(t, device=device)
    if t.dim() == 0:
        return t.to(device).expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps must have shape [{batch}] (one per sample), got {list(t.shape)}")
    return t
