"""Monotone cubic interpolation on a uniform grid: the continuous-time ᾱ(t) of a discrete schedule.

A schedule knows ᾱ only at T + 1 grid points (t = 0 and the T training steps). Solvers and
continuous-time processes need it in between, so we use the Fritsch–Carlson monotone cubic
Hermite interpolant (scipy's ``PchipInterpolator``): it passes exactly through every knot,
has a continuous first derivative, and never overshoots, so a decreasing table gives a
decreasing function that stays inside [ᾱ_{i+1}, ᾱ_i] on each interval (zero included).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["MonotoneCubic", "pchip_slopes"]

# Snap u = t * n to the nearest knot when within this distance, so that t = k / n hits knot k
# exactly despite the rounding of k / n * n.
_SNAP = 1e-9


def pchip_slopes(y: np.ndarray) -> np.ndarray:
    """Knot derivatives (per unit knot spacing) of the monotone cubic through ``y``."""
    delta = np.diff(y)
    if delta.size == 1:
        return np.array([delta[0], delta[0]])
    m = np.zeros_like(y)
    left, right = delta[:-1], delta[1:]
    same = (np.sign(left) == np.sign(right)) & (left != 0) & (right != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = 2.0 / (1.0 / left + 1.0 / right)
    m[1:-1] = np.where(same, harmonic, 0.0)
    m[0] = _end_slope(delta[0], delta[1])
    m[-1] = _end_slope(delta[-1], delta[-2])
    return m


def _end_slope(d0: float, d1: float) -> float:
    # scipy's shape-preserving three-point end condition for equal spacing.
    m = (3.0 * d0 - d1) / 2.0
    if np.sign(m) != np.sign(d0):
        return 0.0
    if np.sign(d0) != np.sign(d1) and abs(m) > abs(3.0 * d0):
        return 3.0 * d0
    return float(m)


class MonotoneCubic:
    """f on [0, 1] through ``values[k]`` at t = k / n (n = len(values) − 1); t is clamped to [0, 1].

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_cache", "n", "slopes", "values")

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        if self.values.ndim != 1 or self.values.size < 2:
            raise ValueError(f"need at least two knot values in a 1-D array (got shape {self.values.shape})")
        self.n = self.values.size - 1
        self.slopes = pchip_slopes(self.values)
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _knots(self, device: torch.device) -> tuple[Tensor, Tensor]:
        knots = self._cache.get(device)
        if knots is None:
            knots = (torch.from_numpy(self.values).to(device), torch.from_numpy(self.slopes).to(device))
            self._cache[device] = knots
        return knots

    def __call__(self, t: Tensor) -> Tensor:
        """f(t) in float64, on ``t``'s device (the CPU for devices without float64)."""
        device = t.device if t.device.type != "mps" else torch.device("cpu")
        y, m = self._knots(device)
        u = t.to(device=device, dtype=torch.float64).clamp(0.0, 1.0) * self.n
        nearest = u.round()
        u = torch.where((u - nearest).abs() < _SNAP, nearest, u)
        k = u.floor().clamp(max=self.n - 1).long()
        s = u - k
        s2, s3 = s * s, s * s * s
        h00 = 2 * s3 - 3 * s2 + 1
        h10 = s3 - 2 * s2 + s
        h01 = -2 * s3 + 3 * s2
        h11 = s3 - s2
        return h00 * y[k] + h10 * m[k] + h01 * y[k + 1] + h11 * m[k + 1]
