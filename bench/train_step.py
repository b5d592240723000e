"""Training-step throughput: ddkit.Trainer against guided-diffusion's TrainLoop.run_step, side by side.

One step = model forward and loss, backward, optimizer, EMA update and the timestep
resampler, on the same ADM U-Net (ddkit-models' adm-unet, one copy each) and the same batch
size. Rounds alternate between the two so that machine noise hits both alike; the figures
are medians over rounds, and ``ratio`` is ddkit's steps/s over guided-diffusion's (> 1: ddkit
is faster). ``cpu_ratio`` compares the process CPU time per step instead (all threads; on a
shared, oversubscribed machine it moves less than wall time; on CUDA it is host time alone).

Equal work: the same AdamW (lr 1e-4, weight decay 0), the same EMA rate, loss and batch, the
whole batch in one micro-batch, the data in memory on both sides, both warmed up, one
process and so one thread count. Each side keeps its own implementation choices: ddkit's
AdamW runs torch's fused kernel, guided-diffusion's TrainLoop torch's default AdamW (a
per-parameter loop on the CPU, multi-tensor on CUDA); ddkit averages the EMA with
``_foreach_lerp_``, guided-diffusion per parameter; guided-diffusion also computes
parameter and gradient norms with a host sync per tensor and logs per-sample losses with
``.item()``, as its TrainLoop always does.

guided-diffusion's TrainLoop imports mpi4py and blobfile; neither is needed for a step in
one process, so small stand-ins are put in ``sys.modules`` and a one-process gloo/NCCL group
is created. Precision: ``fp32``; ``bf16`` (ddkit autocast; guided-diffusion has no bf16 and
runs fp32); ``fp16`` (ddkit autocast + GradScaler; guided-diffusion its ``use_fp16`` with
fp16 convolutions and fp32 master weights; CUDA only).

    python bench/train_step.py --device cpu --precision fp32 --json out.json
    python bench/train_step.py --device cuda --precision bf16 --batch-size 64 --channels 128
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

import torch

import ddkit


def _install_reference_stubs() -> None:
    """Stand-ins for mpi4py (one rank) and blobfile (unused by run_step) so TrainLoop imports."""
    if "mpi4py" not in sys.modules:
        comm = types.SimpleNamespace(
            Get_rank=lambda: 0, Get_size=lambda: 1, rank=0, size=1, bcast=lambda x, root=0: x
        )
        mpi = types.ModuleType("mpi4py.MPI")
        mpi.COMM_WORLD = comm  # type: ignore[attr-defined]
        pkg = types.ModuleType("mpi4py")
        pkg.MPI = mpi  # type: ignore[attr-defined]
        sys.modules["mpi4py"], sys.modules["mpi4py.MPI"] = pkg, mpi
    if "blobfile" not in sys.modules:
        bf = types.ModuleType("blobfile")
        bf.join = os.path.join  # type: ignore[attr-defined]
        bf.dirname = os.path.dirname  # type: ignore[attr-defined]
        bf.exists = os.path.exists  # type: ignore[attr-defined]
        bf.BlobFile = open  # type: ignore[attr-defined]
        sys.modules["blobfile"] = bf


def _one_process_group(device: torch.device) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args: argparse.Namespace) -> tuple[Any, torch.nn.Module]:
    """The ddkit pipeline and an untouched copy of its network for the reference."""
    torch.manual_seed(0)
    model = {
        "name": "adm-unet",
        "image_size": args.image_size,
        "num_channels": args.channels,
        "num_res_blocks": args.res_blocks,
        "attention_resolutions": args.attention,
        "learn_sigma": args.learn_sigma,
    }
    pipe = ddkit.Pipeline.from_config(
        {
            "model": model,
            "parameterization": {
                "name": "epsilon",
                "variance": "learned-range" if args.learn_sigma else "fixed-small",
            },
            "loss": "hybrid" if args.learn_sigma else "mse",
        }
    )
    return pipe, copy.deepcopy(pipe.model)


def ddkit_runner(args: argparse.Namespace, pipe: Any, data: torch.Tensor) -> Callable[[int], None]:
    trainer = ddkit.Trainer(
        pipe,
        data,
        batch_size=args.batch_size,
        lr=1e-4,
        ema_rates=(0.9999,),
        precision=args.precision,
        device=args.device,
        seed=0,
        log_every=10**9,
    )

    def run(n: int) -> None:
        trainer.train(trainer.step + n)

    return run


def reference_runner(
    args: argparse.Namespace, model: torch.nn.Module, data: torch.Tensor
) -> Callable[[int], None]:
    _install_reference_stubs()
    device = torch.device(args.device)
    _one_process_group(device)
    from guided_diffusion import gaussian_diffusion as gd
    from guided_diffusion import logger
    from guided_diffusion.resample import UniformSampler
    from guided_diffusion.respace import SpacedDiffusion, space_timesteps
    from guided_diffusion.train_util import TrainLoop

    logger.configure(dir=tempfile.mkdtemp(prefix="gd-bench-"), format_strs=[])
    betas = gd.get_named_beta_schedule("linear", 1000)
    diffusion = SpacedDiffusion(
        use_timesteps=space_timesteps(1000, [1000]),
        betas=betas,
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.LEARNED_RANGE if args.learn_sigma else gd.ModelVarType.FIXED_SMALL,
        loss_type=gd.LossType.RESCALED_MSE if args.learn_sigma else gd.LossType.MSE,
    )
    model.to(device)
    loop = TrainLoop(
        model=model,
        diffusion=diffusion,
        data=iter(()),
        batch_size=args.batch_size,
        microbatch=-1,
        lr=1e-4,
        ema_rate="0.9999",
        log_interval=10**9,
        save_interval=10**9,
        resume_checkpoint="",
        use_fp16=args.precision == "fp16",
        schedule_sampler=UniformSampler(diffusion),
    )
    gen = torch.Generator().manual_seed(0)

    def run(n: int) -> None:
        for _ in range(n):
            batch = data[torch.randint(0, data.shape[0], (args.batch_size,), generator=gen)]
            loop.run_step(batch, {})
            loop.step += 1

    return run


def measure(run: Callable[[int], None], steps: int, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per step over ``steps`` steps."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    run(steps)
    _sync(device)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on CUDA, 8 on the CPU")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--channels", type=int, default=None, help="num_channels; default 128 on CUDA, 32 on the CPU"
    )
    parser.add_argument("--res-blocks", type=int, default=2)
    parser.add_argument("--attention", default="16,8")
    parser.add_argument("--learn-sigma", action="store_true", help="learned variance and the hybrid loss")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per round; default 20 on CUDA, 3 on the CPU"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-reference", action="store_true", help="time ddkit alone")
    parser.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (64 if cuda else 8)
    args.channels = args.channels or (128 if cuda else 32)
    args.steps = args.steps or (20 if cuda else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision == "fp16" and not cuda:
        parser.error("--precision fp16 needs --device cuda (ddkit refuses fp16 on the CPU; use bf16)")
    if cuda:
        torch.backends.cudnn.benchmark = True

    pipe, reference_model = build(args)
    data = torch.randn(max(1024, 4 * args.batch_size), 3, args.image_size, args.image_size)
    runners = {"ddkit": ddkit_runner(args, pipe, data)}
    if not args.no_reference:
        runners["guided_diffusion"] = reference_runner(args, reference_model, data)
    for run in runners.values():
        measure(run, args.warmup, device)
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu_times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            wall, cpu = measure(run, args.steps, device)
            times[name].append(wall)
            cpu_times[name].append(cpu)

    params = sum(p.numel() for p in pipe.model.parameters())
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "precision": args.precision,
        "network": {
            "model": "adm-unet",
            "image_size": args.image_size,
            "num_channels": args.channels,
            "num_res_blocks": args.res_blocks,
            "attention_resolutions": args.attention,
            "learn_sigma": args.learn_sigma,
            "parameters": params,
        },
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "load_average": list(os.getloadavg()),
    }
    for name, values in times.items():
        sec = statistics.median(values)
        result[name] = {
            "sec_per_step": sec,
            "steps_per_sec": 1 / sec,
            "samples_per_sec": args.batch_size / sec,
            "cpu_sec_per_step": statistics.median(cpu_times[name]),
        }
    if "guided_diffusion" in result:
        result["guided_diffusion"]["precision"] = "fp16" if args.precision == "fp16" else "fp32"
        result["ratio"] = result["ddkit"]["steps_per_sec"] / result["guided_diffusion"]["steps_per_sec"]
        result["cpu_ratio"] = (
            result["guided_diffusion"]["cpu_sec_per_step"] / result["ddkit"]["cpu_sec_per_step"]
        )
    if cuda:
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    print(
        f"{result['device']}, {args.precision}, adm-unet {params / 1e6:.1f}M params, batch {args.batch_size}"
    )
    for name in runners:
        r = result[name]
        print(
            f"  {name:17s} {r['steps_per_sec']:8.2f} steps/s  {r['samples_per_sec']:9.1f} samples/s"
            f"  {r['cpu_sec_per_step'] * 1e3:9.1f} ms CPU/step"
        )
    if "ratio" in result:
        print(f"  ratio ddkit / guided-diffusion: {result['ratio']:.3f} (CPU time {result['cpu_ratio']:.3f})")
    print(f"  load average {' '.join(f'{v:.2f}' for v in result['load_average'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
