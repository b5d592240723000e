"""Sample quality on every Gaussian path: one 2-D toy trained by ``ddkit.Trainer`` per path, every sampler.

The same network (ddkit's ``mlp``, dim 2) and the same training budget are trained on the
8-Gaussian ring as an ε model on ``cosine``, a velocity model on ``rectified-flow`` (uniform
times, as the ε model) and an ``edm`` model (``log-normal`` σ's, as EDM); then every
installed sampler at its defaults samples each at NFE 5, 10 and 20 from the same noise.
Quality is the sliced Wasserstein distance to fresh data (``floor``: two data samples).

    python bench/quality_paths.py [--steps 3000] [--samples 20000] [--json out.json]
    python bench/quality_vs_nfe.py --paths --iters 3000 --samples 20000      (the same section)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch
from run_all import script_provenance

import ddkit
from ddkit.data.toys import sample_toy, sliced_wasserstein

NFES = (5, 10, 20)
BATCH_SIZE, LR = 256, 1e-3
#: name -> (schedule, parameterization, resampler)
PATHS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "cosine ε": ({"name": "cosine"}, {"name": "epsilon", "clip_denoised": False}, {"name": "uniform"}),
    # Uniform times, like the ε model: SD3's logit-normal density under-trains the low-noise end,
    # where this toy's narrow modes are drawn (every sampler then plateaus at 0.042 here).
    "rectified-flow velocity": ({"name": "rectified-flow"}, {"name": "velocity"}, {"name": "uniform"}),
    "edm": ({"name": "edm"}, {"name": "edm"}, {"name": "log-normal"}),
}


def steps_for(sampler: str, nfe: int) -> int:
    """Steps giving at most ``nfe`` evaluations (Heun: 2·steps − 1; PLMS: steps + 1)."""
    if sampler == "heun":
        return max(1, (nfe + 1) // 2)
    if sampler == "plms":
        return max(1, nfe - 1)
    return nfe


def train(name: str, steps: int, seed: int) -> ddkit.Pipeline:
    schedule, param, resampler = PATHS[name]
    torch.manual_seed(seed)
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": schedule,
            "parameterization": param,
            "model": {"name": "mlp", "dim": 2},
            "sampler": {"name": "ddim"},
            "resampler": resampler,
        }
    )
    trainer = ddkit.Trainer(pipe, "gaussians", batch_size=BATCH_SIZE, lr=LR, seed=seed)
    trainer.train(steps)
    return pipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps per path")
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    provenance = script_provenance("quality_paths.py", sys.argv[1:] if argv is None else argv)
    start_wall = time.perf_counter()
    data, _ = sample_toy("gaussians", args.samples, seed=123)
    other, _ = sample_toy("gaussians", args.samples, seed=456)
    floor = sliced_wasserstein(data, other)
    samplers = ddkit.names("sampler")
    rows: list[dict[str, Any]] = []
    for name in PATHS:
        start = time.perf_counter()
        pipe = train(name, args.steps, args.seed)
        print(f"trained {name} in {time.perf_counter() - start:.0f}s", flush=True)
        x_T = pipe.noise(args.samples, generator=torch.Generator().manual_seed(args.seed + 1))
        for sampler in samplers:
            for nfe in NFES:
                try:
                    out = pipe.with_sampler(sampler, steps=steps_for(sampler, nfe)).sample(
                        x_T=x_T, generator=torch.Generator().manual_seed(7)
                    )
                    sw = sliced_wasserstein(out, data) if torch.isfinite(out).all() else math.inf
                    error = None
                except Exception as exc:  # a failing sampler is a row of the table, not a crash
                    sw, error = math.inf, f"{type(exc).__name__}: {exc}"
                rows.append({"path": name, "sampler": sampler, "nfe": nfe, "sw": sw, "error": error})
                note = f"  {error}" if error else ""
                print(f"  {name:24s} {sampler:16s} NFE {nfe:3d}  SW {sw:.4f}{note}", flush=True)
    best = {
        (name, nfe): min(r["sw"] for r in rows if r["path"] == name and r["nfe"] == nfe)
        for name in PATHS
        for nfe in NFES
    }
    ratio = best[("rectified-flow velocity", 10)] / best[("cosine ε", 10)]
    print(f"floor {floor:.4f}; flow best at NFE 10 / ε best at NFE 10 = {ratio:.2f} (target ≤ 1.2)")
    result = {
        "floor": floor,
        "rows": rows,
        "flow_over_eps_nfe10": ratio,
        "train_steps": args.steps,
        "samples": args.samples,
        "batch_size": BATCH_SIZE,
        "lr": LR,
        "threads": 1,
        "paths": {
            name: {"schedule": s, "parameterization": p, "resampler": r} for name, (s, p, r) in PATHS.items()
        },
        "wall_s": time.perf_counter() - start_wall,
        **provenance,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
