"""Run every CPU benchmark in bench/ as a subprocess and keep each result as a JSON file with its provenance.

Each benchmark script is called with ``--json PATH`` (or, where its ``--json`` is a flag, its
standard output is parsed), in a fresh interpreter, one after another, so no benchmark
shares a process or a core with another. Every result file is wrapped in the same envelope::

    {"benchmark": "import_cost", "status": "ok" | "failed" | "missing",
     "command": "python bench/import_cost.py --json ...", "date": "2026-...Z",
     "machine": {...}, "wall_s": 12.3, "error": null, "adapted": [...], "result": {...}}

``adapted`` lists what the runner had to change because a script's command line differs
from the one it expects (a flag it does not take is left out, and said so). A script that
is missing, crashes or times out gives a ``failed``/``missing`` envelope: the report says so
instead of stopping. The module needs only the standard library (``gpu_suite.py`` reuses it
on machines where nothing can be installed).

    python bench/run_all.py [--quick] [--out bench/results/cpu] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its arguments for a full run and for ``--quick``, and extra outputs."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    #: Flags taking a file path for an extra output (e.g. a PNG plot): flag -> file name.
    outputs: dict[str, str] = field(default_factory=dict)
    timeout_s: int = 900
    owner: str = ""


#: The CPU benchmarks, in the order they run (cheap and noise-sensitive ones first).
CPU_BENCHES: tuple[Bench, ...] = (
    Bench("import_cost", "import_cost.py", ("--repeats", "15"), ("--repeats", "3"), owner="lead"),
    Bench("sampler_overhead", "sampler_overhead.py", ("--reps", "15"), ("--reps", "2", "--steps", "10"),
          owner="samplers"),
    Bench("unet_throughput", "unet_throughput.py", ("--breakdown", "--compile"), ("--quick",),
          owner="models"),
    Bench("train_step", "train_step.py", ("--device", "cpu", "--precision", "fp32"),
          ("--device", "cpu", "--precision", "fp32", "--rounds", "1", "--warmup", "1", "--batch-size", "2"),
          owner="trainer"),
    Bench("quality_vs_nfe", "quality_vs_nfe.py", (), ("--samples", "500", "--iters", "300"),
          outputs={"--plot": "quality_vs_nfe.png"}, timeout_s=1200, owner="samplers"),
    Bench("guidance_accuracy", "guidance_accuracy.py", (), ("--quick",),
          outputs={"--plot": "guidance_accuracy.png"}, owner="bench"),
    Bench("attention_memory", "attention_memory.py", ("--device", "cpu"), ("--device", "cpu", "--quick"),
          owner="bench"),
    Bench("rl_finetune", "rl_finetune.py", (), ("--seeds", "1", "--iterations", "2", "--reps", "2"),
          owner="rl"),
    Bench("diffusers_overhead", "diffusers_overhead.py", (), ("--reps", "2", "--steps", "10"),
          owner="diffusers"),
    # Quality, not timing (minutes each): last, with a longer timeout.
    Bench("quality_paths", "quality_paths.py", ("--steps", "3000", "--samples", "20000"),
          ("--steps", "100", "--samples", "500"), timeout_s=2400, owner="samplers"),
    Bench("fitted_spacing", "fitted_spacing.py", ("--threads", "1"),
          ("--threads", "1", "--samples", "300", "--iters", "50"), timeout_s=1800, owner="samplers"),
)  # fmt: skip


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def machine_info(python: str = sys.executable) -> dict[str, Any]:
    """Where a benchmark ran: CPU model and cores, OS, Python, torch and the packages compared."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    dists = ("torch", "ddkit-core", "ddkit-samplers", "ddkit-models", "ddkit-guidance",
             "guided-diffusion-sdk", "diffusers", "k-diffusion", "xformers", "numpy")  # fmt: skip
    return {
        "cpu": _cpu_model(),
        "cores": usable,
        "load_avg_1_5_15": load,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": {d: v for d in dists if (v := _version(d)) is not None},
    }


def script_provenance(script: str, argv: Sequence[str]) -> dict[str, Any]:
    """What a script writing its own ``--json`` records of its run, in the envelope's terms.

    report.py reads ``date``, ``command`` and ``machine`` from such a file, so a benchmark run
    by hand (not through this runner) still renders with when, how and where it was measured.
    """
    shown = [_show_path(a) for a in argv]
    return {
        "date": now(),
        "command": shlex.join(["python", f"bench/{script}", *shown]),
        "machine": machine_info(),
    }


def help_text(script: Path, python: str = sys.executable) -> str:
    """The script's ``--help`` (its flags as it declares them today), or '' if it cannot run."""
    try:
        done = subprocess.run([python, str(script), "--help"], capture_output=True, text=True, timeout=120)
    except (subprocess.TimeoutExpired, OSError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _takes_value(help_out: str, flag: str) -> bool:
    return re.search(rf"{re.escape(flag)}[ =]([A-Z][A-Z_0-9]*\b|\{{)", help_out) is not None


def _adapt(args: Sequence[str], help_out: str) -> tuple[list[str], list[str]]:
    """Drop flags the script does not declare (with their value); say which were dropped."""
    kept: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
        if arg.startswith("--") and help_out and not re.search(rf"(^|[\s,\[]){re.escape(arg)}\b", help_out):
            dropped.append(" ".join(args[i : i + (2 if has_value else 1)]))
            i += 2 if has_value else 1
            continue
        kept.append(arg)
        i += 1
    return kept, dropped


def _last_json(text: str) -> Any:
    """The last JSON object printed on stdout (for scripts whose --json is a flag)."""
    for start in [m.start() for m in re.finditer(r"^\{", text, re.M)][::-1]:
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON object found on the script's standard output")


def _show_path(arg: str) -> str:
    """A path argument relative to the repository root when it lies inside it."""
    if os.path.isabs(arg) and Path(arg).resolve().is_relative_to(ROOT):
        return os.path.relpath(arg, ROOT)
    return arg


def run_bench(
    bench: Bench,
    out_dir: Path,
    *,
    quick: bool = False,
    python: str = sys.executable,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout_s: int | None = None,
) -> dict[str, Any]:
    """Run one benchmark script; write and return its envelope ``out_dir/<name>.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    script = BENCH / bench.script
    target = out_dir / f"{bench.name}.json"
    envelope: dict[str, Any] = {
        "benchmark": bench.name,
        "script": f"bench/{bench.script}",
        "owner": bench.owner,
        "quick": quick,
        "date": now(),
        "machine": machine_info(python),
        "adapted": [],
        "error": None,
        "result": None,
    }
    if not script.exists():
        envelope.update(status="missing", error=f"bench/{bench.script} does not exist (yet)", command=None)
        target.write_text(json.dumps(envelope, indent=2))
        print(f"[{bench.name}] missing: bench/{bench.script}", flush=True)
        return envelope
    help_out = help_text(script, python)
    args, dropped = _adapt([*(bench.quick_args if quick else bench.args), *extra_args], help_out)
    envelope["adapted"] += [f"left out {d!r}: bench/{bench.script} does not take it" for d in dropped]
    raw_json = out_dir / f".{bench.name}.raw.json"
    json_by_path = _takes_value(help_out, "--json") or not help_out
    cmd = [python, str(script), *args]
    if json_by_path:
        cmd += ["--json", str(raw_json)]
    elif "--json" in help_out:
        cmd += ["--json"]
        envelope["adapted"].append("its --json is a flag: the result was read from its standard output")
    else:
        envelope["adapted"].append("it has no --json: only its standard output is kept")
    for flag, filename in bench.outputs.items():
        if flag in help_out or not help_out:
            cmd += [flag, str(out_dir / filename)]
            envelope.setdefault("files", []).append(filename)
        else:
            envelope["adapted"].append(f"it takes no {flag}: no {filename}")
    shown = [c if c != python else "python" for c in cmd]
    envelope["command"] = shlex.join(_show_path(c) for c in shown)
    print(f"[{bench.name}] {envelope['command']}", flush=True)
    start = time.perf_counter()
    if raw_json.exists():
        raw_json.unlink()
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s or bench.timeout_s, cwd=ROOT, env=env
        )
    except subprocess.TimeoutExpired as exc:
        envelope.update(status="failed", error=f"timed out after {exc.timeout:.0f} s", wall_s=exc.timeout)
        target.write_text(json.dumps(envelope, indent=2))
        print(f"[{bench.name}] FAILED: {envelope['error']}", flush=True)
        return envelope
    envelope["wall_s"] = time.perf_counter() - start
    envelope["stdout_tail"] = done.stdout[-4000:]
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        envelope.update(
            status="failed",
            error=f"exit code {done.returncode}: {lines[-1] if lines else '(no error output)'}",
            stderr_tail=done.stderr[-4000:],
        )
    else:
        try:
            if json_by_path:
                envelope["result"] = json.loads(raw_json.read_text())
            elif "--json" in help_out:
                envelope["result"] = _last_json(done.stdout)
            envelope["status"] = "ok"
        except (OSError, ValueError) as exc:
            envelope.update(status="failed", error=f"no readable JSON result: {exc}")
    if raw_json.exists():
        raw_json.unlink()
    target.write_text(json.dumps(envelope, indent=2))
    state = envelope["status"] if envelope["status"] == "ok" else f"FAILED: {envelope['error']}"
    print(f"[{bench.name}] {state} ({envelope['wall_s']:.0f} s)", flush=True)
    return envelope


def run_all(
    out_dir: Path, *, quick: bool = False, only: Sequence[str] | None = None, python: str = sys.executable
) -> list[dict[str, Any]]:
    """Run the CPU benchmarks (or those named in ``only``) into ``out_dir``; return their envelopes."""
    names = {b.name for b in CPU_BENCHES}
    unknown = sorted(set(only or ()) - names)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {sorted(names)}")
    results = []
    for bench in CPU_BENCHES:
        if only and bench.name not in only:
            continue
        results.append(run_bench(bench, out_dir, quick=quick, python=python))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(BENCH / "results" / "cpu"), help="folder for the JSON files")
    parser.add_argument("--quick", action="store_true", help="each benchmark's short smoke mode")
    parser.add_argument("--only", nargs="+", default=None, help="run only these benchmarks")
    args = parser.parse_args(argv)
    results = run_all(Path(args.out), quick=args.quick, only=args.only)
    bad = [r["benchmark"] for r in results if r["status"] != "ok"]
    print(
        f"\n{len(results) - len(bad)} of {len(results)} benchmarks ok" + (f"; not ok: {bad}" if bad else "")
    )


if __name__ == "__main__":
    main()
