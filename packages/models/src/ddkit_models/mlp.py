"""A small time-conditioned MLP denoiser for vector data (2-D toys, tests, demos).

``model(x [B, dim], t [B], y=None) -> [B, out_dim]``. The timestep enters through a
sinusoidal embedding and an MLP, and is added inside every residual block; with
``num_classes`` a label embedding (one extra row, index ``num_classes``, meaning "no
class") is added to it, so the same network serves classifier-free guidance.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddkit import ModelSpec
from ddkit_models.nn import as_timesteps, timestep_embedding

__all__ = ["MLPDenoiser"]


class _Block(nn.Module):
    """Pre-norm residual block: ``h + W2·silu(W1·silu(norm(h)) + E·emb)``."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(F.silu(self.norm(h))) + self.emb(emb)
        z = F.dropout(F.silu(z), self.dropout, self.training)
        return h + cast(Tensor, self.fc2(z))


class MLPDenoiser(nn.Module):
    """Residual MLP with sinusoidal time embedding (and optional class embedding).

    ``time_scale`` multiplies ``t`` before the embedding: the default 1 suits training
    timesteps in ``[0, 1000)``; use ~1000 for continuous times in ``[0, 1]``.

    ``skip`` adds ``g(t, y)·x`` to the outputs shaped like ``x`` (the first ``dim`` of them, when
    ``out_dim`` is ``dim`` or ``2·dim``), a per-feature gain of the time embedding. The
    normalized head alone is bounded in ``x``, while ε, v and x_0 targets grow linearly with
    ``x`` away from the data: at high noise ε ≈ x, and a probability-flow sampler started in the
    tails of N(0, I) multiplies the head's shortfall there by σ/α (hundreds), throwing about 1 %
    of its samples far off the data. Zero-initialised, so a new network is still the zero predictor.

    .. versionchanged:: 0.2.0 ``skip``, on by default; weights saved without it load with a zero gain,
       which is exactly the network they were saved from.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 3,
        num_classes: int | None = None,
        out_dim: int | None = None,
        learn_sigma: bool = False,
        dropout: float = 0.0,
        time_scale: float = 1.0,
        skip: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"'{name}' must be a positive int (got {value!r})")
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes <= 0):
            raise ValueError(f"'num_classes' must be a positive int or None (got {num_classes!r})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'dropout' must be in [0, 1) (got {dropout!r})")
        if out_dim is not None and (
            isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim <= 0
        ):
            raise ValueError(f"'out_dim' must be a positive int or None (got {out_dim!r})")
        default_out = dim * (2 if learn_sigma else 1)
        if out_dim is not None and learn_sigma and out_dim != default_out:
            raise ValueError(f"learn_sigma=True means out_dim={default_out} (2·dim); got out_dim={out_dim}")
        self.dim = dim
        self.hidden = hidden
        self.out_dim = out_dim if out_dim is not None else default_out
        self.num_classes = num_classes
        self.time_scale = time_scale

        self.time_embed = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + 1, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, self.out_dim)
        nn.init.zeros_(self.out.weight)  # start as the zero predictor, like ADM's output conv
        nn.init.zeros_(self.out.bias)
        self.skip = bool(skip) and self.out_dim in (dim, 2 * dim)
        if self.skip:
            self.skip_gain = nn.Linear(hidden, dim)
            nn.init.zeros_(self.skip_gain.weight)
            nn.init.zeros_(self.skip_gain.bias)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: object) -> None:
        # Weights saved before ``skip`` existed: a zero gain is exactly the network they came from.
        if self.skip and prefix + "skip_gain.weight" not in state_dict:
            state_dict[prefix + "skip_gain.weight"] = torch.zeros_like(self.skip_gain.weight)
            state_dict[prefix + "skip_gain.bias"] = torch.zeros_like(self.skip_gain.bias)
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def spec(self) -> ModelSpec:
        """Vectors of ``dim`` features in, ``out_dim`` out; ``null_class`` = ``num_classes``."""
        return ModelSpec(
            in_channels=self.dim,
            out_channels=self.out_dim,
            sample_shape=(self.dim,),
            num_classes=self.num_classes,
            null_class=self.num_classes,
        )

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {list(x.shape)}")
        t = as_timesteps(t, x.shape[0], x.device)
        emb = self.time_embed(timestep_embedding(t * self.time_scale, self.hidden).to(x.dtype))
        if self.num_classes is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(y)
        h = self.inp(x)
        emb = F.silu(emb)
        for block in self.blocks:
            h = block(h, emb)
        out = cast(Tensor, self.out(F.silu(self.out_norm(h))))
        if not self.skip:
            return out
        linear = cast(Tensor, self.skip_gain(emb)) * x
        if self.out_dim == self.dim:
            return out + linear
        return torch.cat([out[:, : self.dim] + linear, out[:, self.dim :]], dim=1)
