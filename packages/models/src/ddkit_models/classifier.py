"""The noisy-image classifier of ADM (guided-diffusion's ``EncoderUNetModel``).

The U-Net's down path and middle block, then a pooling head: ``adaptive`` (global
average), ``attention`` (CLIP-style attention pooling), ``spatial`` or ``spatial_v2``
(an MLP on the per-block spatial means). ``classifier(x, t) -> logits [B, out_channels]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, cast, get_args

import torch
from torch import Tensor, nn

from ddkit import ModelSpec
from ddkit_models.attention import AttentionPool2d, check_backend
from ddkit_models.nn import (
    as_timesteps,
    check_memory_format,
    conv_nd,
    convert_convs,
    normalization,
    timestep_embedding,
    to_working_layout,
    zero_module,
)
from ddkit_models.unet import _check_common, _set_backend, build_encoder

__all__ = ["POOLS", "ADMClassifier", "Pool"]

Pool = Literal["adaptive", "attention", "spatial", "spatial_v2"]
POOLS: tuple[str, ...] = get_args(Pool)


def _adaptive_pool(dims: int) -> nn.Module:
    if dims == 1:
        return nn.AdaptiveAvgPool1d(1)
    if dims == 2:
        return nn.AdaptiveAvgPool2d((1, 1))
    return nn.AdaptiveAvgPool3d((1, 1, 1))


class ADMClassifier(nn.Module):
    """Timestep-conditioned image classifier; arguments as guided-diffusion's EncoderUNetModel."""

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
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
        attention_backend: str = "auto",
        memory_format: str = "auto",
    ) -> None:
        super().__init__()
        self.memory_format = check_memory_format(memory_format)
        _check_common(model_channels, num_res_blocks, channel_mult, dims, dropout)
        if pool not in POOLS:
            raise ValueError(f"'pool' must be one of {', '.join(map(repr, POOLS))} (got {pool!r})")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError(
                "pool='attention' needs num_head_channels (the width of each pooling head), not -1"
            )
        if pool == "attention" and dims != 2:
            raise ValueError(f"pool='attention' is defined for 2-D images (dims={dims})")
        check_backend(attention_backend)
        del num_heads_upsample  # accepted for signature compatibility: there is no up path
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.channel_mult = tuple(channel_mult)
        self.dims = dims
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float32
        self.pool: str = pool

        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        enc = build_encoder(
            in_channels=in_channels,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=self.attention_resolutions,
            dropout=dropout,
            channel_mult=channel_mult,
            conv_resample=conv_resample,
            dims=dims,
            use_checkpoint=use_checkpoint,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order,
            attention_backend=attention_backend,
        )
        self.input_blocks = enc.input_blocks
        self.middle_block = enc.middle_block
        self._feature_size = enc.feature_size
        ch = enc.channels
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                _adaptive_pool(dims),
                zero_module(conv_nd(dims, ch, out_channels, 1)),
                nn.Flatten(),
            )
        elif pool == "attention":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(
                    image_size // enc.downsample, ch, num_head_channels, out_channels, attention_backend
                ),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels)
            )
        else:
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048),
                normalization(2048),
                nn.SiLU(),
                nn.Linear(2048, out_channels),
            )
        if use_fp16:
            self.convert_to_fp16()

    @property
    def spec(self) -> ModelSpec:
        """Inputs are images; outputs are logits over ``out_channels`` classes."""
        shape = None if self.dims == 3 else (self.in_channels, *(self.image_size,) * self.dims)
        return ModelSpec(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            sample_shape=shape,
            num_classes=self.out_channels,
        )

    def convert_to_fp16(self) -> None:
        """Cast the torso's convolutions to float16 (the reference's ``classifier_use_fp16``)."""
        for part in (self.input_blocks, self.middle_block):
            convert_convs(part, torch.float16)
        self.dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16`."""
        for part in (self.input_blocks, self.middle_block):
            convert_convs(part, torch.float32)
        self.dtype = torch.float32

    def set_attention_backend(self, backend: str) -> None:
        """Switch every attention layer to ``backend`` (``auto``, ``xformers``, ``sdpa``, ``math``)."""
        _set_backend(self, backend)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = as_timesteps(t, x.shape[0], x.device)
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        spatial = self.pool.startswith("spatial")
        axes = tuple(range(2, x.dim()))
        means: list[Tensor] = []
        h, _ = to_working_layout(x.to(self.dtype), self.memory_format)
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                means.append(h.to(x.dtype).mean(dim=axes))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.to(x.dtype).mean(dim=axes))
            return cast(Tensor, self.out(torch.cat(means, dim=-1)))
        return cast(Tensor, self.out(h.to(x.dtype)))
