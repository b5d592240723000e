"""Self-attention for the ADM networks, with run-time choice of the attention kernel.

Backends:

- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` (CUDA only; install
  ``ddkit-models[xformers]``);
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
  kernels where PyTorch has them, CPU included);
- ``"math"``: the reference's explicit softmax(q·kᵀ)·v, q and k each pre-scaled by
  ``ch^-1/4`` and the softmax taken in float32;
- ``"auto"``: xformers on CUDA when its kernel actually runs there (probed once per device:
  an xformers build for another torch or CUDA imports fine but refuses to run), else sdpa,
  else math.

All three compute the same function (softmax with scale ``1/sqrt(ch)``) and agree to
floating-point tolerance. guided-diffusion has two ways of splitting the ``qkv``
projection into heads; both are preserved exactly (see :func:`split_heads`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from typing import Any, Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddkit_models.nn import conv_nd, normalization, zero_module

__all__ = [
    "BACKENDS",
    "AttentionBackend",
    "AttentionBlock",
    "AttentionPool2d",
    "QKVAttention",
    "attention",
    "check_backend",
    "resolve_backend",
    "split_heads",
    "xformers_available",
    "xformers_runs",
]

AttentionBackend = Literal["auto", "xformers", "sdpa", "math"]
BACKENDS: tuple[str, ...] = get_args(AttentionBackend)
#: How the channels of a ``qkv`` projection are laid out (guided-diffusion's two orders).
HeadOrder = Literal["legacy", "new"]

_INSTALL_HINT = "pip install 'ddkit-models[xformers]'"


@functools.lru_cache(maxsize=1)
def xformers_available() -> bool:
    """Whether ``xformers.ops`` can be imported (checked once)."""
    if importlib.util.find_spec("xformers") is None:
        return False
    try:
        importlib.import_module("xformers.ops")
    except Exception:  # a broken or CUDA-mismatched build is as good as none
        return False
    return True


@functools.lru_cache(maxsize=8)
def xformers_runs(device: torch.device) -> bool:
    """Whether xformers' attention kernel runs on ``device`` (a tiny call, probed once per device)."""
    if device.type != "cuda" or not xformers_available():
        return False
    try:
        xops: Any = importlib.import_module("xformers.ops")
        q = torch.zeros(1, 8, 1, 32, device=device, dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
    except Exception:  # e.g. "xFormers wasn't built with CUDA support" for this torch
        return False
    return True


def check_backend(backend: str) -> AttentionBackend:
    """Validate a backend name; asking for xformers without it installed fails here, early."""
    if backend not in BACKENDS:
        raise ValueError(
            f"'attention_backend' must be one of {', '.join(map(repr, BACKENDS))} (got {backend!r})"
        )
    if backend == "xformers" and not xformers_available():
        raise ImportError(f"attention_backend='xformers' needs the xformers package: {_INSTALL_HINT}")
    return cast(AttentionBackend, backend)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The kernel ``backend`` means on ``device``: ``auto`` picks the fastest available."""
    if backend != "auto":
        return backend
    if device.type == "cuda" and xformers_runs(device):
        return "xformers"
    if hasattr(F, "scaled_dot_product_attention"):
        return "sdpa"
    return "math"


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "auto") -> Tensor:
    """Softmax attention of ``[B, H, T, ch]`` queries, keys and values -> ``[B, H, T, ch]``."""
    kind = resolve_backend(backend, q.device)
    if kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if kind == "math":
        scale = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))  # on q and k each: steadier in float16
        weight = torch.matmul(q * scale, (k * scale).transpose(-1, -2))
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        return torch.matmul(weight, v)
    if kind == "xformers":
        if q.device.type != "cuda":
            raise RuntimeError(
                f"xformers attention needs a CUDA device (got {q.device.type}); use attention_backend='sdpa'"
            )
        xops: Any = importlib.import_module("xformers.ops")
        out = xops.memory_efficient_attention(
            q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        )
        return cast(Tensor, out).transpose(1, 2)
    raise ValueError(f"'attention_backend' must be one of {', '.join(map(repr, BACKENDS))} (got {backend!r})")


def split_heads(qkv: Tensor, heads: int, order: HeadOrder) -> tuple[Tensor, Tensor, Tensor]:
    """Split token-major ``[B, T, 3·C]`` projections into q, k, v of shape ``[B, H, T, C/H]``.

    ``legacy`` (QKVAttentionLegacy): channels are grouped by head first, each head holding
    its q, k and v in turn. ``new`` (QKVAttention): q, k and v are the three thirds, each
    split into heads. Only views: no data moves. ``unbind`` rather than three ``select`` calls:
    its backward writes the three gradients into one buffer, where each select's backward
    zero-fills a whole ``qkv``-sized tensor and the three are then summed (measured ~8 % of
    an attention block's training step).
    """
    b, t, width = qkv.shape
    ch = width // (3 * heads)
    if order == "legacy":
        q, k, v = qkv.view(b, t, heads, 3, ch).unbind(3)
    else:
        q, k, v = qkv.view(b, t, 3, heads, ch).unbind(2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class QKVAttention(nn.Module):
    """Attention over a channel-major ``[B, 3·C, T]`` qkv tensor -> ``[B, C, T]`` (no parameters).

    ``order`` is ``"legacy"`` for guided-diffusion's QKVAttentionLegacy, ``"new"`` for its
    QKVAttention; the output channels are head-major in both.
    """

    def __init__(self, num_heads: int, order: HeadOrder = "new", backend: str = "auto") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.order: HeadOrder = order
        self.backend = check_backend(backend)

    def forward(self, qkv: Tensor) -> Tensor:
        b, width, length = qkv.shape
        if width % (3 * self.num_heads):
            raise ValueError(f"qkv width {width} is not divisible by 3 × {self.num_heads} heads")
        q, k, v = split_heads(qkv.transpose(1, 2), self.num_heads, self.order)
        out = attention(q, k, v, self.backend)  # [B, H, T, ch]
        return out.permute(0, 1, 3, 2).reshape(b, width // 3, length)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, order={self.order!r}, backend={self.backend!r}"


class AttentionBlock(nn.Module):
    """Residual self-attention over all spatial positions (ADM's AttentionBlock).

    Parameters: ``norm``, ``qkv`` (a 1×1 Conv1d), ``proj_out`` (zero-initialized), as in the
    reference. The forward works on token-major ``[B, T, C]`` activations, which for a
    channels-last input is a free view, and runs the 1×1 convolutions as matrix products.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if num_head_channels <= 0 or channels % num_head_channels:
                raise ValueError(
                    f"'num_head_channels' must divide the {channels} channels of every attention layer "
                    f"(got {num_head_channels}); choose a divisor or pass num_head_channels=-1 and num_heads"
                )
            self.num_heads = channels // num_head_channels
        if self.num_heads <= 0 or channels % self.num_heads:
            raise ValueError(
                f"'num_heads' must divide the {channels} channels of every attention layer "
                f"(got {self.num_heads})"
            )
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(
            self.num_heads, "new" if use_new_attention_order else "legacy", attention_backend
        )
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            out = torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
            return cast(Tensor, out)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        qkv_conv = cast(nn.Conv1d, self.qkv)
        proj = cast(nn.Conv1d, self.proj_out)
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, T, C]
        qkv = F.linear(tokens, qkv_conv.weight.squeeze(-1), qkv_conv.bias)
        q, k, v = split_heads(qkv, self.attention.num_heads, self.attention.order)
        h = attention(q, k, v, self.attention.backend)  # [B, H, T, ch]
        h = h.transpose(1, 2).reshape(b, -1, c)
        h = F.linear(h, proj.weight.squeeze(-1), proj.bias)
        # [B, T, C] back to [B, C, *spatial]: a view with channels-last strides. For a
        # channels-last x the residual is added in place (the linear's output is not saved
        # for its backward); a contiguous x keeps its layout for the next convolution.
        h = h.transpose(1, 2).view(b, c, *spatial)
        if h.stride() == x.stride() and h.dtype == x.dtype:  # autocast keeps x's wider dtype
            return h.add_(x)
        return x + h


class AttentionPool2d(nn.Module):
    """Attention pooling from CLIP, as the classifier's ``attention`` head.

    The mean token is prepended; its attended value, projected, is the output.
    """

    def __init__(
        self,
        spacial_dim: int,
        embed_dim: int,
        num_heads_channels: int,
        output_dim: int | None = None,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if num_heads_channels <= 0 or embed_dim % num_heads_channels:
            raise ValueError(
                f"attention pooling needs 'num_head_channels' dividing {embed_dim} (got {num_heads_channels})"
            )
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads, "new", attention_backend)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.attention(self.qkv_proj(x))
        return cast(Tensor, self.c_proj(x))[:, :, 0]
