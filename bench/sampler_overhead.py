"""Per-step framework overhead of ddkit's samplers beside guided-diffusion's and diffusers' equivalents.

A near-free model (it returns a precomputed tensor) runs each sampler on a batch of 16 images
3×32×32 on one CPU thread; the time per model evaluation minus the model's own time is the
framework's overhead. ddkit is timed twice: on a bare sampler (``sampler.sample`` on a
``Denoiser``) and through ``Pipeline.sample`` (the call users make; the x_T is given, so its
per-call work is the config-built denoiser, the sampler's checks and the plan). Every
configuration runs once per repetition, interleaved, so drifts in machine load hit all alike;
medians are reported, with ddkit's ratios to diffusers. Time is this thread's CPU time
(``time.thread_time_ns``; torch runs on the calling thread with one thread), which other
processes on a shared machine disturb far less than wall time.
Clipping of x_0 is off everywhere (diffusers' DPM-Solver++ has none), variance fixed-small.

    python bench/sampler_overhead.py [--reps 15] [--steps 50] [--mode both|bare|pipeline]
                                     [--only ddim ipndm ...] [--json out.json]

Issue 19's target is ddkit ≤ 0.3× diffusers for every sampler with a diffusers equivalent, through
``Pipeline.sample`` as well as on a bare sampler, on the chain of betas the issue measured (linear).
The rectified-flow rows are reported beside them: there diffusers' Euler step is one fused update
(x + dt·v), whose own time (``fused_update_us``, timed alone) is the floor of any framework's step.
The stochastic samplers (DDPM, Euler-ancestral, SDE-DPM-Solver++, flow-sde) also draw a batch of
standard normal noise per step: one ``torch.randn`` of the batch from a generator, the same call
in every framework and, on one CPU thread, several times the rest of ddkit's step. It is timed on
its own, and the ratio without it (what the frameworks add around the same random numbers) is
the one judged; the plain ratio is reported beside it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
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

SHAPE = (16, 3, 32, 32)
T = 1000
#: Benchmark rows: the registered sampler, its parameters, and the schedule and parameterization.
VARIANTS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "ddpm": ("ddpm", {}, "linear", "epsilon"),
    "ddim": ("ddim", {}, "linear", "epsilon"),
    "plms": ("plms", {}, "linear", "epsilon"),
    "ipndm": ("ipndm", {}, "linear", "epsilon"),
    "deis": ("deis", {}, "linear", "epsilon"),
    "dpm-solver++": ("dpm-solver++", {}, "linear", "epsilon"),
    "dpm-solver++ 3M": ("dpm-solver++", {"order": 3}, "linear", "epsilon"),
    "dpm-solver++ sde": ("dpm-solver++", {"sde": True}, "linear", "epsilon"),
    "euler": ("euler", {}, "linear", "epsilon"),
    "heun": ("heun", {}, "linear", "epsilon"),
    "euler-ancestral": ("euler-ancestral", {}, "linear", "epsilon"),
    "euler (rectified flow)": ("euler", {}, "rectified-flow", "velocity"),
    "flow-sde (rectified flow)": ("flow-sde", {}, "rectified-flow", "velocity"),
}
#: Samplers that draw a batch of noise at (almost) every step.
STOCHASTIC = ("ddpm", "euler-ancestral", "dpm-solver++ sde", "flow-sde (rectified flow)")
#: The frameworks timed, in the order of the table's columns.
FRAMEWORKS = ("ddkit", "ddkit-pipeline", "guided-diffusion", "diffusers")


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


def _pipeline(kind: str, steps: int, out: Tensor) -> ddkit.Pipeline:
    name, params, schedule, prediction = VARIANTS[kind]
    return ddkit.Pipeline.from_config(
        {
            "schedule": {"name": schedule, "timesteps": T},
            "parameterization": {"name": prediction, "variance": "fixed-small", "clip_denoised": False},
            "sampler": {"name": name, "steps": steps, **params},
        },
        model=FreeModel(out),
    )


def ddkit_runner(
    kind: str, steps: int, out: Tensor, pipeline: bool = False
) -> tuple[Callable[[Tensor], Any], int]:
    """One run of ddkit's sampler for ``kind``: through ``Pipeline.sample``, or on a bare denoiser."""
    pipe = _pipeline(kind, steps, out)
    gen = torch.Generator().manual_seed(0)
    if pipeline:

        def run_pipe(x: Tensor) -> Any:
            return pipe.sample(x_T=x, generator=gen)

        sampler: Any = pipe.sampler  # a SamplerBase: it counts its evaluations
        run_pipe(torch.randn(SHAPE))
        return run_pipe, sampler.last_nfe
    sampler = pipe.sampler
    denoiser = Denoiser(pipe.model, pipe.parameterization, pipe.process)

    def run(x: Tensor) -> Any:
        return sampler.sample(denoiser, x, generator=gen)

    run(torch.randn(SHAPE))
    return run, sampler.last_nfe


def gd_runner(kind: str, steps: int, out: Tensor) -> tuple[Callable[[Tensor], Any], int] | None:
    if kind not in ("ddpm", "ddim", "plms"):
        return None
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


def diffusers_scheduler(kind: str) -> Any:
    """diffusers' equivalent of ``kind`` (None where it has none)."""
    diffusers: Any = importlib.import_module("diffusers")  # untyped

    common = {"num_train_timesteps": T, "trained_betas": linear_betas()}
    makers: dict[str, Callable[[], Any]] = {
        "ddpm": lambda: diffusers.DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small"),
        "ddim": lambda: diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True),
        "plms": lambda: diffusers.PNDMScheduler(**common, skip_prk_steps=True, set_alpha_to_one=True),
        "ipndm": lambda: diffusers.IPNDMScheduler(num_train_timesteps=T),  # its own sin/cos path
        "deis": lambda: diffusers.DEISMultistepScheduler(**common, solver_order=3),
        "dpm-solver++": lambda: diffusers.DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2
        ),
        "dpm-solver++ 3M": lambda: diffusers.DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=3
        ),
        "dpm-solver++ sde": lambda: diffusers.DPMSolverMultistepScheduler(
            **common, algorithm_type="sde-dpmsolver++"
        ),
        "euler": lambda: diffusers.EulerDiscreteScheduler(**common, use_karras_sigmas=True),
        "heun": lambda: diffusers.HeunDiscreteScheduler(**common, use_karras_sigmas=True),
        "euler-ancestral": lambda: diffusers.EulerAncestralDiscreteScheduler(**common),
        "euler (rectified flow)": lambda: diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T),
        "flow-sde (rectified flow)": lambda: diffusers.FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=T, stochastic_sampling=True
        ),
    }
    return makers[kind]() if kind in makers else None


def diffusers_runner(kind: str, steps: int, out: Tensor) -> tuple[Callable[[Tensor], Any], int] | None:
    try:
        sched = diffusers_scheduler(kind)
    except ImportError:
        return None
    if sched is None:
        return None
    step_kwargs: dict[str, Any] = {}
    if kind in STOCHASTIC:
        step_kwargs["generator"] = torch.Generator().manual_seed(0)
    model = FreeModel(out)
    # Flow matching's scheduler has neither (its x_T is the noise, its input unscaled).
    sigma0 = getattr(sched, "init_noise_sigma", 1.0)
    scale = getattr(sched, "scale_model_input", lambda latents, t: latents)

    def run(x: Tensor) -> Any:
        sched.set_timesteps(steps)
        latents = x * sigma0 if sigma0 != 1.0 else x
        for t in sched.timesteps:
            inp = scale(latents, t)
            eps = model(inp, t)
            latents = sched.step(eps, t, latents, **step_kwargs).prev_sample
        return latents

    sched.set_timesteps(steps)
    return run, len(sched.timesteps)


def _cpu_s(fn: Callable[[], Any], reps: int) -> float:
    """CPU seconds of this thread per call of ``fn``."""
    start = time.thread_time_ns()
    for _ in range(reps):
        fn()
    return (time.thread_time_ns() - start) / reps * 1e-9


def randn_time(reps: int = 50) -> float:
    """Seconds per standard-normal draw of the batch from a generator (every ancestral step's draw)."""
    gen = torch.Generator().manual_seed(0)
    return _cpu_s(lambda: torch.randn(SHAPE, generator=gen), reps)


def update_time(reps: int = 200) -> float:
    """Seconds per fused update x + c·y of the batch into a fresh tensor (one pass: the least a step makes).

    diffusers' flow-matching Euler step is one such update (x + dt·v), so on rectified flow this is
    the floor of any framework's step, however little Python it runs around it.
    """
    x, y = torch.randn(SHAPE), torch.randn(SHAPE)
    return _cpu_s(lambda: torch.add(x, y, alpha=0.5), reps)


def model_time(out: Tensor, reps: int = 2000) -> float:
    """Seconds per call of the free model through nn.Module.__call__ (what each framework pays)."""
    model = FreeModel(out)
    x, t = torch.randn(SHAPE), torch.zeros(SHAPE[0], dtype=torch.long)
    return _cpu_s(lambda: model(x, t), reps)


def _ratio(a: float | None, b: float | None, less: float = 0.0) -> float | None:
    return None if a is None or b is None else (a - less) / (b - less)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions (median reported)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps per run")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    parser.add_argument(
        "--mode",
        choices=("both", "bare", "pipeline"),
        default="both",
        help="time ddkit on a bare sampler, through Pipeline.sample, or both (default)",
    )
    parser.add_argument("--pipeline", action="store_true", help="the same as --mode pipeline")
    parser.add_argument("--only", nargs="+", default=None, help="only these rows (names as in the table)")
    args = parser.parse_args()
    mode = "pipeline" if args.pipeline else args.mode
    kinds = tuple(args.only) if args.only else tuple(VARIANTS)
    unknown = [k for k in kinds if k not in VARIANTS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(VARIANTS)}")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = torch.randn(SHAPE) * 0.1

    runners: dict[tuple[str, str], tuple[Callable[[Tensor], Any], int]] = {}
    for kind in kinds:
        if mode in ("both", "bare"):
            runners[("ddkit", kind)] = ddkit_runner(kind, args.steps, out)
        if mode in ("both", "pipeline"):
            runners[("ddkit-pipeline", kind)] = ddkit_runner(kind, args.steps, out, pipeline=True)
        for fw, make in (("guided-diffusion", gd_runner), ("diffusers", diffusers_runner)):
            made = make(kind, args.steps, out)
            if made is not None:
                runners[(fw, kind)] = made

    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    model_s: list[float] = []
    randn_s: list[float] = []
    update_s: list[float] = []
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    load = list(os.getloadavg())
    wall = time.perf_counter()
    with torch.no_grad():
        for _ in range(args.reps):
            model_s.append(model_time(out, 300))
            randn_s.append(randn_time())
            update_s.append(update_time())
            for key, (run, nfe) in runners.items():
                start = time.thread_time_ns()
                run(x)
                times[key].append((time.thread_time_ns() - start) * 1e-9 / nfe)
    m = statistics.median(model_s)
    noise = statistics.median(randn_s) * 1e6

    rows = []
    for kind in kinds:
        row: dict[str, Any] = {"sampler": kind, "schedule": VARIANTS[kind][2]}
        for fw in FRAMEWORKS:
            if (fw, kind) in times:
                row[fw] = (statistics.median(times[(fw, kind)]) - m) * 1e6
        bare, pipe, gd, df = (row.get(fw) for fw in FRAMEWORKS)
        extra = {
            "ratio_ddkit_diffusers": _ratio(bare, df),
            "ratio_pipeline_diffusers": _ratio(pipe, df),
            "ratio_ddkit_guided": _ratio(bare, gd),
            "ratio_pipeline_guided": _ratio(pipe, gd),
        }
        if kind in STOCHASTIC:
            # Both draw one batch of noise per step; without it the ratio compares the rest.
            extra["ratio_without_noise_draw"] = _ratio(bare, df, noise)
            extra["ratio_pipeline_without_noise_draw"] = _ratio(pipe, df, noise)
        row.update({k: v for k, v in extra.items() if v is not None})
        rows.append(row)

    result = {
        "unit": "microseconds of framework overhead per model evaluation (median, thread CPU time)",
        "clock": "thread CPU time (time.thread_time_ns)",
        "shape": list(SHAPE),
        "threads": 1,
        "steps": args.steps,
        "reps": args.reps,
        "ddkit_path": {"both": "sampler.sample and Pipeline.sample", "bare": "sampler.sample"}.get(
            mode, "Pipeline.sample"
        ),
        "model_call_us": m * 1e6,
        "noise_draw_us": noise,
        "fused_update_us": statistics.median(update_s) * 1e6,
        "load_avg_at_start": load,
        "wall_s": time.perf_counter() - wall,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }

    def cell(v: float | None, digits: int = 0) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    print(
        "Per-step framework overhead, µs of thread CPU time per model evaluation "
        f"(batch {SHAPE}, CPU, 1 thread, {args.steps} steps,"
    )
    print(f"median of {args.reps} interleaved runs; free model call {m * 1e6:.1f} µs subtracted)\n")
    print(
        "| sampler | ddkit | ddkit Pipeline.sample | guided-diffusion | diffusers | ddkit / diffusers "
        "| Pipeline.sample / diffusers |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['sampler']} | {cell(row.get('ddkit'))} | {cell(row.get('ddkit-pipeline'))} | "
            f"{cell(row.get('guided-diffusion'))} | {cell(row.get('diffusers'))} | "
            f"{cell(row.get('ratio_ddkit_diffusers'), 2)} | {cell(row.get('ratio_pipeline_diffusers'), 2)} |"
        )
    print(f"\nA noise draw of the batch (torch.randn) takes {noise:.0f} µs, paid once per step by both")
    for row in rows:
        if row["sampler"] in STOCHASTIC:
            print(
                f"  {row['sampler']}: ddkit / diffusers without it "
                f"{cell(row.get('ratio_without_noise_draw'), 2)} (bare), "
                f"{cell(row.get('ratio_pipeline_without_noise_draw'), 2)} (Pipeline.sample)"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
