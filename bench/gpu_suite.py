"""Every GPU figure of the benchmark report in one command: JSON files into a folder, for report.py.

    python bench/gpu_suite.py --out bench/results/gpu [--quick]

On a CUDA machine this writes, one file per benchmark, each run in a fresh interpreter:

- ``environment.json``: GPU name, memory, driver, CUDA, torch, CPU, package versions, and an
  xformers probe (import it *and* run its attention kernel against sdpa), recorded as
  "runnable" or "not runnable (reason)";
- ``unet_throughput.json``: forward/training throughput of guided-diffusion's ImageNet-64
  U-Net, ddkit bf16 against guided-diffusion fp16 and diffusers' ``UNet2DModel`` of the same
  shape in bf16 (``bench/unet_throughput.py --preset imagenet64 --diffusers``);
- ``sampling_speed.json``: sampling steps per second at batch 64, ddim and dpm-solver++,
  against guided-diffusion and diffusers' pipeline loop (``bench/sampling_speed.py``);
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
which needs torch (CUDA), numpy, ddkit and its plugins, guided_diffusion and diffusers
(``--prepare DIR`` gathers their wheels where pip works, ``--install DIR`` adds them on the
GPU machine without touching its torch).
``--dry`` runs the same five benchmarks on the CPU at tiny sizes (to test the suite in CI, not
for figures); ``--quick`` fits the device tool's 10 minutes (bench/README.md: GPU session checklist).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_all
from attention_memory import probe_xformers
from run_all import ROOT, Bench, machine_info, now, run_bench


def _declared_flags(script: Path, python: str = sys.executable) -> str:
    """No ``--help`` run: this suite's scripts take every flag it passes and ``--json PATH``.

    run_all asks each script for its ``--help`` (another interpreter importing torch) to drop
    flags a script does not declare; here a flag a script lacks should fail the run instead,
    which the ``--dry`` test in CI then reports.
    """
    return ""


run_all.help_text = _declared_flags


@dataclass(frozen=True)
class GpuBench:
    """One GPU figure: its script and arguments for a full run, ``--quick`` and ``--dry``, and its budget.

    ``budget_s`` bounds the ``--quick`` run on a GPU (the whole quick suite, environment probe
    and wheel install included, fits the device tool's 10-minute limit); ``--dry`` runs the
    same script on the CPU at tiny sizes, which is what CI runs between GPU sessions.
    """

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    dry: tuple[str, ...]
    budget_s: int
    owner: str = "bench"

    def bench(self, mode: str) -> Bench:
        """The :class:`run_all.Bench` for ``mode`` (``full``, ``quick`` or ``dry``)."""
        args = {"full": self.full, "quick": self.quick, "dry": self.dry}[mode]
        return Bench(self.name, self.script, args, args, owner=self.owner)


_UNET = ("--dtype", "bf16", "--preset", "imagenet64", "--diffusers", "--batch", "64")
_SAMPLING = ("--samplers", "ddim", "dpm-solver++", "--diffusers", "--batch", "64")
_TINY_UNET = ("--channels", "32", "--res-blocks", "1", "--batch", "2", "--threads", "1")
_TINY_TRAIN = ("--batch-size", "2", "--channels", "32", "--res-blocks", "1", "--steps", "1", "--threads", "1")

GPU_BENCHES: tuple[GpuBench, ...] = (
    GpuBench("unet_throughput", "unet_throughput.py",
             ("--device", "cuda", *_UNET, "--rounds", "24", "--warmup", "3", "--channels-last"),
             ("--device", "cuda", *_UNET, "--rounds", "8", "--warmup", "2"),
             ("--device", "cpu", *_TINY_UNET, "--diffusers", "--rounds", "1", "--warmup", "1"),
             budget_s=130, owner="models"),
    GpuBench("sampling_speed", "sampling_speed.py",
             ("--device", "cuda", *_SAMPLING, "--steps", "50", "--reps", "5"),
             ("--device", "cuda", *_SAMPLING, "--steps", "10", "--reps", "2"),
             ("--device", "cpu", "--samplers", "ddim", "dpm-solver++", "--diffusers", "--channels", "32",
              "--res-blocks", "1", "--batch", "1", "--steps", "2", "--reps", "1"),
             budget_s=130),
    GpuBench("attention_memory", "attention_memory.py",
             ("--device", "cuda", "--dtype", "bf16"),
             ("--device", "cuda", "--dtype", "bf16", "--quick"),
             ("--device", "cpu", "--channels", "32", "--res-blocks", "1", "--batch", "1", "--steps", "1",
              "--backends", "sdpa", "math"),
             budget_s=90),
    GpuBench("train_step", "train_step.py",
             ("--device", "cuda", "--precision", "bf16"),
             ("--device", "cuda", "--precision", "bf16", "--rounds", "2", "--warmup", "2", "--steps", "10"),
             ("--device", "cpu", "--precision", "fp32", "--rounds", "1", "--warmup", "1", *_TINY_TRAIN),
             budget_s=70, owner="trainer"),
    GpuBench("train_step_fp16", "train_step.py",
             ("--device", "cuda", "--precision", "fp16"),
             ("--device", "cuda", "--precision", "fp16", "--rounds", "2", "--warmup", "2", "--steps", "10"),
             # The CPU has no fp16 training: the dry run takes ddkit's other low-precision path (bf16).
             ("--device", "cpu", "--precision", "bf16", "--rounds", "1", "--warmup", "1", *_TINY_TRAIN),
             budget_s=70, owner="trainer"),
)  # fmt: skip

#: Seconds the ``--quick`` suite may take on a GPU in all (the device tool allows 600 per command).
QUICK_BUDGET_S = 540
#: Seconds per benchmark in a ``--dry`` run (a loaded CPU; each normally takes well under a minute).
DRY_TIMEOUT_S = 600

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


#: What ``--prepare`` builds from this checkout (wheels, so that their entry points register ddkit's parts).
_LOCAL = ("core", "samplers", "models", "guidance")
#: xformers for the GPU image's torch (2.11): 0.0.35 needs torch>=2.10 and is built for any CPython >= 3.9.
XFORMERS = "xformers==0.0.35"
#: What ``--prepare`` downloads: the references and what the GPU image lacks (see bench/README.md).
_DOWNLOAD = ("guided-diffusion-sdk", "diffusers", "importlib_metadata")


def _pip(python: str) -> list[str]:
    """A pip to run: this interpreter's, else the first ``pip3``/``pip`` on PATH (uv venvs have none)."""
    if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [python, "-m", "pip"]
    found = shutil.which("pip3") or shutil.which("pip")
    if found is None:
        raise SystemExit("--prepare needs pip: none in this interpreter or on PATH (python -m ensurepip)")
    return [found]


def prepare(folder: Path, python: str, xformers: str | None) -> int:
    """Fill ``folder`` with the wheels a bare GPU machine needs (run here, where pip reaches PyPI).

    ddkit's packages are built from this checkout; the references and ``xformers`` (a spec
    such as ``xformers==0.0.35``, which must suit the GPU machine's torch) are downloaded for
    CPython 3.12 on x86-64 Linux without their dependencies: the GPU image has torch and the
    rest. Together about 10 MiB; the device tool carries 64 MiB.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pip = _pip(python)
    for pkg in _LOCAL:
        subprocess.run(
            [*pip, "wheel", "--no-deps", "-q", "-w", str(folder), str(ROOT / "packages" / pkg)], check=True
        )
    platform = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"):
        platform += ["--platform", tag]
    download = [*pip, "download", "--no-deps", "-q", "-d", str(folder), *platform]
    for name in [*_DOWNLOAD, *([xformers] if xformers else [])]:
        done = subprocess.run([*download, name])
        if done.returncode != 0 and name == "guided-diffusion-sdk":  # a source-only release: build it
            subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(folder), name], check=True)
        elif done.returncode != 0:
            return done.returncode
    wheels = sorted(folder.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {folder}: " + ", ".join(w.name for w in wheels))
    if total > 60 * 2**20:
        print("more than the device tool carries with the checkout (64 MiB in all): leave xformers out")
        return 1
    return 0


def install(folder: Path, python: str) -> dict[str, Any]:
    """Install the wheels in ``folder`` into a fresh directory and put it first on ``PYTHONPATH``.

    ``--no-index --no-deps``: nothing is fetched and the machine's torch is never replaced.
    The benchmarks inherit ``PYTHONPATH``; their envelopes record the packages they saw.
    """
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"--install {folder}: no *.whl files there; make them with --prepare {folder}")
    site = Path(tempfile.mkdtemp(prefix="ddkit-bench-site-"))
    cmd = [*_pip(python), "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site)]
    subprocess.run([*cmd, *map(str, wheels)], check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(site))
    return {"site": str(site), "wheels": [w.name for w in wheels]}


def headlines(results: Sequence[dict[str, Any]]) -> list[str]:
    """The figures issue 22 asks for, read from the envelopes (what a GPU session must report)."""
    lines: list[str] = []
    for env in results:
        r = env.get("result")
        if env.get("status") != "ok" or not isinstance(r, dict):
            continue
        name = env["benchmark"]
        if name == "unet_throughput":
            for stage, key in (("forward", "forward"), ("training", "train")):
                ours = r.get(key, {}).get("ddkit", {})
                gd = ours.get("speedup_vs_gd", float("nan"))
                line = f"U-Net {stage}: ddkit / guided-diffusion {gd:.2f}x"
                if "speedup_vs_diffusers" in ours:
                    line += f", ddkit / diffusers {ours['speedup_vs_diffusers']:.2f}x"
                lines.append(line + " (targets on a GPU: >= 2x and >= 1.2x)")
        elif name == "sampling_speed":
            lines += [f"sampling: {k} {v:.2f}x" for k, v in r.get("ratios", {}).items()]
        elif name.startswith("train_step") and "ratio" in r:
            lines.append(f"Trainer step ({r.get('precision')}): ddkit / guided-diffusion {r['ratio']:.2f}x")
        elif name == "attention_memory":
            for row in r.get("rows", []):
                if row.get("status") == "ok":
                    peak, ratio = row["peak_mib"], row.get("peak_ratio_to_sdpa")
                    lines.append(
                        f"attention {row['backend']}: peak {peak:.0f} MiB"
                        + (f" ({ratio:.2f}x sdpa)" if ratio else "")
                        + f", {row['seconds_per_step'] * 1e3:.1f} ms/step"
                    )
                else:
                    lines.append(f"attention {row['backend']}: {row.get('status')} ({row.get('reason')})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "results" / "gpu"), help="folder for the JSON files"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=f"short sizes, in {QUICK_BUDGET_S} s in all")
    mode.add_argument(
        "--dry",
        action="store_true",
        help="the whole suite on the CPU at tiny sizes (for CI; numbers mean nothing)",
    )
    parser.add_argument("--only", nargs="+", default=None, choices=[b.name for b in GPU_BENCHES])
    parser.add_argument("--timeout", type=int, default=900, help="seconds per benchmark in a full run")
    parser.add_argument(
        "--budget", type=int, default=None, help=f"seconds for the whole suite (--quick: {QUICK_BUDGET_S})"
    )
    parser.add_argument("--install", type=Path, default=None, help="first install the wheels in this folder")
    parser.add_argument(
        "--prepare", type=Path, default=None, help="only fill this folder with the wheels --install needs"
    )
    parser.add_argument(
        "--xformers",
        default=XFORMERS,
        help=f"with --prepare: the xformers to carry (default {XFORMERS}, 3 MiB; 'none': leave it out)",
    )
    args = parser.parse_args(argv)
    python = sys.executable
    if args.prepare is not None:
        return prepare(args.prepare, python, None if args.xformers == "none" else args.xformers)
    device = "cpu" if args.dry else "cuda"
    run_mode = "dry" if args.dry else "quick" if args.quick else "full"
    budget = args.budget if args.budget is not None else (QUICK_BUDGET_S if args.quick else None)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    installed = install(args.install, python) if args.install is not None else None

    env = environment(device, python)
    env.update(quick=run_mode != "full", dry=args.dry, installed=installed)
    (out / "environment.json").write_text(json.dumps(env, indent=2))
    if env["status"] != "ok":
        print(f"environment probe failed: {env['error']}", flush=True)
        return 1
    gpu = env["result"]
    print(json.dumps(gpu, indent=2), flush=True)
    if device == "cuda" and not gpu.get("cuda_available"):
        print("CUDA is not available to torch here: nothing to measure (see environment.json)", flush=True)
        return 1

    hide = None
    if device == "cuda" and gpu["xformers"]["installed"] and not gpu["xformers"]["runnable"]:
        hide = _stub_dir()
    results = []
    suite = "bench/gpu_suite.py" + {"dry": " --dry", "quick": " --quick", "full": ""}[run_mode]
    try:
        for spec in GPU_BENCHES:
            if args.only and spec.name not in args.only:
                continue
            bench = spec.bench(run_mode)
            timeout = {"dry": DRY_TIMEOUT_S, "quick": spec.budget_s, "full": args.timeout}[run_mode]
            if budget is not None:
                left = budget - (time.perf_counter() - start)
                if left < 20:
                    envelope = _skipped(bench, budget, python)
                    (out / f"{bench.name}.json").write_text(json.dumps(envelope, indent=2))
                    results.append(envelope)
                    continue
                timeout = int(min(timeout, left))
            sub_env = dict(os.environ)
            note = None
            if hide is not None and bench.name not in _SEES_XFORMERS:
                sub_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hide), sub_env.get("PYTHONPATH")]))
                note = f"xformers hidden from it: {gpu['xformers']['status']}"
            envelope = run_bench(
                bench, out, quick=run_mode != "full", python=python, env=sub_env, timeout_s=timeout
            )
            envelope["machine"]["gpu"] = gpu
            envelope.update(suite=suite, dry=args.dry, budget_s=timeout)
            if note:
                envelope["adapted"].append(note)
            (out / f"{bench.name}.json").write_text(json.dumps(envelope, indent=2))
            results.append(envelope)
    finally:
        if hide is not None:
            shutil.rmtree(hide, ignore_errors=True)

    where = gpu.get("gpu", device) + (" (dry run: tiny sizes, numbers meaningless)" if args.dry else "")
    print(f"\nGPU suite done in {time.perf_counter() - start:.0f} s on {where}:")
    for r in results:
        print(f"  {r['benchmark']:18s} {r['status']}" + (f": {r['error']}" if r.get("error") else ""))
    print(f"  xformers: {gpu['xformers']['status']}")
    for line in headlines(results):
        print(f"  {line}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


def _skipped(bench: Bench, budget: int, python: str) -> dict[str, Any]:
    """The envelope of a benchmark the suite's budget left no time for."""
    return {
        "benchmark": bench.name,
        "script": f"bench/{bench.script}",
        "owner": bench.owner,
        "status": "failed",
        "error": f"not run: the suite's budget of {budget} s was spent before it",
        "command": None,
        "date": now(),
        "machine": machine_info(python),
        "adapted": [],
        "result": None,
    }


if __name__ == "__main__":
    sys.exit(main())
