"""Sample quality against model evaluations: every ddkit sampler beside diffusers' and guided-diffusion's.

One small ε-MLP is trained on a 2-D 8-Gaussian ring (once; weights cached under --cache) and
sampled by every sampler at NFE 5, 10, 20, 50 and 1000 from the same x_T; quality is the
sliced Wasserstein distance to fresh data (lower is better; ``floor`` is the distance between
two independent data samples of the same size). diffusers' schedulers run with their default
configurations (clipping off), driven step by step with the same model. Beside ddkit's
defaults, three variants: DPM-Solver++ on diffusers' grid (``spacing="linspace"``) and
Euler/Heun started at λ ≥ −4.4 (EDM's σ_max = 80).

    python bench/quality_vs_nfe.py [--schedule cosine] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _toy import betas_for, make_denoiser, ring8, sliced_wasserstein, train_toy
from torch import Tensor, nn

import ddkit

NFES = (5, 10, 20, 50, 1000)
T = 1000
DDKIT = ("ddpm", "ddim", "plms", "dpm-solver++", "euler", "heun", "euler-ancestral")
#: ddkit variants beside the defaults: diffusers' grid for DPM-Solver++ (what blows up on cosine),
#: and the Karras samplers started at EDM's σ_max = 80 (λ ≥ −4.4).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm-solver++ spacing=linspace": ("dpm-solver++", {"spacing": "linspace"}),
    "euler lambda_min=-4.4": ("euler", {"lambda_min": -4.4}),
    "heun lambda_min=-4.4": ("heun", {"lambda_min": -4.4}),
}


def steps_for(name: str, nfe: int) -> int:
    """The step count giving (at most) ``nfe`` model evaluations."""
    if name in ("heun",):
        return max(1, (nfe + 1) // 2)  # NFE = 2·steps − 1
    if name in ("plms", "pndm"):
        return max(1, nfe - 1)  # the first step takes two evaluations
    if name == "dpm-solver++":
        return min(nfe, T - 1)  # a σ grid of steps + 1 points ends at σ = 0
    return nfe


def ddkit_run(name: str, nfe: int, model: nn.Module, schedule: str, x_T: Tensor) -> tuple[Tensor, int]:
    name, params = VARIANTS.get(name, (name, {}))
    sampler = ddkit.create("sampler", name, steps=steps_for(name, nfe), **params)
    out = sampler.sample(make_denoiser(model, schedule), x_T, generator=torch.Generator().manual_seed(2))
    return out, sampler.last_nfe


def diffusers_run(
    name: str, nfe: int, model: nn.Module, schedule: str, x_T: Tensor
) -> tuple[Tensor, int] | None:
    try:
        import diffusers
    except ImportError:
        return None
    common: dict[str, Any] = {"num_train_timesteps": T, "trained_betas": betas_for(schedule, T)}
    classes: dict[str, Callable[[], Any]] = {
        "ddpm": lambda: diffusers.DDPMScheduler(**common, clip_sample=False),
        "ddim": lambda: diffusers.DDIMScheduler(**common, clip_sample=False),
        "pndm": lambda: diffusers.PNDMScheduler(**common, skip_prk_steps=True),
        "dpm-solver++": lambda: diffusers.DPMSolverMultistepScheduler(**common),
        "euler": lambda: diffusers.EulerDiscreteScheduler(**common),
        "heun": lambda: diffusers.HeunDiscreteScheduler(**common),
        "euler-ancestral": lambda: diffusers.EulerAncestralDiscreteScheduler(**common),
    }
    sched = classes[name]()
    try:
        sched.set_timesteps(steps_for(name, nfe))
    except (ValueError, ZeroDivisionError):
        return None
    gen = torch.Generator().manual_seed(2)
    kwargs = {"generator": gen} if name in ("ddpm", "euler-ancestral") else {}
    latents = x_T * sched.init_noise_sigma
    calls = 0
    for t in sched.timesteps:
        inp = sched.scale_model_input(latents, t)
        eps = model(inp, t.expand(x_T.shape[0]))
        calls += 1
        latents = sched.step(eps, t, latents, **kwargs).prev_sample
    return latents, calls


def guided_run(
    name: str, nfe: int, model: nn.Module, schedule: str, x_T: Tensor
) -> tuple[Tensor, int] | None:
    try:
        from guided_diffusion import gaussian_diffusion as gd
        from guided_diffusion.respace import SpacedDiffusion, space_timesteps
    except ImportError:
        return None
    section = str(nfe)
    if name == "ddim":
        try:
            space_timesteps(T, f"ddim{nfe}")
            section = f"ddim{nfe}"
        except ValueError:
            pass
    diffusion = SpacedDiffusion(
        use_timesteps=space_timesteps(T, section),
        betas=betas_for(schedule, T),
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.FIXED_SMALL,
        loss_type=gd.LossType.MSE,
    )
    torch.manual_seed(2)
    loop = diffusion.p_sample_loop if name == "ddpm" else diffusion.ddim_sample_loop
    out = loop(model, tuple(x_T.shape), noise=x_T, clip_denoised=False, device="cpu")
    return out, diffusion.num_timesteps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schedule", default="cosine", choices=("cosine", "linear"))
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--iters", type=int, default=3000, help="training iterations of the toy model")
    parser.add_argument("--hidden", type=int, default=64, help="width of the toy MLP")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ddkit-bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (needs matplotlib)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = train_toy(
        args.schedule, T=T, iters=args.iters, batch=512, hidden=args.hidden, cache_dir=args.cache
    )
    trained = time.perf_counter() - start
    data = ring8(args.samples, torch.Generator().manual_seed(99))
    floor = sliced_wasserstein(ring8(args.samples, torch.Generator().manual_seed(98)), data)
    x_T = torch.randn(args.samples, 2, generator=torch.Generator().manual_seed(1))

    runs: list[tuple[str, str, Callable[..., Any]]] = [("ddkit", n, ddkit_run) for n in (*DDKIT, *VARIANTS)]
    runs += [
        ("diffusers", n, diffusers_run)
        for n in ("ddpm", "ddim", "pndm", "dpm-solver++", "euler", "heun", "euler-ancestral")
    ]
    runs += [("guided-diffusion", n, guided_run) for n in ("ddpm", "ddim")]
    results: list[dict[str, Any]] = []
    with torch.no_grad():
        for framework, name, fn in runs:
            for nfe in NFES:
                got = fn(name, nfe, model, args.schedule, x_T)
                if got is None:
                    continue
                out, used = got
                sw = sliced_wasserstein(out.float(), data)
                results.append(
                    {"framework": framework, "sampler": name, "nfe": used, "target_nfe": nfe, "sw": sw}
                )
                print(f"{framework:>16} {name:<16} NFE {used:>4}  SW {sw:.4f}", flush=True)

    print(
        f"\nSliced Wasserstein to data ({args.schedule} schedule, {args.samples} samples; floor {floor:.4f}; "
        f"model trained in {trained:.0f}s)\n"
    )
    print("| framework | sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
    print("|---|---|" + "---:|" * len(NFES))
    for framework, name, _ in runs:
        cells = []
        for nfe in NFES:
            hit = [
                r
                for r in results
                if r["framework"] == framework and r["sampler"] == name and r["target_nfe"] == nfe
            ]
            cells.append(
                "—" if not hit else (f"{hit[0]['sw']:.3f}" if math.isfinite(hit[0]["sw"]) else "inf")
            )
        print(f"| {framework} | {name} | " + " | ".join(cells) + " |")

    if args.json:
        payload = {
            "schedule": args.schedule,
            "samples": args.samples,
            "hidden": args.hidden,
            "iters": args.iters,
            "floor": floor,
            "seconds": time.perf_counter() - start,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    if args.plot:
        plot(results, floor, args.schedule, args.plot)
    print(f"\ntotal {time.perf_counter() - start:.0f}s")


def plot(results: list[dict[str, Any]], floor: float, schedule: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"ddkit": "-", "diffusers": "--", "guided-diffusion": ":"}
    # One colour per sampler (pndm is diffusers' name for plms), one line style per framework.
    names = sorted({"plms" if r["sampler"] == "pndm" else r["sampler"] for r in results})
    cmap = plt.get_cmap("tab20")
    colors = {name: cmap(i % 20) for i, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    keys = sorted({(r["framework"], r["sampler"]) for r in results})
    for framework, name in keys:
        rows = sorted(
            (r for r in results if (r["framework"], r["sampler"]) == (framework, name)),
            key=lambda r: r["nfe"],
        )
        ys = [min(r["sw"], 100.0) for r in rows]
        color = colors["plms" if name == "pndm" else name]
        ax.plot(
            [r["nfe"] for r in rows],
            ys,
            styles[framework],
            color=color,
            marker="o",
            ms=3,
            label=f"{framework} {name}",
        )
    ax.axhline(floor, color="gray", lw=0.8, label="data vs data")
    ax.set(xscale="log", yscale="log", xlabel="model evaluations (NFE)", ylabel="sliced Wasserstein to data")
    ax.set_title(f"2-D ring, {schedule} schedule")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
