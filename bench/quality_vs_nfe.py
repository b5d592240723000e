"""Sample quality against model evaluations: every ddkit sampler beside diffusers' and guided-diffusion's.

One small ε-MLP is trained on a 2-D 8-Gaussian ring (once; weights cached under --cache) and
sampled by every sampler at NFE 5, 10, 20, 50 and 1000 from the same x_T; quality is the
sliced Wasserstein distance to fresh data (lower is better; ``floor`` is the distance between
two independent data samples of the same size). diffusers' schedulers run with their default
configurations (clipping off), driven step by step with the same model. Beside ddkit's
defaults, three variants: DPM-Solver++ on diffusers' grid (``spacing="linspace"``) and
Euler/Heun started at λ ≥ −4.4 (EDM's σ_max = 80).

The exact-denoiser section (``--exact`` runs it alone) needs no training: the ring's ε is
known in closed form (``_toy.ExactRing``), so every framework samples the same exact model and
what differs is the solver. Each sampler's output is compared with the exact probability-flow
solution from the same x_T (DPM-Solver++(3M), 400 log-SNR steps over the whole chain), which
resolves differences far below the data-to-data floor of the trained section: ddkit at its
defaults and at its best settings (spacing and ``lambda_min`` searched on a separate draw),
diffusers' schedulers (UniPC, DEIS, DPM++ 2M/3M/SDE, PNDM, iPNDM, Euler, Heun, LMS, ...) and
k-diffusion's samplers on Karras σ's, all at their defaults, NFE 5, 10 and 20, linear and cosine.

    python bench/quality_vs_nfe.py [--schedule cosine] [--json out.json] [--plot out.png]
    python bench/quality_vs_nfe.py --exact --exact-samples 10000 --sweep-samples 2000 --threads 1
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
from _toy import (
    ExactRing,
    betas_for,
    load_k_diffusion_sampling,
    make_denoiser,
    ring8,
    ring_posterior,
    sliced_wasserstein,
    train_toy,
)
from report import defaults_check
from torch import Tensor, nn

import ddkit

NFES = (5, 10, 20, 50, 1000)
T = 1000
DDKIT = ("ddpm", "ddim", "plms", "ipndm", "deis", "dpm-solver++", "euler", "heun", "euler-ancestral")
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
    steps = steps_for(name, nfe)
    if nfe >= T:
        # "NFE 1000": every training step the sampler's start (lambda_min) leaves.
        from ddkit.sampling import auto_lambda_min, last_timestep_above

        lam = params.get("lambda_min", auto_lambda_min(2))  # "auto" on 2-D points
        usable = T if lam is None else last_timestep_above(GaussianProcessFor(schedule).alphas_cumprod, lam)
        grid = name in ("dpm-solver++", "ipndm", "deis")  # steps + 1 grid points
        steps = min(steps, usable - 1 if grid else usable)
    sampler = ddkit.create("sampler", name, steps=steps, **params)
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


# -- the exact-denoiser section ----------------------------------------------------------------

EXACT_NFES = (5, 10, 20)
#: ddkit samplers at their defaults: (label, registered name, parameters).
EXACT_DDKIT: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ddpm", "ddpm", {}),
    ("ddim", "ddim", {}),
    ("plms", "plms", {}),
    ("ipndm", "ipndm", {}),
    ("deis", "deis", {}),
    ("dpm-solver++", "dpm-solver++", {}),
    ("dpm-solver++ order=3", "dpm-solver++", {"order": 3}),
    ("dpm-solver++ sde", "dpm-solver++", {"sde": True}),
    ("dpm-solver++ sde order=3", "dpm-solver++", {"sde": True, "order": 3}),
    ("euler", "euler", {}),
    ("heun", "heun", {}),
    ("euler-ancestral", "euler-ancestral", {}),
)
#: What the "best settings" search varies for every sampler (on a smaller sample, then re-measured).
SWEEP_SPACINGS: tuple[str | None, ...] = (None, "logsnr", "karras", "leading")
SWEEP_LAMBDA: tuple[float | None, ...] = (-5.1, -3.5, -2.5, -2.0)
SWEEP_ORDERS = {"ipndm": (2, 3, 4), "deis": (2, 3), "dpm-solver++": (2, 3)}


def _exact_steps(name: str, nfe: int) -> int:
    if name in ("heun", "dpm_2"):
        return max(1, (nfe + 1) // 2)  # NFE = 2·steps − 1
    if name in ("plms", "pndm"):
        return max(1, nfe - 1)  # the first step takes two evaluations
    return nfe


def exact_ddkit(
    name: str, params: dict[str, Any], nfe: int, model: nn.Module, schedule: str, x_T: Tensor
) -> Tensor:
    """One ddkit sample of the exact model (raises ValueError where the settings cannot give ``nfe``)."""
    import warnings

    sampler = ddkit.create("sampler", name, steps=_exact_steps(name, nfe), **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sampler.sample(make_denoiser(model, schedule), x_T, generator=torch.Generator().manual_seed(2))


def exact_diffusers(name: str, nfe: int, model: ExactRing, schedule: str, x_T: Tensor) -> Tensor | None:
    """One diffusers sample of the exact model, the scheduler at its defaults (None: not installed)."""
    try:
        import diffusers
    except ImportError:
        return None
    common: dict[str, Any] = {"num_train_timesteps": T, "trained_betas": betas_for(schedule, T)}
    classes: dict[str, Callable[[], Any]] = {
        "unipc": lambda: diffusers.UniPCMultistepScheduler(**common),
        "deis": lambda: diffusers.DEISMultistepScheduler(**common),
        "dpm++ 2m": lambda: diffusers.DPMSolverMultistepScheduler(**common),
        "dpm++ 3m": lambda: diffusers.DPMSolverMultistepScheduler(**common, solver_order=3),
        "dpm++ 2m sde": lambda: diffusers.DPMSolverMultistepScheduler(
            **common, algorithm_type="sde-dpmsolver++"
        ),
        "dpm++ 3m sde": lambda: diffusers.DPMSolverMultistepScheduler(
            **common, algorithm_type="sde-dpmsolver++", solver_order=3
        ),
        "pndm": lambda: diffusers.PNDMScheduler(**common, skip_prk_steps=True),
        "ipndm": lambda: diffusers.IPNDMScheduler(num_train_timesteps=T),
        "euler": lambda: diffusers.EulerDiscreteScheduler(**common),
        "heun": lambda: diffusers.HeunDiscreteScheduler(**common),
        "lms": lambda: diffusers.LMSDiscreteScheduler(**common),
        "euler-ancestral": lambda: diffusers.EulerAncestralDiscreteScheduler(**common),
        "ddim": lambda: diffusers.DDIMScheduler(**common, clip_sample=False),
        "ddpm": lambda: diffusers.DDPMScheduler(**common, clip_sample=False),
    }
    sched = classes[name]()
    sched.set_timesteps(_exact_steps(name, nfe))
    gen = torch.Generator().manual_seed(2)
    stochastic = name in ("ddpm", "euler-ancestral", "dpm++ 2m sde", "dpm++ 3m sde")
    kwargs = {"generator": gen} if stochastic else {}
    latents = x_T * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = sched.scale_model_input(latents, t)
        if name == "ipndm":
            # diffusers' IPNDM walks its own path ᾱ = cos²(tπ/2) and takes a v-prediction.
            ab = torch.cos(t.double() * math.pi / 2).square().clamp(0.0, 1.0).expand(inp.shape[0])
            x0, eps = ring_posterior(inp, ab)
            out = (ab.sqrt()[:, None] * eps - (1 - ab).sqrt()[:, None] * x0).to(inp.dtype)
        else:
            out = model(inp, t.expand(inp.shape[0]))
        latents = sched.step(out, t, latents, **kwargs).prev_sample
    return latents


KDIFF = ("euler", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "euler_ancestral")


def exact_kdiffusion(name: str, nfe: int, kd: Any, schedule: str, x_T: Tensor) -> Tensor | None:
    """One k-diffusion sample at its defaults: Karras σ's between the chain's ends, exact D(x; σ)."""
    from ddkit.sampling import sigmas_of

    sig = sigmas_of(GaussianProcessFor(schedule).alphas_cumprod)
    steps = _exact_steps("heun" if name == "heun" else name, nfe)
    sigmas = kd.get_sigmas_karras(steps, float(sig[0]), float(sig[-1])).double()
    gen = torch.Generator().manual_seed(2)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        ab = 1.0 / (1.0 + sigma.double().reshape(-1).expand(x.shape[0]) ** 2)
        return ring_posterior(x * ab.sqrt()[:, None], ab)[0].to(x.dtype)

    extra: dict[str, Any] = {"disable": True}
    if name.endswith("sde") or name.endswith("ancestral"):
        extra["noise_sampler"] = lambda s, s_next: torch.randn(x_T.shape, generator=gen, dtype=x_T.dtype)
    x = x_T * math.sqrt(1.0 + float(sigmas[0]) ** 2)
    return getattr(kd, f"sample_{name}")(denoise, x, sigmas, **extra)


def GaussianProcessFor(schedule: str) -> Any:  # a cached constructor, named as the class
    from ddkit.diffusion import GaussianProcess

    key = ("process", schedule)
    if key not in _CACHE:
        _CACHE[key] = GaussianProcess(betas_for(schedule, T))
    return _CACHE[key]


_CACHE: dict[Any, Any] = {}


def reference(schedule: str, x_T: Tensor) -> Tensor:
    """The probability-flow ODE's end for ``x_T`` on the exact model: DPM-Solver++(3M), 400 log-SNR steps.

    Over the whole chain (λ from −9.9 on cosine): the exact model has no error to amplify there.
    Its distance to a 2x finer solve is below 1e-4, far under every sampler compared.
    """
    key = ("reference", schedule, x_T.shape[0], float(x_T[0, 0]))
    if key not in _CACHE:
        model = ExactRing(GaussianProcessFor(schedule).alphas_cumprod)
        params = {"order": 3, "spacing": "logsnr", "lambda_min": None}
        _CACHE[key] = exact_ddkit("dpm-solver++", params, 400, model, schedule, x_T)
    return _CACHE[key]


def best_settings(name: str, params: dict[str, Any], nfe: int, schedule: str, small: int) -> dict[str, Any]:
    """The settings of ``name`` with the lowest distance at ``nfe``, searched on a ``small``-sample run."""
    model = ExactRing(GaussianProcessFor(schedule).alphas_cumprod)
    x_T = torch.randn(small, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = reference(schedule, x_T)
    best: tuple[float, dict[str, Any]] = (math.inf, dict(params))
    for spacing in SWEEP_SPACINGS:
        for lam in SWEEP_LAMBDA:
            trial = dict(params)
            if spacing is not None:
                trial["spacing"] = spacing
            trial["lambda_min"] = lam
            try:
                out = exact_ddkit(name, trial, nfe, model, schedule, x_T)
            except ValueError:
                continue
            sw = sliced_wasserstein(out, ref, n_proj=64)
            if sw < best[0]:
                best = (sw, trial)
    return best[1]


def exact_section(
    schedules: tuple[str, ...],
    samples: int,
    sweep_samples: int,
    frameworks: tuple[str, ...] = ("ddkit", "ddkit best", "diffusers", "k-diffusion"),
) -> dict[str, Any]:
    """Every sampler on the exact denoiser: ddkit at defaults and best settings, diffusers, k-diffusion.

    The distance is to the exact ODE solution from the same x_T (:func:`reference`), so a
    deterministic sampler's score is its discretisation error alone; ``floor`` is the distance
    between the reference solutions of two independent noise draws, what a stochastic sampler
    scores at best (its own noise decides which mode each sample reaches).
    """
    kd = load_k_diffusion_sampling() if "k-diffusion" in frameworks else None
    results: list[dict[str, Any]] = []
    x_T = torch.randn(samples, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    other = torch.randn(samples, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    floors = {}
    for schedule in schedules:
        model = ExactRing(GaussianProcessFor(schedule).alphas_cumprod)
        ref = reference(schedule, x_T)
        floors[schedule] = sliced_wasserstein(reference(schedule, other), ref)
        data = ring8(samples, torch.Generator().manual_seed(99))
        print(
            f"{schedule}: floor {floors[schedule]:.4f}; reference to data {sliced_wasserstein(ref, data):.4f}"
        )

        def record(
            framework: str,
            label: str,
            nfe: int,
            out: Tensor | None,
            settings: str = "",
            ref: Tensor = ref,
            schedule: str = schedule,
        ) -> None:
            if out is None:
                return
            sw = sliced_wasserstein(out.double(), ref)
            row = {"schedule": schedule, "framework": framework, "sampler": label, "nfe": nfe, "sw": sw}
            if settings:
                row["settings"] = settings
            results.append(row)
            print(
                f"{schedule:>7} {framework:>12} {label:<26} NFE {nfe:>3}  SW {sw:.4f} {settings}", flush=True
            )

        for nfe in EXACT_NFES:
            for label, name, params in EXACT_DDKIT:
                if "ddkit" in frameworks:
                    try:
                        record("ddkit", label, nfe, exact_ddkit(name, params, nfe, model, schedule, x_T))
                    except ValueError as err:
                        print(f"  {label} NFE {nfe}: {err}")
                if "ddkit best" in frameworks:
                    best = best_settings(name, params, nfe, schedule, sweep_samples)
                    shown = ", ".join(f"{k}={v!r}" for k, v in best.items() if params.get(k) != v)
                    out = exact_ddkit(name, best, nfe, model, schedule, x_T)
                    record("ddkit best", label, nfe, out, shown)
            if "diffusers" in frameworks:
                for name in DIFFUSERS_EXACT:
                    try:
                        record("diffusers", name, nfe, exact_diffusers(name, nfe, model, schedule, x_T))
                    except (ValueError, ZeroDivisionError, IndexError) as err:
                        print(f"  diffusers {name} NFE {nfe}: {type(err).__name__}: {err}")
            if kd is not None:
                for name in KDIFF:
                    record("k-diffusion", name, nfe, exact_kdiffusion(name, nfe, kd, schedule, x_T))
    return {"samples": samples, "floors": floors, "results": results}


DIFFUSERS_EXACT = ("unipc", "deis", "dpm++ 2m", "dpm++ 3m", "dpm++ 2m sde", "dpm++ 3m sde", "pndm",
                   "ipndm", "euler", "heun", "lms", "euler-ancestral", "ddim", "ddpm")  # fmt: skip


def exact_table(payload: dict[str, Any]) -> str:
    """The exact-denoiser results as a markdown table per schedule, best of each framework last."""
    rows = payload["results"]
    lines = []
    for schedule in sorted({r["schedule"] for r in rows}):
        floor = payload["floors"][schedule]
        lines += [
            f"\n{schedule} (distance to the exact ODE solution from the same noise; "
            f"{payload['samples']} samples; stochastic samplers' floor {floor:.4f})\n",
            "| framework | sampler | " + " | ".join(f"NFE {n}" for n in EXACT_NFES) + " | settings (best) |",
            "|---|---|" + "---:|" * len(EXACT_NFES) + "---|",
        ]
        keys = list(dict.fromkeys((r["framework"], r["sampler"]) for r in rows if r["schedule"] == schedule))
        for framework, sampler in keys:
            hits = {
                r["nfe"]: r
                for r in rows
                if (r["schedule"], r["framework"], r["sampler"]) == (schedule, framework, sampler)
            }
            cells = [
                f"{hits[n]['sw']:.4f}" if n in hits and math.isfinite(hits[n]["sw"]) else "—"
                for n in EXACT_NFES
            ]
            settings = "; ".join(
                f"{n}: {hits[n]['settings']}" for n in EXACT_NFES if n in hits and hits[n].get("settings")
            )
            lines.append(f"| {framework} | {sampler} | " + " | ".join(cells) + f" | {settings} |")
        lines.append("\n" + defaults_check(rows, schedule, floor))
        for nfe in EXACT_NFES:
            here = [r for r in rows if r["schedule"] == schedule and r["nfe"] == nfe]
            ours = min((r for r in here if r["framework"].startswith("ddkit")), key=lambda r: r["sw"])
            peers = [r for r in here if not r["framework"].startswith("ddkit")]
            if peers:
                peer = min(peers, key=lambda r: r["sw"])
                how = ours.get("settings", "defaults")
                lines.append(
                    f"\nNFE {nfe}: ddkit's best {ours['sampler']} {ours['sw']:.4f} ({how}); best peer "
                    f"{peer['framework']} {peer['sampler']} {peer['sw']:.4f}: "
                    f"ratio {ours['sw'] / peer['sw']:.2f}"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="the exact-denoiser section only (no training; linear and cosine)",
    )
    parser.add_argument("--sweep-samples", type=int, default=1000, help="samples of the best-settings search")
    parser.add_argument(
        "--exact-samples", type=int, default=5000, help="samples of the exact-denoiser section (0: skip it)"
    )
    parser.add_argument("--schedule", default="cosine", choices=("cosine", "linear"))
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--iters", type=int, default=3000, help="training iterations of the toy model")
    parser.add_argument("--hidden", type=int, default=64, help="width of the toy MLP")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ddkit-bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (needs matplotlib)")
    parser.add_argument(
        "--paths",
        action="store_true",
        help="the Gaussian-paths section only: cosine ε, rectified-flow velocity and edm models trained by "
        "ddkit.Trainer, every sampler (bench/quality_paths.py; --iters, --samples and --json apply)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.paths:
        import quality_paths

        extra = ["--json", str(args.json)] if args.json else []
        quality_paths.main(["--steps", str(args.iters), "--samples", str(args.samples), *extra])
        return
    if args.exact:
        start = time.perf_counter()
        payload = exact_section(("linear", "cosine"), args.exact_samples, args.sweep_samples)
        payload["seconds"] = time.perf_counter() - start
        print(exact_table(payload))
        if args.json:
            args.json.write_text(json.dumps(payload, indent=2))
        print(f"\ntotal {payload['seconds']:.0f}s")
        return

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

    exact = None
    if args.exact_samples > 0:
        exact = exact_section(("linear", "cosine"), args.exact_samples, args.sweep_samples)
        print(exact_table(exact))
    if args.json:
        payload = {
            "schedule": args.schedule,
            "samples": args.samples,
            "hidden": args.hidden,
            "iters": args.iters,
            "floor": floor,
            "seconds": time.perf_counter() - start,
            "results": results,
            "exact": exact,
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
