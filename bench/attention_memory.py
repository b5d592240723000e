"""Peak memory (and time) of sampling an adm-unet at 64×64 with each attention backend on this machine.

The network is an ``adm-unet`` at image_size 64 with attention at resolutions 32, 16 and 8
(so the largest attention spans 32·32 = 1024 tokens); on the CPU it has few channels so
that the run is short. A few DDIM steps are drawn through ``ddkit.Pipeline`` with
``attention_backend`` set to ``sdpa``, ``math`` and, on CUDA where ``xformers`` imports,
``xformers``. Each backend runs in a fresh interpreter, so no backend inherits another's
allocator state.

How memory is measured, honestly:

- CUDA: ``torch.cuda.max_memory_allocated()`` during sampling minus the memory allocated
  just before it (model weights and the input excluded): the tensors sampling needs at peak.
- CPU: the process's peak resident set size (``VmHWM``) during sampling minus its resident
  size just before. The peak is reset first through ``/proc/self/clear_refs`` where Linux
  allows it, else ``getrusage`` max RSS is used (then the figure is a lower bound only if
  set-up peaked higher, which the JSON records). RSS counts pages the allocator touched,
  so it includes allocator caching and fragmentation: comparable between backends of one
  run, not an exact tensor count.

    python bench/attention_memory.py [--device cpu|cuda] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

BACKENDS = ("sdpa", "math", "xformers")


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one backend in this (fresh) process."""
    import torch

    import ddkit

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config(
        {
            "schedule": "linear",
            "model": {
                "name": "adm-unet",
                "image_size": 64,
                "num_channels": args.channels,
                "num_res_blocks": args.res_blocks,
                "attention_resolutions": "32,16,8",
                "num_head_channels": args.head_channels,
                "attention_backend": args.child,
            },
            "sampler": {"name": "ddim", "steps": args.steps},
        }
    ).to(device)
    params = sum(p.numel() for p in pipe.model.parameters())
    gen = torch.Generator(device=device).manual_seed(0)
    x_T = torch.randn((args.batch, 3, 64, 64), generator=gen, device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.dtype == "bf16"
        else torch.autocast(device.type, enabled=False)
    )

    def sample() -> Any:
        with autocast:
            return pipe.sample(x_T=x_T)

    out: dict[str, Any] = {"backend": args.child, "params": params}
    if device.type == "cuda":
        sample()  # warm-up: kernels chosen, workspace allocated
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = sample()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
        out.update(
            peak_mib=(peak - before) / 2**20,
            method="torch.cuda.max_memory_allocated() minus allocated before sampling",
            gpu=torch.cuda.get_device_name(device),
        )
    else:
        before_kib = _status_kib("VmRSS")
        setup_peak_kib = _maxrss_kib()
        reset = _reset_peak_rss()
        start = time.perf_counter()
        result = sample()
        seconds = time.perf_counter() - start
        hwm = _status_kib("VmHWM") if reset else None
        peak_kib = hwm if hwm is not None else _maxrss_kib()
        out.update(
            peak_mib=(peak_kib - (before_kib or 0)) / 1024,
            method=(
                "peak RSS (VmHWM, reset before sampling) minus RSS before sampling"
                if hwm is not None
                else "getrusage max RSS minus RSS before sampling (set-up peak "
                f"{setup_peak_kib / 1024:.0f} MiB may hide a lower sampling peak)"
            ),
        )
    out.update(
        seconds_per_step=seconds / args.steps,
        finite=bool(torch.isfinite(result).all()),
        torch=torch.__version__,
    )
    return out


def probe_xformers(device: str) -> tuple[bool, str]:
    """Whether xformers is importable *and* its attention kernel runs here, with the reason if not."""
    code = (
        "import torch, xformers, xformers.ops as x\n"
        "q = torch.randn(1, 128, 2, 32, device='cuda', dtype=torch.float16)\n"
        "o = x.memory_efficient_attention(q, q, q)\n"
        "torch.cuda.synchronize()\n"
        "ref = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, q, q)))\n"
        "err = (o.transpose(1, 2) - ref).abs().max().item()\n"
        "assert err < 1e-2, f'xformers output differs from sdpa by {err}'\n"
        "print(xformers.__version__)\n"
    )
    if device != "cuda":
        return False, "xformers attention is CUDA-only"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False, "probe timed out after 300 s"
    if done.returncode == 0:
        return True, f"xformers {done.stdout.strip()} runs"
    lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
    reason = lines[-1] if lines else f"exit code {done.returncode}"
    if "No module named" in reason:
        return False, "not installed"
    return False, reason[:300]


def parent(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for backend in args.backends:
        if backend == "xformers":
            ok, reason = probe_xformers(args.device)
            if not ok:
                rows.append({"backend": "xformers", "status": "not runnable", "reason": reason})
                print(f"  xformers: not runnable ({reason})", flush=True)
                continue
        cmd = [sys.executable, os.path.abspath(__file__), "--child", backend, *_forward(args)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append(
                {"backend": backend, "status": "failed", "reason": f"timed out after {args.timeout} s"}
            )
            continue
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
            reason = lines[-1][:300] if lines else f"exit code {done.returncode}"
            rows.append({"backend": backend, "status": "failed", "reason": reason})
            print(f"  {backend}: failed ({reason})", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["status"] = "ok"
        rows.append(row)
        print(
            f"  {backend}: peak {row['peak_mib']:.1f} MiB, {row['seconds_per_step'] * 1e3:.0f} ms/step",
            flush=True,
        )
    ok_rows = {r["backend"]: r for r in rows if r.get("status") == "ok"}
    if "sdpa" in ok_rows:
        for r in ok_rows.values():
            r["peak_ratio_to_sdpa"] = (
                r["peak_mib"] / ok_rows["sdpa"]["peak_mib"] if ok_rows["sdpa"]["peak_mib"] else None
            )
            r["time_ratio_to_sdpa"] = r["seconds_per_step"] / ok_rows["sdpa"]["seconds_per_step"]
    return {
        "benchmark": "attention_memory",
        "device": args.device,
        "dtype": args.dtype,
        "model": {
            "name": "adm-unet",
            "image_size": 64,
            "num_channels": args.channels,
            "num_res_blocks": args.res_blocks,
            "attention_resolutions": "32,16,8",
            "num_head_channels": args.head_channels,
        },
        "batch": args.batch,
        "sampler": f"ddim, {args.steps} steps",
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }


def _forward(args: argparse.Namespace) -> list[str]:
    return [
        "--device", args.device, "--dtype", args.dtype, "--channels", str(args.channels),
        "--res-blocks", str(args.res_blocks), "--head-channels", str(args.head_channels),
        "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
    ]  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| backend | peak memory of sampling (MiB) | ratio to sdpa | time per step (ms) | ratio to sdpa |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['backend']} | {r['status']}: {r.get('reason', '')} | | | |")
            continue
        pr, tr = r.get("peak_ratio_to_sdpa"), r.get("time_ratio_to_sdpa")
        lines.append(
            f"| {r['backend']} | {r['peak_mib']:.1f} | {'—' if pr is None else f'{pr:.2f}×'} | "
            f"{r['seconds_per_step'] * 1e3:.1f} | {'—' if tr is None else f'{tr:.2f}×'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="bf16: torch.autocast")
    parser.add_argument("--quick", action="store_true", help="fewer steps and a smaller batch")
    parser.add_argument("--channels", type=int, default=None, help="num_channels (cpu 32, cuda 128)")
    parser.add_argument("--res-blocks", type=int, default=None, help="num_res_blocks (cpu 1, cuda 2)")
    parser.add_argument("--head-channels", type=int, default=32, help="num_head_channels")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (cpu 4, cuda 32)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 3; quick 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per backend")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    defaults = {
        "channels": 128 if cuda else 32,
        "res_blocks": 2 if cuda else 1,
        "batch": (8 if args.quick else 32) if cuda else (2 if args.quick else 4),
        "steps": 2 if args.quick else 3,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    result = parent(args)
    result["quick"] = args.quick
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
