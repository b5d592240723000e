"""Fitted time grids (``ddkit.fit_spacing``) against each sampler's default grid, on noise not fitted on.

Each deterministic sampler's grid is fitted at NFE 5 and 10 (``fit_spacing`` at its defaults:
256 fitting samples, seed 0, a DPM-Solver++(3M) 200-step teacher from the sampler's own start),
then both grids sample a held-out batch (seed 1, ``--samples`` points). Distances are sliced
Wasserstein (lower is better):

``teacher``  to the teacher's output from the same held-out x_T (what the fit aims at);
``ref``      exact ring only: to the exact ODE solution over the whole chain from the same x_T
             (``quality_vs_nfe.reference``: DPM-Solver++(3M), 400 log-SNR steps, λ from the top);
``data``     to fresh data of the same size (bounded below by the data-to-data floor).

Models: the 8-Gaussian ring's closed-form ε (``_toy.ExactRing``, cosine and linear chains, no
training error), the README's toy (cosine, ε, fixed-small, ``clip_denoised=False``, ``mlp`` dim 2,
trained briefly on ``gaussians``) and its rectified-flow variant (velocity, Euler).

    python bench/fitted_spacing.py --threads 1 --json bench/results/cpu/fitted_spacing.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _toy import ExactRing, betas_for, ring8, sliced_wasserstein
from run_all import script_provenance
from torch import Tensor

import ddkit
import ddkit.data
from ddkit.diffusion import GaussianProcess

SAMPLERS = ("dpm-solver++", "ipndm", "deis", "ddim")
NFES = (5, 10)
T = 1000


def exact_pipe(schedule: str) -> ddkit.Pipeline:
    """The ring's exact ε on a ``schedule`` chain of T steps."""
    model = ExactRing(GaussianProcess(betas_for(schedule, T)).alphas_cumprod)
    return ddkit.Pipeline.from_config(
        {
            "schedule": {"name": schedule, "timesteps": T},
            "parameterization": {"name": "epsilon", "variance": "fixed-small", "clip_denoised": False},
        },
        model=model,
    )


def toy_pipe(flow: bool, iters: int) -> ddkit.Pipeline:
    """The README's example (or its rectified-flow variant), trained ``iters`` steps on ``gaussians``."""
    torch.manual_seed(0)
    if flow:
        cfg: dict[str, Any] = {
            "schedule": {"name": "rectified-flow"},
            "parameterization": {"name": "velocity"},
            "model": {"name": "mlp", "dim": 2},
            "resampler": {"name": "logit-normal"},
        }
    else:
        cfg = {
            "schedule": {"name": "cosine", "timesteps": T},
            "parameterization": {"name": "epsilon", "variance": "fixed-small", "clip_denoised": False},
            "model": {"name": "mlp", "dim": 2},
        }
    pipe = ddkit.Pipeline.from_config(cfg)
    ddkit.Trainer(pipe, "gaussians", batch_size=256, lr=1e-3).train(iters)
    return pipe


def gaussians(n: int, seed: int) -> Tensor:
    """Fresh points of the ``gaussians`` toy (what the toys were trained on)."""
    ds = ddkit.data.load("gaussians", n=n, seed=seed)
    return torch.stack([item[0] if isinstance(item, tuple) else item for item in ds]).float()


def start_lambda(pipe: ddkit.Pipeline, name: str, steps: int) -> float | None:
    """The half log-SNR where ``name``'s default grid starts (None: the chain's top)."""
    view = pipe.with_sampler(name, steps=steps)
    ab = view.sampler._checked_plan(view.denoiser()).alpha_bars[0]
    if ab <= float(pipe.process.alphas_cumprod[-1]):
        return None
    return 0.5 * float(torch.log(torch.tensor(ab / (1.0 - ab), dtype=torch.float64))) - 1e-9


def section(
    label: str, pipe: ddkit.Pipeline, samplers: tuple[str, ...], data: Tensor, exact: bool, n: int
) -> list[dict[str, Any]]:
    """Default vs fitted grid for each sampler and NFE on one model; prints one row each."""
    x = pipe.noise(n, generator=torch.Generator().manual_seed(1))
    ref = None
    if exact:
        ref = pipe.with_sampler("dpm-solver++", steps=400, order=3, spacing="logsnr", lambda_min=None).sample(
            x_T=x
        )
    teachers: dict[float | None, Tensor] = {}
    rows = []
    for name in samplers:
        for nfe in NFES:
            lam = start_lambda(pipe, name, nfe)
            if lam not in teachers:
                teacher = pipe.with_sampler(
                    "dpm-solver++", steps=200, order=3, spacing="logsnr", lambda_min=lam
                )
                teachers[lam] = teacher.sample(x_T=x)
            start = time.perf_counter()
            levels = ddkit.fit_spacing(pipe, nfe, sampler=name)
            fit_s = time.perf_counter() - start
            row: dict[str, Any] = {
                "model": label,
                "sampler": name,
                "nfe": nfe,
                "levels": levels,
                "fit_s": fit_s,
            }
            for grid, params in (("default", {"steps": nfe}), ("fitted", {"spacing": levels})):
                out = pipe.with_sampler(name, **params).sample(x_T=x)
                row[f"{grid}_teacher"] = sliced_wasserstein(out, teachers[lam])
                row[f"{grid}_data"] = sliced_wasserstein(out, data)
                if ref is not None:
                    row[f"{grid}_ref"] = sliced_wasserstein(out, ref)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict[str, Any]) -> str:
    cells = [f"{row['model']:<22}", f"{row['sampler']:<13}", f"{row['nfe']:>3}"]
    for metric in ("teacher", "ref", "data"):
        if f"default_{metric}" in row:
            d, f = row[f"default_{metric}"], row[f"fitted_{metric}"]
            cells.append(f"{metric} {d:.4f} → {f:.4f} ({f / d:.2f}x)")
        else:
            cells.append(" " * len("teacher 0.0000 → 0.0000 (0.00x)"))
    cells.append(f"fit {row['fit_s']:.1f}s")
    return " | ".join(cells)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table for BENCHMARKS.md."""
    lines = [
        "| model | sampler | NFE | to teacher: default → fitted | to exact ODE: default → fitted "
        "| to data: default → fitted | fit (s) |",
        "|---|---|---:|---|---|---|---:|",
    ]
    for r in rows:

        def cell(metric: str, r: dict[str, Any] = r) -> str:
            if f"default_{metric}" not in r:
                return "–"
            d, f = r[f"default_{metric}"], r[f"fitted_{metric}"]
            return f"{d:.4f} → **{f:.4f}** ({f / d:.2f}×)" if f < d else f"{d:.4f} → {f:.4f} ({f / d:.2f}×)"

        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['nfe']} | {cell('teacher')} | {cell('ref')} "
            f"| {cell('data')} | {r['fit_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=4000, help="held-out samples per evaluation")
    parser.add_argument("--iters", type=int, default=1000, help="training steps of the README toys")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    provenance = script_provenance("fitted_spacing.py", sys.argv[1:])
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    floors: dict[str, float] = {}
    g = torch.Generator().manual_seed(5)
    ring_a, ring_b = ring8(args.samples, g), ring8(args.samples, g)
    floors["ring"] = sliced_wasserstein(ring_a, ring_b)
    for schedule in ("cosine", "linear"):
        rows += section(f"exact ring, {schedule}", exact_pipe(schedule), SAMPLERS, ring_a, True, args.samples)
    data = gaussians(args.samples, 7)
    floors["gaussians"] = sliced_wasserstein(data, gaussians(args.samples, 8))
    t0 = time.perf_counter()
    toy = toy_pipe(False, args.iters)
    train_s = time.perf_counter() - t0
    rows += section("README toy, cosine ε", toy, SAMPLERS, data, False, args.samples)
    flow = toy_pipe(True, args.iters)
    rows += section("README toy, flow", flow, ("euler", "dpm-solver++"), data, False, args.samples)
    total = time.perf_counter() - start
    print(f"\nfloors (data to data): {floors}; training {train_s:.1f}s per toy; total {total:.1f}s\n")
    print(table(rows))
    if args.json is not None:
        fit = inspect.signature(ddkit.fit_spacing).parameters
        payload = {
            "bench": "fitted_spacing",
            **provenance,
            "threads": args.threads,
            "fit_defaults": {k: fit[k].default for k in ("samples", "seed", "teacher_steps")},
            "samples": args.samples,
            "iters": args.iters,
            "floors": floors,
            "total_s": total,
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
