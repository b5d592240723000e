"""bench/report.py renders each section and the summary from result JSON alone, without running anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

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
        "fused_update_us": 8.0,
        "clock": "thread CPU time (time.thread_time_ns)",
        "load_avg_at_start": [1.5, 1.0, 1.0],
        "rows": [
            {"sampler": "ddim", "schedule": "linear", "ddkit": 40.0, "ddkit-pipeline": 44.0,
             "diffusers": 160.0, "ratio_ddkit_diffusers": 0.25, "ratio_pipeline_diffusers": 0.275},
            {"sampler": "ddpm", "schedule": "linear", "ddkit": 260.0, "ddkit-pipeline": 262.0,
             "diffusers": 400.0, "ratio_ddkit_diffusers": 0.65, "ratio_pipeline_diffusers": 0.655,
             "ratio_without_noise_draw": 0.3, "ratio_pipeline_without_noise_draw": 0.31},
            {"sampler": "euler (rectified flow)", "schedule": "rectified-flow", "ddkit": 28.0,
             "ddkit-pipeline": 30.0, "diffusers": 40.0, "ratio_ddkit_diffusers": 0.7,
             "ratio_pipeline_diffusers": 0.75},
            {"sampler": "flow-sde (rectified flow)", "schedule": "rectified-flow", "ddkit": 220.0,
             "diffusers": 260.0, "ratio_ddkit_diffusers": 0.85, "ratio_without_noise_draw": 0.6},
        ],
    }  # fmt: skip
    text, verdicts = report.render_sampler_overhead(result, tmp_path, tmp_path)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "Pipeline.sample / diffusers without the noise draw" in rows["sampler"]
    assert "| 40 | 44 | — | 160 | 0.25× | 0.28× | — | — |" in rows["ddim"]
    assert "| 0.30× | 0.31× |" in rows["ddpm"]
    assert "load average 1.5" in text
    assert "0.20× (euler (rectified flow))" in text  # the fused update's floor: 8 of 40 µs
    label = "Sampling-loop overhead per step, ddkit / diffusers: "
    judged = {v.figure.removeprefix(label): (v.measured, v.met) for v in verdicts}
    assert judged == {
        "ddim": ("0.25×", True),
        "ddim through Pipeline.sample": ("0.28×", True),
        # stochastic: judged beyond the shared draw, the plain ratio shown with the draw's own share
        "ddpm without the noise draw": ("0.30×", True),
        "ddpm with the noise draw": ("0.65× (the draw alone: 0.50×)", None),
        "ddpm through Pipeline.sample without the noise draw": ("0.31×", False),
        "ddpm through Pipeline.sample with the noise draw": ("0.66× (the draw alone: 0.50×)", None),
        # on a path diffusers' step is one update: shown with that floor, not judged
        "euler (rectified flow)": ("0.70× (one fused update of the batch alone: 0.20×)", None),
        "euler (rectified flow) through Pipeline.sample": (
            "0.75× (one fused update of the batch alone: 0.20×)",
            None,
        ),
        # a stochastic step on a path: its floor holds the draw (8 + 200 of 260 µs)
        "flow-sde (rectified flow)": ("0.85× (one fused update and the noise draw alone: 0.80×)", None),
        "flow-sde (rectified flow) without the noise draw": ("0.60×", None),
    }
    # A result from before the Pipeline.sample column renders as it was measured.
    old = {"rows": [{"sampler": "ddim", "ddkit": 71.0, "diffusers": 312.0, "ratio_ddkit_diffusers": 0.23}]}
    text, verdicts = report.render_sampler_overhead(old, tmp_path, tmp_path)
    header = next(line for line in text.splitlines() if line.startswith("| sampler"))
    assert "Pipeline.sample" not in header
    assert [(v.measured, v.met) for v in verdicts] == [("0.23×", True)]


def table_rows(text: str) -> dict[str, str]:
    """The Markdown table rows of ``text`` by their first cell."""
    return {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}


def rl_result(after: float, log_prob_ratio: float) -> dict[str, Any]:
    example = {
        "before": -2.5,
        "after_mean": after,
        "after_std": 0.05,
        "after": [after] * 3,
        "gain": after + 2.5,
        "train_cpu_s": 4.9,
        "iterations": 30,
        "seeds": 3,
        "example": "examples/rl/ddpo_toy.py",
        "reward_samples": 2000,
        "pretrain_steps": 800,
        "config": {
            "model": {"name": "mlp"},
            "schedule": {"name": "linear"},
            "parameterization": {"name": "epsilon"},
            "sampler": {"name": "ddim", "steps": 20, "eta": 1.0},
        },
        "settings": {"batch": 256, "epochs": 2},
    }
    cost = {
        "batch": 256,
        "forward_us": 700.0,
        "transition_log_prob_us": 700.0 * log_prob_ratio,
        "log_prob_over_forward": log_prob_ratio,
        "sample_us_per_step": 650.0,
        "rollout_us_per_step": 690.0,
        "rollout_over_sample": 690.0 / 650.0,
    }
    return {"ddpo": example, "cost": [cost], "reps": 30, "threads": 1}  # fmt: skip


def test_rl_finetune_judges_the_rise_and_the_cost_of_the_calls(tmp_path: Path) -> None:
    report = load_report()
    text, verdicts = report.render_rl_finetune(rl_result(-0.4, 1.1), tmp_path, tmp_path)
    rows = table_rows(text)
    ddpo = next(line for name, line in rows.items() if name.startswith("DDPO"))
    assert "`ddpo_toy.py`, epsilon `mlp` on linear, batch 256" in ddpo
    assert "| ddim, steps 20, eta 1.0 | -2.500 | -0.400 ± 0.050 | +2.10 | yes | 4.9 |" in ddpo
    assert "| 256 | 1.10× (770 / 700 µs) | yes | 1.06× (690 / 650 µs) | yes |" in rows["256"]
    assert [v.met for v in verdicts] == [True, True, True]
    # A rise within 3 standard deviations of the seeds, and a slow log-prob call, fail.
    text, verdicts = report.render_rl_finetune(rl_result(-2.4, 1.3), tmp_path, tmp_path)
    rows = table_rows(text)
    assert "| +0.10 | **no** |" in next(line for name, line in rows.items() if name.startswith("DDPO"))
    assert "| 1.30× (910 / 700 µs) | **no** |" in rows["256"]
    assert [v.met for v in verdicts] == [False, False, True]


def quality_paths_result(flow_best: float) -> dict[str, Any]:
    rows = [
        {"path": path, "sampler": sampler, "nfe": nfe, "sw": sw, "error": None}
        for path, scores in (
            ("cosine ε", {"ddim": 0.040, "plms": 0.020}),
            ("rectified-flow velocity", {"ddim": 0.050, "plms": flow_best}),
        )
        for sampler, sw in scores.items()
        for nfe in (5, 10)
    ]
    rows.append(
        {"path": "cosine ε", "sampler": "heun", "nfe": 5, "sw": float("inf"), "error": "ValueError: x"}
    )
    return {"floor": 0.017, "rows": rows, "train_steps": 3000, "samples": 20000}


def test_quality_paths_bolds_the_best_of_each_column_and_judges_flow_against_eps(tmp_path: Path) -> None:
    report = load_report()
    text, verdicts = report.render_quality_paths(quality_paths_result(0.022), tmp_path, tmp_path)
    rows = table_rows(text)
    assert rows["sampler"].count("NFE") == 4  # two paths × two NFEs
    assert "| plms | **0.020** | **0.020** | **0.022** | **0.022** |" in rows["plms"]
    assert "| heun | error | — | — | — |" in rows["heun"]
    assert (
        "within 1.2× of the ε model's best at NFE 10: 1.10×, met** (0.022, plms, against 0.020, plms)" in text
    )
    assert "worst finite cell is 0.050 (ddim, rectified-flow velocity, NFE 5)" in text
    assert "heun on cosine ε at NFE 5 (ValueError: x)" in text
    assert [(v.measured, v.met) for v in verdicts] == [("1.10×", True)]
    # The flow model's best now 0.030 (its ddim 0.050 is still worse): 1.50× the ε model's, not met.
    text, verdicts = report.render_quality_paths(quality_paths_result(0.030), tmp_path, tmp_path)
    assert "1.50×, NOT met**" in text
    assert [(v.measured, v.met) for v in verdicts] == [("1.50×", False)]


def fitted_row(model: str, sampler: str, nfe: int, fitted: float, ref: bool) -> dict[str, Any]:
    row = {
        "model": model,
        "sampler": sampler,
        "nfe": nfe,
        "fit_s": 0.5 if ref else 5.0,
        "default_teacher": 0.04,
        "fitted_teacher": fitted,
        "default_data": 0.05,
        "fitted_data": 0.045,
    }
    if ref:
        row |= {"default_ref": 0.05, "fitted_ref": fitted + 0.01}
    return row  # fmt: skip


def test_fitted_spacing_derives_its_ranges_and_names_the_losses(tmp_path: Path) -> None:
    report = load_report()

    def result(loss: float) -> dict[str, Any]:
        rows = [
            fitted_row("exact ring, cosine", "deis", 5, 0.02, True),
            fitted_row("exact ring, cosine", "deis", 10, loss, True),
            fitted_row("README toy, flow", "euler", 5, 0.01, False),
        ]
        return {"rows": rows, "floors": {"ring": 0.07}, "samples": 4000, "iters": 1000, "threads": 1}

    text, verdicts = report.render_fitted_spacing(result(0.03), tmp_path, tmp_path)
    lines = [line for line in text.splitlines() if line.startswith("| exact ring, cosine | deis | 10 |")]
    assert lines == [
        "| exact ring, cosine | deis | 10 | 0.0400 → **0.0300** (0.75×) | 0.0500 → **0.0400** (0.80×) "
        "| 0.0500 → **0.0450** (0.90×) | 0.5 |"
    ]
    assert "README toy, flow | euler | 5 | 0.0400 → **0.0100** (0.25×) | – |" in text
    assert (
        "- **NFE 5:** fitted / default distance to the teacher 0.25–0.50× (deis 0.50×; euler 0.25×)" in text
    )
    assert "closer to the teacher than the default for every model" in text
    assert "0.5 s on the exact ring and 5.0 s on the trained toys" in text
    assert [(v.measured, v.met) for v in verdicts] == [("0.50×", None), ("0.75×", None)]
    # The NFE-10 grid now fits worse than the default on held-out noise: not bold, and named.
    text, verdicts = report.render_fitted_spacing(result(0.044), tmp_path, tmp_path)
    assert "0.0400 → 0.0440 (1.10×)" in text
    assert "not closer to the teacher on held-out noise:** deis on exact ring, cosine at NFE 10" in text
    assert verdicts[-1].measured == "1.10×"


def diffusers_result(ddkit_overhead: float) -> dict[str, Any]:
    row = {
        "sampler": "ddim (DDIMScheduler)",
        "ddkit_step_us": ddkit_overhead + 7.0,
        "diffusers_step_us": 218.0,
        "ddkit_overhead_us": ddkit_overhead,
        "diffusers_overhead_us": 211.0,
        "ratio_overhead": ddkit_overhead / 211.0,
        "ratio_step": (ddkit_overhead + 7.0) / 218.0,
    }
    return {"shape": [2, 4, 8, 8], "steps": 50, "reps": 15, "threads": 1, "unet_call_us": 7.0, "rows": [row]}


def test_diffusers_overhead_judges_each_sampler_against_diffusers(tmp_path: Path) -> None:
    report = load_report()
    text, verdicts = report.render_diffusers_overhead(diffusers_result(119.0), tmp_path, tmp_path)
    row = table_rows(text)["ddim (DDIMScheduler)"]
    assert row == "| ddim (DDIMScheduler) | 126 | 218 | 119 | 211 | 0.56× | yes |"
    assert "7.0 µs per call, subtracted" in text
    assert [(v.target, v.measured, v.met) for v in verdicts] == [("≤ 1.0× diffusers", "0.56×", True)]
    text, verdicts = report.render_diffusers_overhead(diffusers_result(422.0), tmp_path, tmp_path)
    assert "| 2.00× | **no** |" in table_rows(text)["ddim (DDIMScheduler)"]
    assert verdicts[0].met is False


def test_the_page_renders_every_section_from_the_json_alone(tmp_path: Path) -> None:
    """Bench scripts' own JSON (with and without recorded provenance) reach their sections and the summary."""
    report = load_report()
    cpu = tmp_path / "results" / "cpu"
    cpu.mkdir(parents=True)
    machine = {"cpu": "Test CPU", "cores": 2, "python": "3.11.7", "load_avg_1_5_15": [0.5, 0.0, 0.0]}
    provenance = {
        "command": "python bench/rl_finetune.py --json x.json",
        "date": "2026-12-04 12:00 UTC",
        "machine": machine,
        "wall_s": 42.0,
    }
    (cpu / "rl_finetune.json").write_text(json.dumps(rl_result(-0.4, 1.3) | provenance))
    (cpu / "quality_paths.json").write_text(json.dumps(quality_paths_result(0.022)))
    page = report.render(tmp_path / "results", tmp_path / "BENCHMARKS.md", "`test`", fresh=False)
    titles = [title for _, title in report.CPU_SECTIONS]
    positions = [page.index(f". {title}\n") for title in titles]
    assert positions == sorted(positions)
    rl = page[positions[titles.index("RL fine-tuning of 2-D toys (DDPO, GRPO with flow-sde)")] :]
    rl = rl[: rl.index("### ")]
    assert "Measured by `python bench/rl_finetune.py --json x.json` · 2026-12-04 12:00 UTC · 42 s" in rl
    assert "Test CPU, 2 cores usable" in rl
    assert "load average 0.5 at start" in rl
    assert "no command, date or machine recorded" in page  # quality_paths.json records none
    summary = table_rows(page[page.index("## Summary") : page.index("## CPU")])
    assert summary["RL calls, `transition_log_prob` / one model forward, batch 256"].endswith(
        "| 1.30× | **no** |"
    )
    assert summary["Sample quality on every Gaussian path: flow best / ε best at NFE 10"].endswith("| yes |")
    assert summary["ddkit-diffusers: sampling a diffusers UNet"].endswith("| — | not measured |")
    assert "Fitted time grids (2-D toys) | see section | — | not measured |" in page
