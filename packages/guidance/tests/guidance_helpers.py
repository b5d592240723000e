"""Tiny models and a short ancestral loop shared by the guidance unit tests (only ddkit-core needed)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ddkit.denoiser import Denoiser

T = 50
C = 3


class ClassNet(nn.Module):
    """A 1×1-conv eps model with a class embedding whose last row is the null class; records its calls."""

    def __init__(
        self, num_classes: int | None = 4, *, learn_sigma: bool = False, null_class: int | None = None
    ):
        super().__init__()
        self.in_channels = C
        self.num_classes = num_classes
        if null_class is not None:
            self.null_class = null_class
        self.out = 2 * C if learn_sigma else C
        self.conv = nn.Conv2d(C, self.out, 1)
        self.emb = nn.Embedding((num_classes or 4) + 1, self.out)
        self.calls: list[dict[str, Any]] = []

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, **extra: Any) -> Tensor:
        self.calls.append(
            {"batch": x.shape[0], "t": t.clone(), "y": None if y is None else y.clone(), **extra}
        )
        h = self.conv(x) * (1.0 + t.float().view(-1, 1, 1, 1) / T)
        if y is not None:
            h = h + self.emb(y).view(-1, self.out, 1, 1)
        return torch.tanh(h)


class Probe(nn.Module):
    """Outputs 1 for a real label and 0 for the null label: classifier-free guidance then returns w."""

    num_classes = 4

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        return (y != self.num_classes).to(x.dtype).view(-1, 1, 1, 1).expand_as(x).clone()


def make_x(batch: int = 4, seed: int = 0) -> Tensor:
    return torch.randn(batch, C, 4, 4, generator=torch.Generator().manual_seed(seed))


def ancestral(denoiser: Denoiser, x: Tensor, seed: int = 0) -> Tensor:
    """DDPM ancestral sampling over the denoiser's chain (mean form guidance applies)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in reversed(range(denoiser.process.num_timesteps)):
            pred = denoiser(x, i, posterior=True)
            assert pred.mean is not None
            assert pred.log_variance is not None
            noise = torch.randn(x.shape, generator=g)
            x = pred.mean + (i > 0) * torch.exp(0.5 * pred.log_variance) * noise
    return x


class LinearClassifier(nn.Module):
    """logits = W·vec(x) + b, so ∇_x log softmax(logits)[y] = W_y − Σ_k p_k W_k in closed form."""

    def __init__(self, features: int = C * 16, classes: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.seen_t: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.seen_t.append(t)
        return self.fc(x.flatten(1))
