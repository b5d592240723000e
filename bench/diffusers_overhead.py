"""Per-step overhead of ddkit sampling a diffusers UNet, beside diffusers' own pipeline loop.

A tiny UNet2DModel is saved with a scheduler as a pipeline folder, loaded by
``ddkit_diffusers.from_diffusers`` and sampled with ddkit's matching sampler, and loaded by
diffusers and sampled with the loop its pipelines run (``set_timesteps``, then a UNet call and
``scheduler.step`` per timestep). Both loaded UNets are then made near-free: their ``forward``
keeps its signature and output type but returns a precomputed tensor, so what is timed is the
framework (for ddkit, its model wrapper included), not a few ms of convolutions whose jitter
would swamp it. The free call's own time is subtracted. Batch 2×4×8×8, one CPU thread, runs
interleaved, medians reported; times are the thread's CPU time (``time.thread_time``), so other
work sharing the machine barely moves them.

    python bench/diffusers_overhead.py [--reps 15] [--steps 50] [--json out.json]

Target (issue 21): ddkit's overhead ≤ 1.0× diffusers'. About 30 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput
from run_all import script_provenance

from ddkit_diffusers import from_diffusers
from ddkit_diffusers.testing import save_pipeline_folder, seeded

SHAPE = (2, 4, 8, 8)


def tiny_unet() -> Any:
    """The cheapest UNet2DModel that still runs every part of its forward (no attention)."""
    build: Any = UNet2DModel
    return build(
        sample_size=SHAPE[-1],
        in_channels=SHAPE[1],
        out_channels=SHAPE[1],
        layers_per_block=1,
        block_out_channels=(4,),
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        norm_num_groups=2,
        add_attention=False,
    )


def make_free(net: Any, out: torch.Tensor) -> Any:
    """``net`` with a forward of the same signature and output type that returns ``out``."""

    def forward(
        sample: torch.Tensor, timestep: Any, class_labels: Any = None, return_dict: bool = True
    ) -> Any:
        return UNet2DOutput(sample=out) if return_dict else (out,)

    net.forward = forward
    return net


def runners(
    root: Path, scheduler: Any, steps: int, out: torch.Tensor
) -> dict[str, Callable[[torch.Tensor], Any]]:
    """ddkit's and diffusers' sampling of the folder at ``root`` (loaded twice, then made free)."""
    pipe = from_diffusers(root, sampler={"steps": steps})
    make_free(pipe.model.net, out)
    net = make_free(UNet2DModel.from_pretrained(root / "unet").eval(), out)

    def ddkit_run(x: torch.Tensor) -> Any:
        return pipe.sample(x_T=x)

    def diffusers_run(x: torch.Tensor) -> Any:
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t).sample, t, x).prev_sample
        return x

    return {"ddkit": ddkit_run, "diffusers": diffusers_run}


def unet_time(net: Any, reps: int) -> float:
    """Seconds per call of the free UNet alone, as diffusers' loop calls it."""
    x, t = torch.randn(SHAPE), torch.tensor(500)
    start = time.thread_time()
    for _ in range(reps):
        net(x, t)
    return (time.thread_time() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions (median reported)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps per run")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    provenance = script_provenance("diffusers_overhead.py", sys.argv[1:])
    schedulers = {
        "ddim (DDIMScheduler)": DDIMScheduler(clip_sample=False, set_alpha_to_one=True),
        "euler (FlowMatchEulerDiscreteScheduler, shift 3)": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }
    work = Path(tempfile.mkdtemp(prefix="ddkit-bench-"))
    net = seeded(0, tiny_unet).eval()
    out = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * 0.1
    runs: dict[tuple[str, str], Callable[[torch.Tensor], Any]] = {}
    for name, scheduler in schedulers.items():
        root = save_pipeline_folder(work / name.split()[0], net, scheduler)
        for framework, run in runners(root, scheduler, args.steps, out).items():
            runs[(name, framework)] = run

    free = make_free(seeded(0, tiny_unet).eval(), out)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    unet_s: list[float] = []
    with torch.no_grad():
        for run in runs.values():
            run(x)  # warm-up
        for _ in range(args.reps):
            unet_s.append(unet_time(free, 10 * args.steps))
            for key, run in runs.items():
                start = time.thread_time()
                run(x)
                times[key].append((time.thread_time() - start) / args.steps)
    unet_us = statistics.median(unet_s) * 1e6
    rows = []
    for name in schedulers:
        ddkit_us = statistics.median(times[(name, "ddkit")]) * 1e6
        diffusers_us = statistics.median(times[(name, "diffusers")]) * 1e6
        rows.append(
            {
                "sampler": name,
                "ddkit_step_us": ddkit_us,
                "diffusers_step_us": diffusers_us,
                "ddkit_overhead_us": ddkit_us - unet_us,
                "diffusers_overhead_us": diffusers_us - unet_us,
                "ratio_overhead": (ddkit_us - unet_us) / (diffusers_us - unet_us),
                "ratio_step": ddkit_us / diffusers_us,
            }
        )
    print(
        f"Per-step CPU time and framework overhead, µs (near-free UNet2DModel, batch {list(SHAPE)}, "
        f"CPU, 1 thread, {args.steps} steps, median of {args.reps} interleaved runs; "
        f"the free UNet call alone: {unet_us:.1f} µs)\n"
    )
    print("| sampler | ddkit step | diffusers step | ddkit overhead | diffusers overhead | overhead ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['sampler']} | {row['ddkit_step_us']:.0f} | {row['diffusers_step_us']:.0f} | "
            f"{row['ddkit_overhead_us']:.0f} | {row['diffusers_overhead_us']:.0f} | "
            f"{row['ratio_overhead']:.2f}× |"
        )
    if args.json:
        result = {
            "unit": "microseconds of CPU time per sampling step (median)",
            "shape": list(SHAPE),
            "threads": 1,
            "steps": args.steps,
            "reps": args.reps,
            "unet_call_us": unet_us,
            "clock": "thread CPU time (time.thread_time)",
            **provenance,
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
