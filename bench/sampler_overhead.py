"""Per-step framework overhead of ddkit's samplers beside guided-diffusion's and diffusers' equivalents.

A near-free model (it returns a precomputed tensor) runs each sampler on a batch of 16 images
3×32×32 on one CPU thread; the time per model evaluation minus the model's own time is the
framework's overhead. Every configuration runs once per repetition, interleaved, so drifts in
machine load hit all alike; medians are reported, with ddkit's ratio to diffusers.
Clipping of x_0 is off everywhere (diffusers' DPM-Solver++ has none), variance fixed-small.

    python bench/sampler_overhead.py [--reps 15] [--steps 50] [--pipeline] [--json out.json]

``--pipeline`` times ddkit through ``Pipeline.sample`` (the call users make: noise from
per-sample generators aside, the x_T is given) instead of ``sampler.sample`` on a bare denoiser.

Issue 5's target is ddkit ≤ 0.3× diffusers for DDPM, DDIM and DPM-Solver++. The ancestral
samplers (DDPM, Euler-ancestral) also draw a batch of standard normal noise per step: one
``torch.randn`` of the batch, the same call in every framework and, on one CPU thread, several
times the rest of ddkit's step. It is timed on its own, and the ratio without it (what the
frameworks add around the same random numbers) is reported beside the plain ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import ddkit
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianParameterization, GaussianProcess

SHAPE = (16, 3, 32, 32)
#: Samplers that draw a batch of noise at (almost) every step.
STOCHASTIC = ("ddpm", "euler-ancestral", "dpm-solver++ sde")
#: Benchmark rows that are a registered sampler with parameters.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"dpm-solver++ sde": ("dpm-solver++", {"sde": True})}
T = 1000


class FreeModel(nn.Module):
    """Returns a fixed tensor: the model costs (almost) nothing, so what is timed is the framework."""

    def __init__(self, out: Tensor) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # guided-diffusion asks the model for its device
        self.out = out

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.out


def linear_betas() -> np.ndarray:
    return np.linspace(1e-4, 0.02, T, dtype=np.float64)


def ddkit_runner(
    kind: str, steps: int, out: Tensor, pipeline: bool = False
) -> tuple[Callable[[Tensor], Any], int]:
    name, params = VARIANTS.get(kind, (kind, {}))
    model = FreeModel(out)
    if pipeline:
        pipe = ddkit.Pipeline.from_config(
            {
                "schedule": {"name": "linear", "timesteps": T},
                "parameterization": {"name": "epsilon", "variance": "fixed-small", "clip_denoised": False},
                "sampler": {"name": name, "steps": steps, **params},
            },
            model=model,
        )
        pgen = torch.Generator().manual_seed(0)

        def run_pipe(x: Tensor) -> Any:
            return pipe.sample(x_T=x, generator=pgen)

        run_pipe(torch.randn(SHAPE))
        return run_pipe, pipe.sampler.last_nfe
    process = GaussianProcess(linear_betas())
    param = GaussianParameterization("epsilon", "fixed-small", False)
    sampler = ddkit.create("sampler", name, steps=steps, clip_denoised=False, **params)
    denoiser = Denoiser(model, param, process)
    gen = torch.Generator().manual_seed(0)

    def run(x: Tensor) -> Any:
        return sampler.sample(denoiser, x, generator=gen)

    run(torch.randn(SHAPE))
    return run, sampler.last_nfe


def gd_runner(kind: str, steps: int, out: Tensor) -> tuple[Callable[[Tensor], Any], int] | None:
    try:
        from guided_diffusion import gaussian_diffusion as gd
        from guided_diffusion.respace import SpacedDiffusion, space_timesteps
    except ImportError:
        return None
    section = f"ddim{steps}" if kind in ("ddim", "plms") else str(steps)
    diffusion = SpacedDiffusion(
        use_timesteps=space_timesteps(T, section),
        betas=linear_betas(),
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.FIXED_SMALL,
        loss_type=gd.LossType.MSE,
    )
    model = FreeModel(out)
    loop = {"ddpm": diffusion.p_sample_loop, "ddim": diffusion.ddim_sample_loop}.get(kind)
    kwargs: dict[str, Any] = {}
    if kind == "plms":
        if not hasattr(diffusion, "plms_sample_loop"):
            return None
        loop = diffusion.plms_sample_loop
        kwargs["order"] = 4
    assert loop is not None

    def run(x: Tensor) -> Any:
        return loop(model, SHAPE, noise=x, clip_denoised=False, device="cpu", **kwargs)

    return run, steps + (1 if kind == "plms" else 0)


def diffusers_runner(kind: str, steps: int, out: Tensor) -> tuple[Callable[[Tensor], Any], int] | None:
    try:
        import diffusers
    except ImportError:
        return None
    betas = linear_betas()
    common = {"num_train_timesteps": T, "trained_betas": betas}
    if kind == "ddpm":
        sched = diffusers.DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    elif kind == "ddim":
        sched = diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    elif kind == "plms":
        sched = diffusers.PNDMScheduler(**common, skip_prk_steps=True, set_alpha_to_one=True)
    elif kind == "dpm-solver++":
        sched = diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    elif kind == "euler":
        sched = diffusers.EulerDiscreteScheduler(**common, use_karras_sigmas=True)
    elif kind == "heun":
        sched = diffusers.HeunDiscreteScheduler(**common, use_karras_sigmas=True)
    elif kind == "euler-ancestral":
        sched = diffusers.EulerAncestralDiscreteScheduler(**common)
    elif kind == "dpm-solver++ sde":
        sched = diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="sde-dpmsolver++")
    elif kind == "deis":
        sched = diffusers.DEISMultistepScheduler(**common, solver_order=3)
    elif kind == "ipndm":
        sched = diffusers.IPNDMScheduler(num_train_timesteps=T)  # its own sin/cos path
    else:
        return None
    step_kwargs: dict[str, Any] = {}
    if kind in STOCHASTIC:
        step_kwargs["generator"] = torch.Generator().manual_seed(0)
    model = FreeModel(out)

    def run(x: Tensor) -> Any:
        sched.set_timesteps(steps)
        latents = x * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(latents, t)
            eps = model(inp, t)
            latents = sched.step(eps, t, latents, **step_kwargs).prev_sample
        return latents

    sched.set_timesteps(steps)
    return run, len(sched.timesteps)


def randn_time(reps: int = 50) -> float:
    """Seconds per standard-normal draw of the batch (what every ancestral step pays, in any framework)."""
    start = time.perf_counter()
    for _ in range(reps):
        torch.randn(SHAPE)
    return (time.perf_counter() - start) / reps


def model_time(out: Tensor, reps: int = 2000) -> float:
    """Seconds per call of the free model through nn.Module.__call__ (what each framework pays)."""
    model = FreeModel(out)
    x, t = torch.randn(SHAPE), torch.zeros(SHAPE[0], dtype=torch.long)
    start = time.perf_counter()
    for _ in range(reps):
        model(x, t)
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions (median reported)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps per run")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    parser.add_argument("--pipeline", action="store_true", help="time ddkit through Pipeline.sample")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = torch.randn(SHAPE) * 0.1

    kinds = (
        "ddpm",
        "ddim",
        "plms",
        "ipndm",
        "deis",
        "dpm-solver++",
        "dpm-solver++ sde",
        "euler",
        "heun",
        "euler-ancestral",
    )
    runners: dict[tuple[str, str], tuple[Callable[[Tensor], Any], int]] = {}
    for kind in kinds:
        runners[("ddkit", kind)] = ddkit_runner(kind, args.steps, out, args.pipeline)
        gd_run = gd_runner(kind, args.steps, out) if kind in ("ddpm", "ddim", "plms") else None
        if gd_run is not None:
            runners[("guided-diffusion", kind)] = gd_run
        df_run = diffusers_runner(kind, args.steps, out)
        if df_run is not None:
            runners[("diffusers", kind)] = df_run

    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    model_s: list[float] = []
    randn_s: list[float] = []
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for _ in range(args.reps):
            model_s.append(model_time(out, 300))
            randn_s.append(randn_time())
            for key, (run, nfe) in runners.items():
                start = time.perf_counter()
                run(x)
                times[key].append((time.perf_counter() - start) / nfe)
    m = statistics.median(model_s)
    noise = statistics.median(randn_s)

    rows = []
    for kind in kinds:
        row: dict[str, Any] = {"sampler": kind}
        for fw in ("ddkit", "guided-diffusion", "diffusers"):
            if (fw, kind) in times:
                row[fw] = (statistics.median(times[(fw, kind)]) - m) * 1e6
        if "diffusers" in row:
            row["ratio_ddkit_diffusers"] = row["ddkit"] / row["diffusers"]
        if "guided-diffusion" in row:
            row["ratio_ddkit_guided"] = row["ddkit"] / row["guided-diffusion"]
        if kind in STOCHASTIC and "diffusers" in row:
            # Both draw one batch of noise per step; without it the ratio compares the rest.
            row["ratio_without_noise_draw"] = (row["ddkit"] - noise * 1e6) / (row["diffusers"] - noise * 1e6)
        rows.append(row)

    result = {
        "unit": "microseconds of framework overhead per model evaluation (median)",
        "shape": list(SHAPE),
        "threads": 1,
        "steps": args.steps,
        "reps": args.reps,
        "ddkit_path": "Pipeline.sample" if args.pipeline else "sampler.sample",
        "model_call_us": m * 1e6,
        "noise_draw_us": noise * 1e6,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }

    def cell(v: float | None) -> str:
        return "—" if v is None else f"{v:.0f}"

    print(
        "Per-step framework overhead, µs per model evaluation "
        f"(batch {SHAPE}, CPU, 1 thread, {args.steps} steps,"
    )
    print(f"median of {args.reps} interleaved runs; free model call {m * 1e6:.1f} µs subtracted)\n")

    def r(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    print("| sampler | ddkit | guided-diffusion | diffusers | ddkit / diffusers |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['sampler']} | {cell(row.get('ddkit'))} | {cell(row.get('guided-diffusion'))} | "
            f"{cell(row.get('diffusers'))} | {r(row.get('ratio_ddkit_diffusers'))} |"
        )
    print(f"\nA noise draw of the batch (torch.randn) takes {noise * 1e6:.0f} µs, paid once per step by both")
    for row in rows:
        if "ratio_without_noise_draw" in row:
            print(f"  {row['sampler']}: ddkit / diffusers without it {row['ratio_without_noise_draw']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
