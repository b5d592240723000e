"""RL fine-tuning on the 2-D toys of examples/rl/: reward before and after, and the cost of the RL calls.

Three parts, on one CPU thread:

1. **Reward.** Each example's base model is trained once (seed 0); then DDPO (``ddpo_toy.py``,
   DDIM η = 1, 20 steps) and GRPO (``grpo_flow.py``, rectified flow with ``flow-sde``, 10
   steps) fine-tune a copy of it per seed for a fixed budget of iterations. Mean reward
   (minus the distance to the target mode) of 2000 fresh samples before and after, mean and
   standard deviation over the seeds.
2. **transition_log_prob against one model forward.** One call (with gradients recorded, no
   backward) against the network's own forward on the same batch, also recording gradients;
   median CPU time of interleaved repetitions, at the example's batch (256) and at 2048.
3. **Rollout overhead.** ``pipe.rollout(n)`` against ``pipe.sample(n)`` with the same sampler
   and batch, per step; median CPU time of interleaved repetitions.

    python bench/rl_finetune.py [--seeds 3] [--iterations 30] [--json out.json]

Targets (issue 18): the reward rises by a clear margin; transition_log_prob ≤ 1.2× one forward;
rollout ≤ 1.1× sample per step.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import inspect
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from run_all import script_provenance

import ddkit

ROOT = Path(__file__).resolve().parent.parent


def load_example(name: str) -> ModuleType:
    """examples/rl/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"rl_{name}", ROOT / "examples" / "rl" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_time(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median CPU seconds per call of each function, the functions interleaved in every repetition.

    CPU time of this (one-threaded) process, not wall time: on a shared machine other processes'
    load then slows the figures far less.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):
        for key, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[key].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of ``fn`` (an example's settings, recorded with its result)."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def reward_part(example: ModuleType, train: str, seeds: int, iterations: int) -> dict[str, Any]:
    base = example.pretrained(seed=0)
    before = example.mean_reward(base)
    after, seconds = [], []
    for seed in range(seeds):
        pipe = copy.deepcopy(base)
        t0 = time.process_time()
        getattr(example, train)(pipe, iterations=iterations, seed=seed)
        seconds.append(time.process_time() - t0)
        after.append(example.mean_reward(pipe))
    return {
        "before": before,
        "after_mean": statistics.fmean(after),
        "after_std": statistics.stdev(after) if len(after) > 1 else 0.0,
        "after": after,
        "gain": statistics.fmean(after) - before,
        "train_cpu_s": statistics.fmean(seconds),
        "iterations": iterations,
        "seeds": seeds,
        "example": f"examples/rl/{Path(str(example.__file__)).name}",
        "config": {k: base.config[k] for k in ("model", "schedule", "parameterization", "sampler")},
        "settings": {
            k: v for k, v in defaults(getattr(example, train)).items() if k not in ("seed", "iterations")
        },
        "reward_samples": defaults(example.mean_reward)["n"],
        "pretrain_steps": defaults(example.pretrained)["steps"],
    }


def cost_part(pipe: ddkit.Pipeline, batch: int, reps: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    traj = pipe.rollout(batch, generator=g)
    k = traj.stochastic_steps[len(traj.stochastic_steps) // 2]
    denoiser = pipe.denoiser()
    x_in, t_in = denoiser.model_input(traj.x[k], int(pipe.process.num_timesteps // 2))
    model = pipe.model
    model.eval()
    steps = traj.steps
    median = median_time(
        {
            "forward": lambda: model(x_in, t_in),
            "transition_log_prob": lambda: pipe.transition_log_prob(traj, k),
            "sample": lambda: pipe.sample(batch, generator=torch.Generator().manual_seed(1)),
            "rollout": lambda: pipe.rollout(batch, generator=torch.Generator().manual_seed(1)),
        },
        reps,
    )
    return {
        "batch": batch,
        "forward_us": median["forward"] * 1e6,
        "transition_log_prob_us": median["transition_log_prob"] * 1e6,
        "log_prob_over_forward": median["transition_log_prob"] / median["forward"],
        "sample_us_per_step": median["sample"] / steps * 1e6,
        "rollout_us_per_step": median["rollout"] / steps * 1e6,
        "rollout_over_sample": median["rollout"] / median["sample"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per example")
    parser.add_argument("--iterations", type=int, default=30, help="RL iterations per run")
    parser.add_argument("--reps", type=int, default=30, help="timing repetitions")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    provenance = script_provenance("rl_finetune.py", sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    ddpo, grpo = load_example("ddpo_toy"), load_example("grpo_flow")
    result: dict[str, Any] = {
        "ddpo": reward_part(ddpo, "ddpo", args.seeds, args.iterations),
        "grpo": reward_part(grpo, "grpo", args.seeds, args.iterations),
    }
    pipe = ddpo.pretrained(seed=0, steps=1)  # the costs do not depend on the weights
    result["cost"] = [cost_part(pipe, batch, args.reps) for batch in (256, 2048)]
    result["reps"] = args.reps
    result["clock"] = "process CPU time (time.process_time)"
    result["threads"] = torch.get_num_threads()
    result["wall_s"] = time.perf_counter() - t0
    result.update(provenance)
    for name in ("ddpo", "grpo"):
        r = result[name]
        print(
            f"{name}: mean reward {r['before']:.3f} -> {r['after_mean']:.3f} ± {r['after_std']:.3f} "
            f"({r['seeds']} seeds, {r['iterations']} iterations, {r['train_cpu_s']:.1f} s CPU each)"
        )
    for c in result["cost"]:
        print(
            f"batch {c['batch']}: transition_log_prob {c['transition_log_prob_us']:.0f} µs vs forward "
            f"{c['forward_us']:.0f} µs ({c['log_prob_over_forward']:.2f}×); rollout "
            f"{c['rollout_us_per_step']:.0f} vs sample {c['sample_us_per_step']:.0f} µs/step "
            f"({c['rollout_over_sample']:.2f}×)"
        )
    print(f"wall time {result['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
