"""Sampling steps per second of an ADM U-Net through ddkit against guided-diffusion, on identical weights.

Meant for a GPU (``--device cuda``); on the CPU it runs a small network as a smoke check.
One guided-diffusion ``UNetModel`` is built from its flags and its state dict is loaded,
``strict=True``, into ddkit's ``adm-unet`` with the same flags. Both then draw a batch with
DDIM (eta 0) over a respaced chain of ``--steps`` steps:

- guided-diffusion: ``SpacedDiffusion.ddim_sample_loop`` in fp32 and with ``convert_to_fp16()``
  (its ``use_fp16``, the precision its released models sample in);
- ddkit: ``Pipeline.sample`` (sampler ``ddim``) in fp32, with ``convert_to_fp16()``
  (like for like), and in bf16 under ``torch.autocast``, attention through ``sdpa``.

``--samplers ddim dpm-solver++`` adds, per sampler, ddkit against diffusers' pipeline loop
(``for t in scheduler.timesteps: x = scheduler.step(model(x, t), t, x).prev_sample``, as
``DDPMPipeline`` and ``DDIMPipeline`` run it) with ``DDIMScheduler`` (clipped x0, eta 0) or
``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2), both calling the same ddkit network
in the same precision (bf16 autocast on CUDA, fp32 on the CPU): the ratio measures the loop and
the solver around one network. diffusers' DDIM is set to walk guided-diffusion's chain (the same
timesteps, alpha_bar = 1 after the last, eps re-derived from the clipped x0), so in fp32 its
samples match guided-diffusion's as ddkit's do. guided-diffusion has no DPM-Solver, so it runs
DDIM only.

Configurations are interleaved round by round after a warm-up round; the median wall time of
each gives steps per second (model evaluations per second; one per DDIM step) and images per
second. The headline ratio is ddkit bf16 against guided-diffusion fp16. Agreement is checked
on one network output at t = 500 and on the final samples; the untrained (random) weights make
the trajectory chaotic, so reduced precision moves the samples far more than one output.

    python bench/sampling_speed.py --device cuda [--quick] [--json out.json]
    python bench/sampling_speed.py --device cpu --channels 32 --batch 1 --steps 2 --reps 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

T = 1000


def flags(args: argparse.Namespace) -> dict[str, Any]:
    """guided-diffusion's model flags (its ImageNet-64 network, scaled by --channels / --res-blocks)."""
    return {
        "image_size": 64,
        "num_channels": args.channels,
        "num_res_blocks": args.res_blocks,
        "attention_resolutions": "32,16,8",
        "num_head_channels": 64 if args.channels % 64 == 0 else 32,
        "learn_sigma": True,
        "resblock_updown": True,
        "use_new_attention_order": True,
        "use_scale_shift_norm": True,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Runner = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]


def build(args: argparse.Namespace, device: torch.device) -> dict[str, Runner]:
    """Per configuration: ``x_T -> sample`` and ``x -> one network output at t = 500``; same weights."""
    from guided_diffusion import gaussian_diffusion as gd
    from guided_diffusion.respace import SpacedDiffusion, space_timesteps
    from guided_diffusion.script_util import create_model

    import ddkit

    f = flags(args)
    torch.manual_seed(0)
    reference = create_model(**f)
    with torch.no_grad():  # the zero-initialized output layers would make every sample alike
        for p in reference.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    state = reference.state_dict()
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    diffusion = SpacedDiffusion(
        use_timesteps=space_timesteps(T, f"ddim{args.steps}"),
        betas=betas,
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.LEARNED_RANGE,
        loss_type=gd.LossType.MSE,
    )
    shape = (args.batch, 3, 64, 64)
    t_mid = torch.full((args.batch,), 500, device=device, dtype=torch.long)

    def gd_runner(fp16: bool) -> Runner:
        model = create_model(**f, use_fp16=fp16)
        model.load_state_dict(state)
        if fp16:
            model.convert_to_fp16()
        model.to(device).eval()

        def run(x: Tensor) -> Tensor:
            with torch.no_grad():
                out: Tensor = diffusion.ddim_sample_loop(
                    model, shape, noise=x, clip_denoised=True, device=device, eta=0.0
                )
            return out

        def forward(x: Tensor) -> Tensor:
            with torch.no_grad():
                out: Tensor = model(x, t_mid)
            return out

        return run, forward

    def ddkit_network(mode: str) -> torch.nn.Module:
        model = ddkit.create("model", "adm-unet", **f, attention_backend=args.attention_backend)
        model.load_state_dict(state, strict=True)
        if mode == "fp16":
            model.convert_to_fp16()
        network: torch.nn.Module = model.to(device).eval()
        return network

    def ddkit_runner(mode: str, sampler: str = "ddim") -> Runner:
        model = ddkit_network(mode)
        params = {"eta": 0.0} if sampler == "ddim" else {}
        pipe = ddkit.Pipeline.from_config(
            {
                "schedule": {"name": "linear", "timesteps": T},
                "parameterization": {"name": "epsilon", "variance": "learned-range", "clip_denoised": True},
                "sampler": {"name": sampler, "steps": args.steps, **params},
            },
            model=model,
        ).to(device)

        def context() -> Any:
            enabled = mode == "bf16"
            return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

        def run(x: Tensor) -> Tensor:
            with context():
                return pipe.sample(x_T=x)

        def forward(x: Tensor) -> Tensor:
            with context(), torch.no_grad():
                out: Tensor = model(x, t_mid)
            return out

        return run, forward

    def diffusers_runner(mode: str, sampler: str) -> Runner:
        """diffusers' pipeline loop around the same ddkit network, in the same precision."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        model = ddkit_network("fp32")
        schedule = {"num_train_timesteps": T, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
        scheduler: Any
        if sampler == "ddim":
            scheduler = DDIMScheduler(**schedule, clip_sample=True, set_alpha_to_one=True)  # type: ignore[no-untyped-call]
        else:
            scheduler = DPMSolverMultistepScheduler(  # type: ignore[no-untyped-call]
                **schedule, algorithm_type="dpmsolver++", solver_order=2
            )
        scheduler.set_timesteps(args.steps)

        def context() -> Any:
            return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16")

        def run(x: Tensor) -> Tensor:
            # As DDIMPipeline does: timesteps on the CPU (the scheduler indexes its CPU tables with
            # them), moved to the device for the network; set again to reset DPM-Solver's history.
            scheduler.set_timesteps(args.steps)
            # eps re-derived from the clipped x0, as guided-diffusion and ddkit do
            kwargs = {"eta": 0.0, "use_clipped_model_output": True} if sampler == "ddim" else {}
            with context(), torch.no_grad():
                for t in scheduler.timesteps:
                    t_in = t.to(device).expand(x.shape[0])
                    eps = model(x, t_in)[:, :3].float()  # learned sigma: drop the variance
                    x = scheduler.step(eps, t, x, **kwargs).prev_sample
            return x

        def forward(x: Tensor) -> Tensor:
            with context(), torch.no_grad():
                out: Tensor = model(x, t_mid)
            return out

        return run, forward

    runners: dict[str, Runner] = {}
    if "ddim" in args.samplers:
        runners["guided-diffusion fp32"] = gd_runner(False)
        runners["ddkit fp32"] = ddkit_runner("fp32")
        if device.type == "cuda":
            runners["guided-diffusion fp16"] = gd_runner(True)
            runners["ddkit fp16 (convert_to_fp16)"] = ddkit_runner("fp16")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():  # bf16 on most CPUs: far slower
        runners["ddkit bf16 (autocast)"] = ddkit_runner("bf16")
    low = low_precision(device)
    label = "bf16 (autocast)" if low == "bf16" else "fp32"
    if args.diffusers and "ddim" in args.samplers:
        runners[f"diffusers DDIM loop {label}"] = diffusers_runner(low, "ddim")
    if "dpm-solver++" in args.samplers:
        runners[f"ddkit dpm-solver++ {label}"] = ddkit_runner(low, "dpm-solver++")
        if args.diffusers:
            runners[f"diffusers DPM-Solver++ loop {label}"] = diffusers_runner(low, "dpm-solver++")
    return runners


def low_precision(device: torch.device) -> str:
    """The precision ddkit's headline runs in: bf16 autocast on a GPU that has it, else fp32."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    runners = build(args, device)
    x = torch.randn((args.batch, 3, 64, 64), generator=torch.Generator().manual_seed(1)).to(device)
    outputs: dict[str, Tensor] = {}
    forwards: dict[str, Tensor] = {}
    for name, (run, forward) in runners.items():  # warm-up round (kernel selection, caches)
        outputs[name] = run(x).float()
        forwards[name] = forward(x).float()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.reps):
        for name, (run, _) in runners.items():
            _sync(device)
            start = time.perf_counter()
            run(x)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    ref = outputs.get("guided-diffusion fp32")
    ref_forward = forwards.get("guided-diffusion fp32")
    rows = []
    for name, t in times.items():
        median = statistics.median(t)
        row: dict[str, Any] = {
            "config": name,
            "sampler": "dpm-solver++" if "dpm-solver++" in name.lower() else "ddim",
            "median_s": median,
            "steps_per_s": args.steps / median,
            "images_per_s": args.batch / median,
        }
        if ref is not None and ref_forward is not None:
            row["forward_max_abs_diff_to_gd_fp32"] = float((forwards[name] - ref_forward).abs().max())
            row["forward_scale"] = float(ref_forward.abs().max())
            if row["sampler"] == "ddim":  # the same DDIM chain as the reference (diffusers' too)
                row["sample_max_abs_diff_to_gd_fp32"] = float((outputs[name] - ref).abs().max())
        rows.append(row)
    by = {r["config"]: r for r in rows}
    ratios: dict[str, float] = {}
    if "guided-diffusion fp16" in by:
        base = by["guided-diffusion fp16"]["steps_per_s"]
        for key in ("ddkit bf16 (autocast)", "ddkit fp16 (convert_to_fp16)"):
            if key in by:
                ratios[f"{key} / guided-diffusion fp16"] = by[key]["steps_per_s"] / base
    if "ddkit fp32" in by and "guided-diffusion fp32" in by:
        ratios["ddkit fp32 / guided-diffusion fp32"] = (
            by["ddkit fp32"]["steps_per_s"] / by["guided-diffusion fp32"]["steps_per_s"]
        )
    label = "bf16 (autocast)" if low_precision(device) == "bf16" else "fp32"
    pairs = (
        (f"ddkit {label}" if label != "fp32" else "ddkit fp32", f"diffusers DDIM loop {label}", "ddim"),
        (f"ddkit dpm-solver++ {label}", f"diffusers DPM-Solver++ loop {label}", "dpm-solver++"),
    )
    for ours, theirs, sampler in pairs:
        if ours in by and theirs in by:
            ratios[f"ddkit / diffusers pipeline loop, {sampler} {label}"] = (
                by[ours]["steps_per_s"] / by[theirs]["steps_per_s"]
            )
    info: dict[str, Any] = {}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return {
        "benchmark": "sampling_speed",
        "device": args.device,
        **info,
        "flags": flags(args),
        "batch": args.batch,
        "sampler": f"{' and '.join(args.samplers)}, {args.steps} steps (linear schedule, learned-range "
        "variance, clipped x0; DDIM eta 0)",
        "samplers": list(args.samplers),
        "steps": args.steps,
        "attention_backend": args.attention_backend,
        "reps": args.reps,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "ratios": ratios,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| configuration | steps / s | images / s | one forward: max abs diff to gd fp32 "
        "| samples: max abs diff |",
        "|---|---:|---:|---:|---:|",
    ]

    def diff(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.1e}" if isinstance(r.get(key), float) else "—"

    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['steps_per_s']:.2f} | {r['images_per_s']:.2f} | "
            f"{diff(r, 'forward_max_abs_diff_to_gd_fp32')} | {diff(r, 'sample_max_abs_diff_to_gd_fp32')} |"
        )
    for key, value in result["ratios"].items():
        lines.append(f"| **{key}** | **{value:.2f}×** | | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--channels", type=int, default=None, help="num_channels (cuda 192, cpu 32)")
    parser.add_argument("--res-blocks", type=int, default=None, help="num_res_blocks (cuda 3, cpu 1)")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (cuda 64, cpu 2)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50 on cuda, 5 on cpu)")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default 5; quick 1)")
    parser.add_argument(
        "--samplers", nargs="+", default=["ddim"], choices=("ddim", "dpm-solver++"), help="samplers to time"
    )
    parser.add_argument(
        "--diffusers", action="store_true", help="add diffusers' pipeline loop around the same network"
    )
    parser.add_argument("--attention-backend", default="sdpa", help="ddkit's attention_backend")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    defaults = {
        "channels": 192 if cuda else 32,
        "res_blocks": 3 if cuda else 1,
        "batch": (16 if args.quick else 64) if cuda else 2,
        "steps": (10 if args.quick else 50) if cuda else (3 if args.quick else 5),
        "reps": 1 if args.quick else (5 if cuda else 3),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    result = measure(args)
    result["quick"] = args.quick
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
