"""bench/report.py renders the U-Net step breakdown from a result, without running anything."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from _modules import load_module

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_report() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # report.py imports its sibling run_all
    try:
        return load_module("bench_report", BENCH / "report.py")
    finally:
        sys.path.remove(str(BENCH))


def test_breakdown_rows_give_the_share_and_the_ceiling() -> None:
    report = load_report()
    text = report.render_unet_breakdown(
        {
            "guided-diffusion": {"conv_ms": 750.0, "other_ms": 250.0},
            "ddkit": {"conv_ms": 600.0, "other_ms": 300.0},
        },
        {"ddkit +torch.compile": 93.4},
    )
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    # gd's step is 1000 ms: ddkit's ceiling is 1000 / 600 with everything but convolutions free.
    assert "| 600 | 300 | 67% | 1.67× |" in rows["ddkit"]
    assert "| 750 | 250 | 75% | 1.33× |" in rows["guided-diffusion"]
    assert "`ddkit +torch.compile` compiled in 93 s (its first forward" in text


def test_no_breakdown_renders_nothing() -> None:
    assert load_report().render_unet_breakdown({}, {}) == ""


def test_overhead_renders_both_modes_and_gives_each_sampler_a_summary_row(tmp_path: Path) -> None:
    report = load_report()
    result = {
        "shape": [16, 3, 32, 32],
        "steps": 50,
        "reps": 3,
        "model_call_us": 1.0,
        "noise_draw_us": 200.0,
        "clock": "thread CPU time (time.thread_time_ns)",
        "load_avg_at_start": [1.5, 1.0, 1.0],
        "rows": [
            {"sampler": "ddim", "ddkit": 40.0, "ddkit-pipeline": 44.0, "diffusers": 160.0,
             "ratio_ddkit_diffusers": 0.25, "ratio_pipeline_diffusers": 0.275},
            {"sampler": "ddpm", "ddkit": 260.0, "ddkit-pipeline": 262.0, "diffusers": 400.0,
             "ratio_ddkit_diffusers": 0.65, "ratio_pipeline_diffusers": 0.655,
             "ratio_without_noise_draw": 0.3, "ratio_pipeline_without_noise_draw": 0.31},
        ],
    }  # fmt: skip
    text, heads = report.render_sampler_overhead(result, tmp_path, tmp_path)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "Pipeline.sample / diffusers without the noise draw" in rows["sampler"]
    assert "| 40 | 44 | — | 160 | 0.25× | 0.28× | — | — |" in rows["ddim"]
    assert "| 0.30× | 0.31× |" in rows["ddpm"]
    assert "load average 1.5" in text
    assert heads == {
        "ddim": 0.25,
        "ddim through Pipeline.sample": 0.275,
        "ddpm": 0.65,
        "ddpm without the noise draw": 0.3,
        "ddpm through Pipeline.sample": 0.655,
        "ddpm through Pipeline.sample without the noise draw": 0.31,
    }
    # A result from before the Pipeline.sample column renders as it was measured.
    old = {"rows": [{"sampler": "ddim", "ddkit": 71.0, "diffusers": 312.0, "ratio_ddkit_diffusers": 0.23}]}
    text, heads = report.render_sampler_overhead(old, tmp_path, tmp_path)
    assert "Pipeline.sample" not in text.split("|", 1)[1]
    assert heads == {"ddim": 0.23}
