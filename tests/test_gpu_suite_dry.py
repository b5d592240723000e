"""``bench/gpu_suite.py --dry`` runs every GPU benchmark end to end on the CPU, and report.py renders it.

Between GPU sessions this is what keeps the suite working: a flag a script lost, a result
shape report.py no longer reads, or a reference API that moved fails here, not on the next
(scarce) GPU machine. Each benchmark runs in its own interpreter at tiny sizes; the whole
run takes about a minute on two idle cores, most of it importing torch and diffusers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

pytest.importorskip("guided_diffusion", reason="the GPU suite compares against guided-diffusion-sdk")
pytest.importorskip("diffusers", reason="the GPU suite compares against diffusers")


def _bench_module(name: str) -> ModuleType:
    """A bench script as a module; in sys.modules while it runs, as its dataclasses need."""
    sys.path.insert(0, str(BENCH))  # the bench scripts import their siblings
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
        del sys.modules[spec.name]
    return module


def test_quick_budgets_fit_the_device_limit() -> None:
    suite = _bench_module("gpu_suite")
    budgets = {b.name: b.budget_s for b in suite.GPU_BENCHES}
    # Environment probe, interpreter starts and the wheel install need about a minute besides.
    assert sum(budgets.values()) + 40 <= suite.QUICK_BUDGET_S <= 600 - 45, budgets
    for b in suite.GPU_BENCHES:
        assert b.quick[b.quick.index("--device") + 1] == "cuda"
        assert b.dry[b.dry.index("--device") + 1] == "cpu"


@pytest.mark.slow
def test_dry_suite_writes_ok_envelopes_that_report_renders(tmp_path: Path) -> None:
    out = tmp_path / "results" / "gpu"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_suite.py"), "--dry", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    suite = _bench_module("gpu_suite")
    names = [b.name for b in suite.GPU_BENCHES]
    assert {"unet_throughput", "sampling_speed", "attention_memory", "train_step", "train_step_fp16"} <= set(
        names
    )
    environment = json.loads((out / "environment.json").read_text())
    assert environment["status"] == "ok"
    assert environment["dry"] is True
    for name in names:
        envelope = json.loads((out / f"{name}.json").read_text())
        assert envelope["status"] == "ok", f"{name}: {envelope.get('error')}\n{envelope.get('stderr_tail')}"
        assert envelope["dry"] is True
        assert "--device cpu" in envelope["command"]
        assert envelope["result"], name
    unet = json.loads((out / "unet_throughput.json").read_text())["result"]
    assert {"guided-diffusion", "ddkit", "diffusers UNet2DModel"} <= set(unet["forward"])
    assert unet["forward"]["ddkit"]["speedup_vs_diffusers"] > 0
    assert unet["max_abs_output_diff_vs_gd"]["ddkit"] < 1e-4  # identical weights
    sampling = json.loads((out / "sampling_speed.json").read_text())["result"]
    assert {r["sampler"] for r in sampling["rows"]} == {"ddim", "dpm-solver++"}
    assert any("dpm-solver++" in k and "diffusers" in k for k in sampling["ratios"])
    rows = {r["config"]: r for r in sampling["rows"]}
    for config in ("ddkit fp32", "diffusers DDIM loop fp32"):  # the same DDIM chain as guided-diffusion
        assert rows[config]["sample_max_abs_diff_to_gd_fp32"] < 1e-3, rows[config]
    memory = json.loads((out / "attention_memory.json").read_text())["result"]
    assert {r["backend"] for r in memory["rows"] if r["status"] == "ok"} == {"sdpa", "math"}
    assert "sampling: ddkit / diffusers pipeline loop, dpm-solver++ fp32" in done.stdout

    report = _bench_module("report")
    page = report.render(tmp_path / "results", tmp_path / "BENCHMARKS.md", "`test`", fresh=False)
    gpu_part = page[page.index("## GPU") :]
    assert "GPU session checklist" in gpu_part
    assert "**Dry run** on the CPU" in gpu_part
    assert "hold a dry run on the CPU" in page  # the header says no GPU figure was measured
    for _, title in report.GPU_SECTIONS:
        assert title in gpu_part
    assert "Not measured" not in gpu_part
    assert "could not read the result's shape" not in gpu_part
    assert "| diffusers DPM-Solver++ loop fp32 |" in gpu_part
    assert "forward × diffusers" in gpu_part
    assert "≥ 1.2× diffusers" in page  # the GPU targets reach the summary (not judged on a dry run)
