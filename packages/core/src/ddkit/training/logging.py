"""Loss by timestep quartile, as guided-diffusion logs it, to a JSONL file and a list.

Each loss term ``k`` (``loss``, ``mse``, ``vb``, ...) is logged as its mean ``k`` and as
``k_q0`` .. ``k_q3``, the mean over samples whose timestep falls in each quarter of the
chain (q0: the least noisy quarter). Values are multiplied by the importance weights of
the timestep resampler, as guided-diffusion's ``log_loss_dict`` does. Sums stay on the
training device between log lines, so logging costs no host synchronisation per step; under
``torchrun`` each rank sums its own samples and the sums are added across ranks at
:meth:`QuartileLog.flush` (one collective per log line, none per step).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["QuartileLog", "append_jsonl", "truncate_jsonl"]


class QuartileLog:
    """Accumulates per-sample losses by timestep quartile between two :meth:`flush` calls."""

    def __init__(self, num_timesteps: int) -> None:
        if num_timesteps < 1:
            raise ValueError(f"'num_timesteps' must be >= 1 (got {num_timesteps})")
        self.num_timesteps = num_timesteps
        self._sums: dict[str, Tensor] = {}
        self._counts: Tensor | None = None
        self._scalars: dict[str, list[Tensor | float]] = {}

    def add(self, t: Tensor, losses: Mapping[str, Tensor], weights: Tensor | None = None) -> None:
        """Add a batch: ``t`` long timesteps [B], ``losses`` per-sample terms [B], ``weights`` [B]."""
        quartile = (4 * t.long() // self.num_timesteps).clamp(0, 3)
        # index_add_ into 4 bins, not bincount: bincount on CUDA reads the largest index back to
        # the host to size its output, a synchronisation in every training step.
        counts = _by_quartile(quartile, torch.ones(quartile.shape, dtype=torch.float64, device=t.device))
        total = torch.cat([counts.sum().reshape(1), counts])
        self._counts = total if self._counts is None else self._counts + total
        for key, value in losses.items():
            if value.ndim != 1 or value.shape[0] != t.shape[0]:
                continue
            v = value.detach().to(torch.float64)
            if weights is not None:
                v = v * weights.detach().to(torch.float64)
            by_q = _by_quartile(quartile, v)
            row = torch.cat([v.sum().reshape(1), by_q])
            self._sums[key] = row if key not in self._sums else self._sums[key] + row

    def add_scalar(self, name: str, value: Tensor | float) -> None:
        """Add one value of a per-step scalar (``grad_norm``, ``lr``...); it is averaged.

        A tensor is kept as it is (no host synchronisation) until :meth:`flush`.
        """
        self._scalars.setdefault(name, []).append(
            value.detach() if isinstance(value, Tensor) else float(value)
        )

    def flush(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """The means since the last flush, then reset; quartiles with no sample are left out.

        ``reduce`` sums a tensor over the ranks (e.g. :func:`ddkit.training.distributed.all_reduce_sum`):
        every rank must call ``flush`` with it, having added the same loss terms.
        """
        out: dict[str, float] = {}
        if reduce is not None and self._counts is not None:
            keys = sorted(self._sums)
            packed = reduce(torch.cat([self._counts, *(self._sums[k] for k in keys)]))
            self._counts = packed[:5]
            self._sums = {k: packed[5 * (i + 1) : 5 * (i + 2)] for i, k in enumerate(keys)}
        if self._counts is not None:
            counts = self._counts.tolist()
            for key, row in self._sums.items():
                sums = row.tolist()
                if counts[0] > 0:
                    out[key] = sums[0] / counts[0]
                for q in range(4):
                    if counts[q + 1] > 0:
                        out[f"{key}_q{q}"] = sums[q + 1] / counts[q + 1]
        for name, values in self._scalars.items():
            floats = [float(v) for v in values]
            out[name] = sum(floats) / len(floats)
        self._sums, self._counts, self._scalars = {}, None, {}
        return out


def _by_quartile(quartile: Tensor, values: Tensor) -> Tensor:
    """Sums of float64 ``values`` in each of the 4 quartiles, without a host synchronisation."""
    return torch.zeros(4, dtype=torch.float64, device=values.device).index_add_(0, quartile, values)


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to ``path`` (created if missing)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(record), sort_keys=False) + "\n")


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop lines logged after ``max_step`` (by a run that crashed before its next checkpoint)."""
    file = Path(path)
    if not file.exists():
        return
    kept = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except ValueError:
            continue
        if isinstance(step, int) and step <= max_step:
            kept.append(line)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(file)
