"""Every GPU figure of the benchmark report in one command: JSON files into a folder, for report.py.

    python bench/gpu_suite.py --out bench/results/gpu [--quick]

On a CUDA machine this writes, one file per benchmark, each run in a fresh interpreter:

- ``environment.json``: GPU name, memory, driver, CUDA, torch, CPU, package versions, and an
  xformers probe (import it *and* run its attention kernel against sdpa), recorded as
  "runnable" or "not runnable (reason)";
- ``unet_throughput.json``: U-Net forward/training throughput, ddkit bf16 against
  guided-diffusion fp16 (``bench/unet_throughput.py --device cuda --dtype bf16``);
- ``sampling_speed.json``: DDIM sampling steps per second (``bench/sampling_speed.py``);
- ``attention_memory.json``: peak memory of sampling at 64×64 per attention backend, xformers
  included where it runs (``bench/attention_memory.py --device cuda --dtype bf16``);
- ``train_step.json`` and ``train_step_fp16.json``: the whole Trainer step against
  guided-diffusion's TrainLoop (``bench/train_step.py --device cuda --precision bf16``, where
  the reference runs fp32, having no bf16; and ``--precision fp16``, both in fp16).

A benchmark that is missing, fails or times out leaves a file saying so; the suite goes on.
Where the xformers probe fails, the other benchmarks run with xformers hidden from them (a
stub package on ``PYTHONPATH`` that raises ImportError), so that ``attention_backend="auto"``
cannot pick kernels that refuse to run; each such file says so under ``adapted``.

It imports only the standard library itself and runs the benchmarks with this interpreter,
which needs torch (CUDA), numpy, ddkit and its plugins, guided_diffusion and diffusers.
``--device cpu`` runs the same machinery on the CPU (to test the suite, not for figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention_memory import probe_xformers
from run_all import ROOT, Bench, machine_info, now, run_bench

GPU_BENCHES: tuple[Bench, ...] = (
    Bench("unet_throughput", "unet_throughput.py", ("--device", "cuda", "--dtype", "bf16"),
          ("--device", "cuda", "--dtype", "bf16", "--quick"), owner="models"),
    Bench("sampling_speed", "sampling_speed.py", ("--device", "cuda"), ("--device", "cuda", "--quick"),
          owner="bench"),
    Bench("attention_memory", "attention_memory.py", ("--device", "cuda", "--dtype", "bf16"),
          ("--device", "cuda", "--dtype", "bf16", "--quick"), owner="bench"),
    Bench("train_step", "train_step.py", ("--device", "cuda", "--precision", "bf16"),
          ("--device", "cuda", "--precision", "bf16", "--rounds", "1", "--warmup", "1"), owner="trainer"),
    Bench("train_step_fp16", "train_step.py", ("--device", "cuda", "--precision", "fp16"),
          ("--device", "cuda", "--precision", "fp16", "--rounds", "1", "--warmup", "1"), owner="trainer"),
)  # fmt: skip

#: Benchmarks that probe and report xformers themselves (so it is not hidden from them).
_SEES_XFORMERS = {"attention_memory"}

_PROBE = r"""
import json, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
try:
    info["cudnn"] = torch.backends.cudnn.version()
except Exception:
    info["cudnn"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                bf16=torch.cuda.is_bf16_supported())
print(json.dumps(info))
"""


def environment(device: str, python: str) -> dict[str, Any]:
    """The machine, the GPU and whether xformers runs, as one envelope like the benchmarks'."""
    env: dict[str, Any] = {"benchmark": "environment", "date": now(), "machine": machine_info(python)}
    done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        env.update(status="failed", error=f"torch probe failed: {lines[-1] if lines else done.returncode}")
        return env
    gpu = json.loads(done.stdout.strip().splitlines()[-1])
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        if q.returncode == 0:
            gpu["nvidia_smi"] = q.stdout.strip().splitlines()
    ok, reason = probe_xformers(device) if device == "cuda" else (False, "CPU run: xformers is CUDA-only")
    version = env["machine"]["packages"].get("xformers")
    gpu["xformers"] = {
        "installed": version,
        "runnable": ok,
        "status": "runnable" if ok else f"not runnable ({reason})",
    }
    command = shlex.join(["python", "bench/gpu_suite.py", *sys.argv[1:]])
    env.update(status="ok", error=None, result=gpu, command=command)
    return env


def _stub_dir() -> Path:
    """A folder holding a package ``xformers`` whose import fails, to hide a broken install."""
    folder = Path(tempfile.mkdtemp(prefix="ddkit-bench-noxformers-"))
    (folder / "xformers").mkdir()
    (folder / "xformers" / "__init__.py").write_text(
        'raise ImportError("xformers hidden by bench/gpu_suite.py: its probe showed it cannot run here")\n'
    )
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "results" / "gpu"), help="folder for the JSON files"
    )
    parser.add_argument("--quick", action="store_true", help="each benchmark's short smoke mode")
    parser.add_argument("--only", nargs="+", default=None, choices=[b.name for b in GPU_BENCHES])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: test the suite only")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per benchmark")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    start = time.perf_counter()

    env = environment(args.device, python)
    env["quick"] = args.quick
    (out / "environment.json").write_text(json.dumps(env, indent=2))
    if env["status"] != "ok":
        print(f"environment probe failed: {env['error']}", flush=True)
        return 1
    gpu = env["result"]
    print(json.dumps(gpu, indent=2), flush=True)
    if args.device == "cuda" and not gpu.get("cuda_available"):
        print("CUDA is not available to torch here: nothing to measure (see environment.json)", flush=True)
        return 1

    hide = None
    if args.device == "cuda" and gpu["xformers"]["installed"] and not gpu["xformers"]["runnable"]:
        hide = _stub_dir()
    results = []
    try:
        for bench in GPU_BENCHES:
            if args.only and bench.name not in args.only:
                continue
            if args.device == "cpu":
                to_cpu = {"cuda": "cpu", "bf16": "fp32", "fp16": "fp32"}
                cpu_args = tuple(to_cpu.get(a, a) for a in bench.args)
                cpu_quick = tuple(to_cpu.get(a, a) for a in bench.quick_args)
                bench = Bench(bench.name, bench.script, cpu_args, cpu_quick, owner=bench.owner)
            sub_env = dict(os.environ)
            note = None
            if hide is not None and bench.name not in _SEES_XFORMERS:
                sub_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hide), sub_env.get("PYTHONPATH")]))
                note = f"xformers hidden from it: {gpu['xformers']['status']}"
            envelope = run_bench(
                bench, out, quick=args.quick, python=python, env=sub_env, timeout_s=args.timeout
            )
            envelope["machine"]["gpu"] = gpu
            envelope["suite"] = "bench/gpu_suite.py" + (" --quick" if args.quick else "")
            if note:
                envelope["adapted"].append(note)
            (out / f"{bench.name}.json").write_text(json.dumps(envelope, indent=2))
            results.append(envelope)
    finally:
        if hide is not None:
            shutil.rmtree(hide, ignore_errors=True)

    print(f"\nGPU suite done in {time.perf_counter() - start:.0f} s on {gpu.get('gpu', args.device)}:")
    for r in results:
        print(f"  {r['benchmark']:18s} {r['status']}" + (f": {r['error']}" if r.get("error") else ""))
    print(f"  xformers: {gpu['xformers']['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
