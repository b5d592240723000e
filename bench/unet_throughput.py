"""ADM U-Net throughput: ddkit-models against guided-diffusion, same weights, same run.

Configuration (the measurement the issue states): 32×32 RGB, ``num_channels`` 64,
``channel_mult`` 1,2,2, ``num_res_blocks`` 2, attention at 16 and 8 px with 4 heads,
scale-shift norm (the scripts' default), unconditional, batch 8; on a CPU with two threads.
Both networks are built from the same flags and hold identical weights (guided-diffusion's
initial state dict, loaded into ddkit's with ``strict=True``); outputs are compared first.

Timing is interleaved: each round times one call of every contender, in alternating order,
so that machine noise hits all alike. Reported: the median images/s of each contender, and
the median over rounds of the paired ratio ddkit / guided-diffusion (the figure that matters;
target >= 1.25 on the CPU). A training step is forward + MSE to a fixed target + backward +
Adam step. Also recorded: process CPU time per image (less sensitive to other processes on
a shared machine than wall time) and the load average before and after.

    python bench/unet_throughput.py --json out.json             # CPU, fp32, two threads
    python bench/unet_throughput.py --device cuda --dtype bf16  # ddkit bf16 autocast vs gd use_fp16
    python bench/unet_throughput.py --device cuda --dtype bf16 --preset imagenet64 --diffusers

``--preset imagenet64`` is guided-diffusion's ImageNet-64 network (64×64, num_channels 192,
channel_mult 1,2,3,4, num_res_blocks 3, attention at 32, 16 and 8 px with 64 channels per
head, resblock_updown, the new attention order, learned sigma; unconditional here, which
drops only the label embedding). ``--channels``/``--res-blocks`` shrink a preset (``--dry``
runs of bench/gpu_suite.py use them). ``--diffusers`` adds diffusers' ``UNet2DModel`` built to
the same shape (same channels per level, residual blocks, attention resolutions and head
size, scale-shift norm, residual up/downsampling): its own random weights, since its layout
differs, so only its speed is compared, run in the same precision as ddkit (autocast).

On CUDA, ddkit runs under ``torch.autocast(dtype)``; guided-diffusion in its own ``use_fp16``
mode (float16 torso, float32 norms and head; its training step applies Adam to the float16
torso directly instead of its master-weight trainer, which if anything favours it). Extra
contenders with ``--channels-last``: both networks converted to channels-last weights and inputs;
with ``--compile``: ddkit's network under ``torch.compile`` (Inductor; the compile time is reported
apart and kept out of the timings).

``--breakdown`` profiles a few training steps of each contender and splits the time into the
convolutions (forward and backward, oneDNN's kernels for both networks) and everything else.
The split shows the ceiling: ``gd step / ddkit convolutions`` is the ratio ddkit would reach if
everything but its convolutions cost nothing. The profiler's own overhead inflates the many
small ops, so the split is a share, not a timing.

Memory format (the decision the rows reflect): the ``ddkit`` row is the model as users get
it. Its default ``memory_format="auto"`` runs CPU inference on channels-last activations
(oneDNN convolutions skip the NCHW<->blocked reorders; GroupNorm statistics come from
ddkit's own channels-last reduction, PyTorch's channels-last GroupNorm kernel being 2-6x
slower at these shapes) and training on contiguous ones: there the channels-last
convolution saving was ~3 % of a step while PyTorch's channels-last GroupNorm backward is
about 5x slower than the contiguous one. Training is bounded by the convolutions (the same
oneDNN work for both networks): ``--breakdown`` measures how much. Measured ways around it
that did not pay on this CPU: channels-last training (PyTorch's channels-last GroupNorm
backward), a channels-last GroupNorm+FiLM+SiLU autograd function, channels-last forward and
input-gradient convolutions with a contiguous weight gradient (the layout conversions cost
more than they save), and ``torch.compile`` (the ``--compile`` row).

Allocator (measured 2026-11-23, not by this script): under glibc's default malloc the large
activation buffers freed after each forward go back to the OS, and the next forward pays
their page faults again. guided-diffusion's unfused forward allocates more of them, so part
of ddkit's forward lead is fewer page faults. Run with ``MALLOC_MMAP_THRESHOLD_=268435456
MALLOC_TRIM_THRESHOLD_=1073741824``, both forwards got faster (guided-diffusion 15-20 %,
ddkit 5-10 %) and the forward ratio fell to 1.04-1.13x; the training ratio barely moved.
The rows above are measured with the default allocator, as users run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _src in ("packages/core/src", "packages/models/src"):  # run from a checkout without installing
    if str(ROOT / _src) not in sys.path:
        sys.path.append(str(ROOT / _src))

import torch  # noqa: E402

#: The default (CPU) measurement: the network the issue's CPU target was set on.
FLAGS: dict[str, Any] = {
    "image_size": 32,
    "num_channels": 64,
    "num_res_blocks": 2,
    "channel_mult": "1,2,2",
    "attention_resolutions": "16,8",
    "num_heads": 4,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
    "class_cond": False,
    "dropout": 0.0,
    "use_checkpoint": False,
}
#: guided-diffusion's ImageNet-64 network (its README's flags; unconditional, no dropout).
IMAGENET64: dict[str, Any] = {
    **FLAGS,
    "image_size": 64,
    "num_channels": 192,
    "num_res_blocks": 3,
    "channel_mult": "1,2,3,4",
    "attention_resolutions": "32,16,8",
    "num_heads": 4,
    "num_head_channels": 64,
    "resblock_updown": True,
    "use_new_attention_order": True,
    "learn_sigma": True,
}
PRESETS: dict[str, dict[str, Any]] = {"cifar32": FLAGS, "imagenet64": IMAGENET64}


def diffusers_unet(flags: dict[str, Any]) -> torch.nn.Module:
    """diffusers' ``UNet2DModel`` of the same shape as guided-diffusion's network built from ``flags``."""
    from diffusers import UNet2DModel

    mult = [int(m) for m in str(flags["channel_mult"]).split(",")]
    size = int(flags["image_size"])
    attn = {size // int(r) for r in str(flags["attention_resolutions"]).split(",") if r}
    levels = range(len(mult))
    heads = int(flags["num_head_channels"])
    updown = "resnet" if flags["resblock_updown"] else "conv"
    unet: torch.nn.Module = UNet2DModel(  # type: ignore[no-untyped-call, assignment]
        sample_size=size,
        in_channels=3,
        out_channels=6 if flags["learn_sigma"] else 3,
        block_out_channels=tuple(int(flags["num_channels"]) * m for m in mult),
        layers_per_block=int(flags["num_res_blocks"]),
        down_block_types=tuple("AttnDownBlock2D" if 2**i in attn else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if 2**i in attn else "UpBlock2D" for i in reversed(levels)),
        attention_head_dim=heads if heads > 0 else int(flags["num_channels"]) // int(flags["num_heads"]),
        resnet_time_scale_shift="scale_shift" if flags["use_scale_shift_norm"] else "default",
        downsample_type=updown,
        upsample_type=updown,
        norm_num_groups=32,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    return unet


class _DiffusersCall(torch.nn.Module):
    """``model(x, t)`` returning a tensor, as the other contenders are called."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.unet(x, t, return_dict=False)[0]
        return out


def build(
    device: torch.device,
    dtype: str,
    channels_last: bool,
    compiled: bool = False,
    flags: dict[str, Any] | None = None,
    with_diffusers: bool = False,
) -> dict[str, torch.nn.Module]:
    """The contenders, all holding guided-diffusion's initial weights (diffusers: its own, same shape)."""
    f = flags if flags is not None else FLAGS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp decorators in guided_diffusion.nn
        from guided_diffusion.script_util import create_model
    from ddkit_models.factories import adm_unet

    gd_fp16 = device.type == "cuda" and dtype != "fp32"
    ref = create_model(**f, use_fp16=False)
    # Trained-like weights: the zero-initialized output layers would make every output 0.
    gen = torch.Generator().manual_seed(0)
    state = {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in ref.state_dict().items()}
    models: dict[str, torch.nn.Module] = {}
    gd = create_model(**f, use_fp16=False)
    gd.load_state_dict(state, strict=True)
    if gd_fp16:
        gd.convert_to_fp16()
        gd.dtype = torch.float16  # what use_fp16=True sets; forward casts its input to it
    models["guided-diffusion"] = gd
    ours = adm_unet(**f, use_fp16=False)
    ours.load_state_dict(state, strict=True)
    models["ddkit"] = ours
    if channels_last:
        gd_cl = create_model(**f, use_fp16=False)
        gd_cl.load_state_dict(state, strict=True)
        if gd_fp16:
            gd_cl.convert_to_fp16()
            gd_cl.dtype = torch.float16
        models["guided-diffusion +channels_last"] = gd_cl.to(memory_format=torch.channels_last)
        ours_cl = adm_unet(**f, use_fp16=False)
        ours_cl.load_state_dict(state, strict=True)
        models["ddkit +channels_last"] = ours_cl.to(memory_format=torch.channels_last)
    if with_diffusers:
        torch.manual_seed(0)
        models["diffusers UNet2DModel"] = _DiffusersCall(diffusers_unet(f))
    if compiled:
        ours_c = adm_unet(**f, use_fp16=False)
        ours_c.load_state_dict(state, strict=True)
        models["ddkit +torch.compile"] = ours_c
    models = {k: m.to(device) for k, m in models.items()}
    if compiled:  # compiled after the move; the module keeps its parameters, so the optimizer sees them
        models["ddkit +torch.compile"].compile()
    return models


#: Profiler event names that are a convolution's own kernel (forward or backward), on any backend.
CONV_EVENTS = ("convolution", "conv2d", "conv_depthwise", "cudnn_conv")


def op_breakdown(step: Callable[[], None], steps: int) -> dict[str, float]:
    """Self time per training step (ms) in convolution kernels and in everything else, profiled."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    conv = other = 0.0
    for event in prof.key_averages():
        if event.key.startswith("aten::") or event.key.startswith("mkldnn"):
            is_conv = any(tag in event.key for tag in CONV_EVENTS)
        else:  # Python-level and autograd wrapper events: their self time is dispatch overhead
            is_conv = False
        if is_conv:
            conv += event.self_cpu_time_total
        else:
            other += event.self_cpu_time_total
    return {"conv_ms": conv / 1e3 / steps, "other_ms": other / 1e3 / steps}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=24, help="timed forward rounds (training: half)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true", help="add channels-last contenders")
    parser.add_argument("--compile", action="store_true", help="add ddkit under torch.compile")
    parser.add_argument(
        "--breakdown", action="store_true", help="profile the training step: convolutions against the rest"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cifar32", help="the network's shape")
    parser.add_argument("--channels", type=int, default=None, help="num_channels (default: the preset's)")
    parser.add_argument("--res-blocks", type=int, default=None, help="num_res_blocks (default: the preset's)")
    parser.add_argument(
        "--diffusers", action="store_true", help="add diffusers' UNet2DModel of the same shape and precision"
    )
    parser.add_argument("--quick", action="store_true", help="smoke mode: 3 rounds")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup = 3, 1

    torch.set_num_threads(args.threads)
    if args.compile:  # compile in this process: a pool of compile workers would linger beside the timings
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    device = torch.device(args.device)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    if device.type == "cpu" and low is not None:
        parser.error(
            "the CPU comparison is float32 (guided-diffusion has no CPU mixed precision); drop --dtype"
        )
    flags = dict(PRESETS[args.preset])
    if args.channels is not None:
        flags["num_channels"] = args.channels
    if args.res_blocks is not None:
        flags["num_res_blocks"] = args.res_blocks
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    models = build(device, args.dtype, args.channels_last, args.compile, flags, args.diffusers)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    size, out_ch = int(flags["image_size"]), 6 if flags["learn_sigma"] else 3
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, size, size, generator=gen).to(device)
    t = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
    target = torch.randn(args.batch, out_ch, size, size, generator=gen).to(device)

    def inputs(name: str) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if "channels_last" in name else x

    def ours_context() -> Any:
        return (
            torch.autocast(device.type, dtype=low)
            if low is not None
            else torch.autocast(device.type, enabled=False)
        )

    def forward(name: str, model: torch.nn.Module) -> torch.Tensor:
        if name.startswith(("ddkit", "diffusers")):  # same precision: both under autocast
            with ours_context():
                return model(inputs(name), t)
        return model(inputs(name), t)

    compile_s: dict[str, float] = {}
    with torch.inference_mode():
        outs = {}
        for name, m in models.items():
            first = time.perf_counter()
            outs[name] = forward(name, m.eval()).float()
            if "compile" in name:
                compile_s[name] = time.perf_counter() - first
    ref_out = outs["guided-diffusion"]
    # diffusers holds other weights: its output is not comparable, so no diff is recorded for it.
    max_diff = {name: float((o - ref_out).abs().max()) for name, o in outs.items() if "diffusers" not in name}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-5) for name, m in models.items()}

    def fwd_step(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                forward(name, models[name])

        return run

    def train_step(name: str) -> Callable[[], None]:
        def run() -> None:
            opt = optimizers[name]
            opt.zero_grad(set_to_none=True)
            loss = (forward(name, models[name]).float() - target).square().mean()
            loss.backward()
            opt.step()

        return run

    def measure(make: Callable[[str], Callable[[], None]], rounds: int, train: bool) -> dict[str, Any]:
        steps = {name: make(name) for name in models}
        for name, m in models.items():
            m.train(train)
            first = time.perf_counter()
            steps[name]()  # the first call compiles a compiled contender's graph for this mode
            if name in compile_s and train:
                compile_s[name] += time.perf_counter() - first
            for _ in range(args.warmup - 1):
                steps[name]()
        sync()
        wall: dict[str, list[float]] = {n: [] for n in models}
        cpu: dict[str, list[float]] = {n: [] for n in models}
        order = list(models)
        for r in range(rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                w0, c0 = time.perf_counter(), time.process_time()
                steps[name]()
                sync()
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
        base = wall["guided-diffusion"]
        return {
            name: {
                "images_per_s": args.batch / statistics.median(wall[name]),
                "cpu_s_per_image": statistics.median(cpu[name]) / args.batch,
                "speedup_vs_gd": statistics.median(b / w for b, w in zip(base, wall[name])),
                "speedup_vs_gd_cpu_time": statistics.median(
                    b / w for b, w in zip(cpu["guided-diffusion"], cpu[name])
                ),
                "wall_s": wall[name],
            }
            for name in models
        }

    load_before = os.getloadavg()
    started = time.perf_counter()
    forward_stats = measure(fwd_step, args.rounds, train=False)
    train_stats = measure(train_step, max(2, args.rounds // 2), train=True)
    rival = "diffusers UNet2DModel"
    for stats in (forward_stats, train_stats):  # ddkit against diffusers: paired per round, as against gd
        if rival in stats:
            pairs = zip(stats[rival]["wall_s"], stats["ddkit"]["wall_s"])
            stats["ddkit"]["speedup_vs_diffusers"] = statistics.median(d / w for d, w in pairs)
    breakdown = {name: op_breakdown(train_step(name), steps=3) for name in models} if args.breakdown else {}
    result: dict[str, Any] = {
        "config": {**flags, "preset": args.preset, "batch": args.batch, "device": str(device),
                   "dtype": args.dtype, "threads": args.threads, "rounds": args.rounds},
        "parameters": params,
        "torch": torch.__version__,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "max_abs_output_diff_vs_gd": max_diff,
        "forward": forward_stats,
        "train": train_stats,
        "train_breakdown": breakdown,
        "compile_s": compile_s,
        "elapsed_s": time.perf_counter() - started,
    }  # fmt: skip

    after = result["machine"]["loadavg_after"][0]
    print(f"\nU-Net throughput, {device} {args.dtype}, batch {args.batch}, {args.threads} threads "
          f"(load average {load_before[0]:.1f} before, {after:.1f} after)\n")  # fmt: skip
    print("| contender | forward img/s | train img/s | forward × gd | train × gd | forward × gd (CPU time) "
          "| train × gd (CPU time) | max |out - gd| |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in models:
        f, tr = forward_stats[name], train_stats[name]
        print(f"| {name} | {f['images_per_s']:.1f} | {tr['images_per_s']:.2f} | {f['speedup_vs_gd']:.2f} "
              f"| {tr['speedup_vs_gd']:.2f} | {f['speedup_vs_gd_cpu_time']:.2f} "
              f"| {tr['speedup_vs_gd_cpu_time']:.2f} | {max_diff.get(name, float('nan')):.1e} |")  # fmt: skip
    if breakdown:
        gd_step = sum(breakdown["guided-diffusion"].values())
        print("\n| contender | convolutions ms/step | rest ms/step | convolution share | gd step / convs |")
        print("|---|---:|---:|---:|---:|")
        for name, b in breakdown.items():
            total = b["conv_ms"] + b["other_ms"]
            print(f"| {name} | {b['conv_ms']:.0f} | {b['other_ms']:.0f} | {b['conv_ms'] / total:.0%} "
                  f"| {gd_step / b['conv_ms']:.2f}× |")  # fmt: skip
    for name, seconds in compile_s.items():
        print(f"{name}: compiled in {seconds:.0f} s (not in the timings)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
