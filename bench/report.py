"""Run the benchmarks and write BENCHMARKS.md: tables and plots, each with its machine, command and date.

    python bench/report.py                 # run every CPU benchmark afresh, then render
    python bench/report.py --no-run        # render from bench/results/cpu/*.json as they are
    python bench/report.py --quick --results /tmp/r --out /tmp/B.md   # smoke test of the whole path

CPU figures come from ``bench/results/cpu/*.json`` (written by :mod:`run_all` unless
``--no-run``); GPU figures from ``bench/results/gpu/*.json`` when present (written on a CUDA
machine by ``bench/gpu_suite.py``; when and where they were measured is read from them).
Figures that depend on the machine are shown as ratios to the reference measured in the
same run. Nothing in BENCHMARKS.md is typed by hand: edit this file and rerun instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_all import BENCH, ROOT, machine_info, now, run_all

Envelope = dict[str, Any]

#: Targets of issue 11: (what, target text, test on the measured value).
#: Issue 19: a sampler's overhead per step at most this times diffusers' equivalent's.
OVERHEAD_TARGET = 0.3
TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "unet_throughput": ("≥ 1.25× guided-diffusion (CPU)", lambda v: v >= 1.25),
    "import_cost": ("≤ 1.3× `import torch`", lambda v: v <= 1.3),
    "train_step": ("> 1× guided-diffusion", lambda v: v > 1.0),
}


#: Targets of issue 22 on a GPU: (benchmark, summary part) -> (target text, test on the measured value).
GPU_TARGETS: dict[tuple[str, str], tuple[str, Callable[[float], bool]]] = {
    ("unet_throughput", "forward"): ("≥ 2× guided-diffusion fp16", lambda v: v >= 2.0),
    ("unet_throughput", "training"): ("≥ 2× guided-diffusion fp16", lambda v: v >= 2.0),
    ("unet_throughput", "forward / diffusers"): ("≥ 1.2× diffusers", lambda v: v >= 1.2),
    ("unet_throughput", "training / diffusers"): ("≥ 1.2× diffusers", lambda v: v >= 1.2),
}

#: What a GPU session runs (bench/README.md, "GPU session checklist", says it in full).
GPU_CHECKLIST = (
    "> **GPU session checklist** (issue 22; bench/README.md has the details). Here, with network: "
    "`python bench/gpu_suite.py --prepare .whl` (wheels of ddkit and the references). Then one call of "
    'the device tool, `timeout_s` 600, `carry` `[".whl"]`: `PYTHONUNBUFFERED=1 python3 bench/gpu_suite.py '
    "--install .whl --quick --out $OUT/gpu` (under 540 s: each benchmark has a budget). It must end with "
    "every benchmark `ok` and print the headline ratios; copy `$OUT/gpu/*.json` into `bench/results/gpu/` "
    "and run `python bench/report.py --no-run`. CI keeps the suite working with `--dry` "
    "(`tests/test_gpu_suite_dry.py`)."
)


# -- small formatting helpers --------------------------------------------------------------


def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(machine: dict[str, Any], gpu: dict[str, Any] | None = None) -> str:
    packages = machine.get("packages", {})
    parts = [
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores usable",
        machine.get("os", ""),
        f"Python {machine.get('python', '?')}",
        f"torch {(gpu or {}).get('torch') or packages.get('torch', '?')}",
    ]
    if gpu and gpu.get("gpu"):
        parts.insert(
            0, f"**{gpu['gpu']}** ({gpu.get('gpu_memory_gib', '?')} GiB, CUDA {gpu.get('cuda', '?')})"
        )
    load = machine.get("load_avg_1_5_15")
    if load:
        parts.append(f"load average {load[0]:.1f} at start")
    return ", ".join(p for p in parts if p)


def provenance(env: Envelope) -> str:
    """One line under each table: the command, when, how long, and on what."""
    if env.get("bare"):
        device = env.get("result", {}).get("device")
        return (
            f"<sub>From `{env['bare']}`, a result file written by the benchmark script itself (not by "
            "run_all.py or gpu_suite.py): no command, date or machine recorded"
            + (f" beyond the device it names: {device}" if device else "")
            + ".</sub>"
        )
    gpu = env.get("machine", {}).get("gpu")
    bits = [f"`{env.get('command') or env.get('script')}`", env.get("date", "?")]
    if env.get("wall_s") is not None:
        bits.append(f"{env['wall_s']:.0f} s")
    if env.get("machine"):
        bits.append(machine_line(env["machine"], gpu))
    line = "<sub>Measured by " + " · ".join(bits) + "</sub>"
    if env.get("dry"):
        line += (
            "\n\n> **Dry run (`bench/gpu_suite.py --dry`): the GPU benchmark at tiny sizes on the CPU, to "
            "keep the suite working between GPU sessions; these numbers are not meaningful.**"
        )
    elif env.get("quick"):
        line += "\n\n> **Quick (smoke) run: these numbers are not meaningful.**"
    for note in env.get("adapted", []):
        line += f"\n\n> Runner note: {note}."
    return line


def not_measured(env: Envelope | None, what: str) -> str:
    if env is None:
        return f"_Not measured: no result file for {what}._"
    reason = env.get("error") or env.get("status")
    return f"_Not measured ({env.get('status')}): {reason}._" + (
        f"\n\n<sub>Command: `{env['command']}`</sub>" if env.get("command") else ""
    )


def find_ratios(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every number whose key mentions 'ratio', with its dotted path (for results of unknown shape)."""
    found: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if (
                "ratio" in str(key).lower()
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                found[path] = float(value)
            elif isinstance(value, dict):
                found.update(find_ratios(value, path))
    return found


def generic(result: Any) -> str:
    """A result of a shape this report does not know: its Markdown if it gives one, else its rows/values."""
    if isinstance(result, dict) and isinstance(result.get("markdown"), str):
        return str(result["markdown"])
    out = []
    rows = result.get("rows") if isinstance(result, dict) else None
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys and not isinstance(r[k], dict | list)]
        out.append(table(keys, ([fmt(r.get(k), 3) for k in keys] for r in rows)))
    if isinstance(result, dict):
        scalars = {
            k: v for k, v in result.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        }
        if scalars:
            out.append(
                table(["field", "value"], ([f"`{k}`", fmt(v, 3)] for k, v in scalars.items()), ["---", "---"])
            )
        nested = {k: v for k, v in result.items() if isinstance(v, dict)}
        for key, value in nested.items():
            flat = {k: v for k, v in value.items() if not isinstance(v, dict | list)}
            if flat:
                out.append(f"**{key}**\n\n" + table(list(flat), [[fmt(v, 3) for v in flat.values()]]))
    return "\n\n".join(out) if out else f"```json\n{json.dumps(result, indent=2)[:3000]}\n```"


# -- one renderer per benchmark: (markdown, headline ratio or None) ------------------------


def render_sampler_overhead(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, list[Verdict]]:
    """Section 1; the summary gets every sampler's ratio to diffusers, bare and through Pipeline.sample.

    Issue 19's target (≤ 0.3× diffusers) covers every sampler with a diffusers equivalent in
    both modes; stochastic samplers are shown with and without the noise draw that every
    framework pays alike (see bench/sampler_overhead.py). Results from before the pipeline
    column (one ddkit mode) render as they were.
    """
    rows = r["rows"]
    pipeline = any("ddkit-pipeline" in x for x in rows)
    bare = any("ddkit" in x for x in rows)
    noise = any("ratio_without_noise_draw" in x or "ratio_pipeline_without_noise_draw" in x for x in rows)
    header = ["sampler"]
    header += ["ddkit"] if bare else []
    header += ["ddkit Pipeline.sample"] if pipeline else []
    header += ["guided-diffusion", "diffusers"]
    header += ["ddkit / diffusers"] if bare else []
    header += ["Pipeline.sample / diffusers"] if pipeline else []
    if noise:
        header += ["ddkit / diffusers without the noise draw"] if bare else []
        header += ["Pipeline.sample / diffusers without the noise draw"] if pipeline else []

    def cells(x: dict[str, Any]) -> list[str]:
        out = [x["sampler"]]
        out += [fmt(x.get("ddkit"), 0)] if bare else []
        out += [fmt(x.get("ddkit-pipeline"), 0)] if pipeline else []
        out += [fmt(x.get("guided-diffusion"), 0), fmt(x.get("diffusers"), 0)]
        out += [fmt(x.get("ratio_ddkit_diffusers"), 2, "×")] if bare else []
        out += [fmt(x.get("ratio_pipeline_diffusers"), 2, "×")] if pipeline else []
        if noise:
            out += [fmt(x.get("ratio_without_noise_draw"), 2, "×")] if bare else []
            out += [fmt(x.get("ratio_pipeline_without_noise_draw"), 2, "×")] if pipeline else []
        return out

    clock = r.get("clock")
    load = r.get("load_avg_at_start")
    body = [
        f"Framework overhead per model evaluation, µs (batch {r.get('shape')}, {r.get('steps')} steps, "
        f"{r.get('threads', 1)} thread, median of {r.get('reps')} interleaved runs, the near-free "
        f"model's own {fmt(r.get('model_call_us'), 1)} µs subtracted"
        + (
            f"; {clock}, which other processes on a shared machine disturb far less than wall time"
            if clock
            else ""
        )
        + (f"; load average {fmt(load[0], 1)} at the start" if load else "")
        + "). ddkit is timed on a bare sampler (`sampler.sample` on a `Denoiser`)"
        + (" and through `Pipeline.sample`, the call users make (x_T given)" if pipeline else "")
        + ". Lower is better; the ratio is the figure that travels between machines."
        + (
            f" Stochastic samplers also draw fresh noise each step ({fmt(r.get('noise_draw_us'), 0)} µs for "
            "this batch with torch.randn, paid by every framework alike); the last columns leave it out."
            + _noise_floor_text(rows, r.get("noise_draw_us"))
            if noise
            else ""
        ),
        "",
        table(header, (cells(x) for x in rows)),
        "",
        "What a step costs: ddkit's loops make the fewest passes over the batch a step needs (DDIM 2, "
        "Heun 5 per two evaluations, the stochastic steps 3 on top of the draw (the noise scaled in "
        "place, the mean added to it), DPM-Solver++ 2M and PLMS 5, each ~5–15 µs here) and about "
        "10–20 µs of Python per evaluation; diffusers' steps are mostly many small scalar-tensor ops. "
        f"Issue 19's target (≤ {OVERHEAD_TARGET}× diffusers) judges the samplers on the chain of betas it "
        "was measured on, the stochastic ones beyond the draw, as the issue measured them. On a "
        "rectified-flow path diffusers' Euler step is itself one fused update (x + dt·v): "
        + (
            f"that update alone takes {fmt(r['fused_update_us'], 1)} µs for this batch, so no framework's "
            "step, however little Python it runs, measures much below "
            + ", ".join(
                f"{fmt(r['fused_update_us'] / x['diffusers'], 2, '×')} ({x['sampler']})"
                for x in rows
                if _on_path(x)
                and x.get("diffusers")
                and x.get("ratio_without_noise_draw") is None  # deterministic: no draw in the floor
            )
            + " there; "
            if r.get("fused_update_us")
            else ""
        )
        + "ddkit's Euler, unwatched (`Pipeline.sample` without a callback), makes that one pass and "
        "carries the network's input k·x between steps (its chain's x is the variance-preserving "
        "one, formed at the last step). On a loaded machine the ratios move by a few hundredths "
        "between runs, the ones without the noise draw more (they subtract a draw timed on its own).",
    ]
    png = files / "sampler_overhead.png"
    if _bar_plot(rows, png):
        body += ["", f"![sampler overhead]({_rel(png, out_dir)})"]
    return "\n".join(body), _overhead_verdicts(rows, r.get("noise_draw_us"), r.get("fused_update_us"))


def _on_path(row: dict[str, Any]) -> bool:
    """Whether an overhead row was measured on a Gaussian path (not the chain of betas the target is for)."""
    return row.get("schedule") not in (None, "linear", "cosine")


def _overhead_verdicts(
    rows: list[dict[str, Any]], noise_us: float | None, update_us: float | None
) -> list[Verdict]:
    """Summary rows: issue 19's target judges each sampler on the chain of betas it was set on,
    stochastic ones beyond the shared noise draw; the rest (with the draw, on a path) are shown
    beside it with their floor, what the same arithmetic alone would measure."""
    label = "Sampling-loop overhead per step, ddkit / diffusers"
    target = f"≤ {OVERHEAD_TARGET}× diffusers"
    out = []
    for x in rows:
        on_path = _on_path(x)
        for suffix, ratio, free in (
            ("", "ratio_ddkit_diffusers", "ratio_without_noise_draw"),
            (" through Pipeline.sample", "ratio_pipeline_diffusers", "ratio_pipeline_without_noise_draw"),
        ):
            v, v_free = x.get(ratio), x.get(free)
            if v is None:
                continue
            name = f"{label}: {x['sampler']}{suffix}"
            diffusers = x.get("diffusers")
            if on_path:
                floor = ""
                if update_us and diffusers:
                    # A stochastic step draws its noise too: the floor holds the draw.
                    draw = noise_us if v_free is not None and noise_us else 0.0
                    what = "one fused update and the noise draw" if draw else "one fused update of the batch"
                    floor = f" ({what} alone: {fmt((update_us + draw) / diffusers, 2, '×')})"
                out.append(
                    Verdict(name, "(no target: diffusers' step is one update)", fmt(v, 2, "×") + floor, None)
                )
                if v_free is not None:
                    out.append(
                        Verdict(f"{name} without the noise draw", "(no target)", fmt(v_free, 2, "×"), None)
                    )
                continue
            if v_free is None:
                out.append(Verdict(name, target, fmt(v, 2, "×"), v <= OVERHEAD_TARGET))
                continue
            out.append(
                Verdict(
                    f"{name} without the noise draw", target, fmt(v_free, 2, "×"), v_free <= OVERHEAD_TARGET
                )
            )
            floor = (
                f" (the draw alone: {fmt(noise_us / diffusers, 2, '×')})" if noise_us and diffusers else ""
            )
            out.append(Verdict(f"{name} with the noise draw", "(no target)", fmt(v, 2, "×") + floor, None))
    return out


def _noise_floor_text(rows: list[dict[str, Any]], noise_us: float | None) -> str:
    """What the noise draw alone makes of the plain ratio: the floor no framework can go under."""
    floors = [
        f"{x['sampler']} {fmt(noise_us / x['diffusers'], 2, '×')}"
        for x in rows
        if noise_us
        and x.get("diffusers")
        and (
            x.get("ratio_without_noise_draw") is not None
            or x.get("ratio_pipeline_without_noise_draw") is not None
        )
    ]
    if not floors:
        return ""
    return (
        " With the draw counted, a sampler that added nothing around it would still measure "
        + ", ".join(floors)
        + " against diffusers here: the same torch.randn call is most of both sides' step."
    )


def _bar_plot(rows: list[dict[str, Any]], png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    frameworks = [
        fw
        for fw in ("ddkit", "ddkit-pipeline", "guided-diffusion", "diffusers")
        if any(fw in r for r in rows)
    ]
    fig, ax = plt.subplots(figsize=(max(9.0, 0.9 * len(rows)), 3.8))
    width = 0.8 / len(frameworks)
    for i, fw in enumerate(frameworks):
        offset = (i - (len(frameworks) - 1) / 2) * width
        xs = [j + offset for j, row in enumerate(rows) if row.get(fw) is not None]
        ys = [row[fw] for row in rows if row.get(fw) is not None]
        ax.bar(xs, ys, width, label="ddkit Pipeline.sample" if fw == "ddkit-pipeline" else fw)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [row["sampler"] for row in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("µs overhead per model evaluation (log)")
    ax.set_title("Sampling-loop overhead per step (lower is better)", pad=22)
    ax.legend(fontsize=8, ncol=len(frameworks), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def render_import_cost(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, float | None]:
    rows = r["rows"]
    text = f"Fresh interpreters, interleaved, median of {r.get('repeats')} each.\n\n" + table(
        ["command", "median wall time (s)", "ratio to `import torch`"],
        ([f"`{x['command']}`", fmt(x["median_s"], 3), fmt(x["ratio_to_torch"], 2, "×")] for x in rows),
    )
    plugins = [x for x in rows if "plugins" in x["command"]]
    return text, plugins[0]["ratio_to_torch"] if plugins else None


def render_quality(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, float | None]:
    results = r.get("results", [])
    nfes = sorted({x["target_nfe"] for x in results})
    keys: list[tuple[str, str]] = []
    for x in results:
        if (x["framework"], x["sampler"]) not in keys:
            keys.append((x["framework"], x["sampler"]))
    by = {(x["framework"], x["sampler"], x["target_nfe"]): x for x in results}
    rows = []
    for fw, name in keys:
        cells = []
        for n in nfes:
            hit = by.get((fw, name, n))
            cells.append(
                "—" if hit is None else _sw(hit["sw"]) + ("" if hit["nfe"] == n else f" ({hit['nfe']})")
            )
        rows.append([fw, name, *cells])
    text = [
        f"Sliced Wasserstein distance to the true distribution (lower is better; {r.get('samples')} samples, "
        f"{r.get('schedule')} schedule; the floor, two independent data draws, is {fmt(r.get('floor'), 4)}). "
        "Columns are the model-evaluation budget; a number in brackets is the NFE actually used where a "
        "sampler cannot hit the budget exactly.",
        "",
        table(
            ["framework", "sampler", *(f"NFE {n}" for n in nfes)], rows, ["---", "---"] + ["---:"] * len(nfes)
        ),
    ]
    png = files / "quality_vs_nfe.png"
    if png.exists():
        text += ["", f"![sample quality against NFE]({_rel(png, out_dir)})"]
    if r.get("exact"):
        text += ["", render_quality_exact(r["exact"])]
    return "\n".join(text), None


def render_quality_exact(e: dict[str, Any]) -> str:
    """The exact-denoiser part of quality_vs_nfe: per schedule, every framework's samplers, best ratios."""

    def sw4(value: float) -> str:
        return f"{value:.4f}" if math.isfinite(value) and value < 1 else _sw(value)

    rows_in = e.get("results", [])
    nfes = sorted({x["nfe"] for x in rows_in})
    out = [
        "#### Exact denoiser (8-Gaussian ring, closed-form ε, no training)",
        "",
        f"Sliced Wasserstein distance to the exact probability-flow solution from the same noise "
        f"({e.get('samples')} samples; lower is better). A deterministic sampler's number is its "
        "discretisation error alone; a stochastic one's cannot go below the floor (the distance between "
        "the exact solutions of two independent noise draws). ``ddkit best`` is each sampler at the "
        "settings (spacing, lambda_min) that scored best on a separate smaller draw.",
    ]
    for schedule in sorted({x["schedule"] for x in rows_in}):
        here = [x for x in rows_in if x["schedule"] == schedule]
        keys: list[tuple[str, str]] = []
        for x in here:
            if (x["framework"], x["sampler"]) not in keys:
                keys.append((x["framework"], x["sampler"]))
        by = {(x["framework"], x["sampler"], x["nfe"]): x for x in here}
        rows = []
        for fw, name in keys:
            cells = ["—" if (fw, name, n) not in by else sw4(by[(fw, name, n)]["sw"]) for n in nfes]
            best = "; ".join(
                f"{n}: {by[(fw, name, n)]['settings']}"
                for n in nfes
                if (fw, name, n) in by and by[(fw, name, n)].get("settings")
            )
            rows.append([fw, name, *cells, best])
        floor = e.get("floors", {}).get(schedule)
        out += ["", f"{schedule} schedule (stochastic floor {fmt(floor, 4)}):", ""]
        out.append(
            table(
                ["framework", "sampler", *(f"NFE {n}" for n in nfes), "best settings"],
                rows,
                ["---", "---"] + ["---:"] * len(nfes) + ["---"],
            )
        )
        if floor is not None:
            out.append("\n" + defaults_check(here, schedule, floor))
        for n in nfes:
            at = [x for x in here if x["nfe"] == n]
            ours = [x for x in at if x["framework"].startswith("ddkit")]
            peers = [x for x in at if not x["framework"].startswith("ddkit")]
            if ours and peers:
                a, b = min(ours, key=lambda x: x["sw"]), min(peers, key=lambda x: x["sw"])
                out.append(
                    f"\nNFE {n}: ddkit's best, {a['sampler']} ({a.get('settings') or 'defaults'}), "
                    f"{sw4(a['sw'])}; best peer, {b['framework']} {b['sampler']}, {sw4(b['sw'])}: "
                    f"ratio {a['sw'] / b['sw']:.2f}."
                )
    return "\n".join(out)


#: The exact-denoiser rows of stochastic samplers (their score cannot go below the floor).
STOCHASTIC = ("ddpm", "euler-ancestral", "dpm-solver++ sde", "dpm-solver++ sde order=3")


def defaults_check(rows: list[dict[str, Any]], schedule: str, floor: float) -> str:
    """Issue 19's target: each ddkit sampler at its defaults within 2× of its best settings, NFE ≥ 10.

    A stochastic sampler is held to 2× the larger of its best and the floor, which no draw of
    its own noise can beat.
    """
    worst: tuple[float, str] = (0.0, "")
    for r in rows:
        if r["schedule"] != schedule or r["framework"] != "ddkit" or r["nfe"] < 10:
            continue
        best = next(
            b["sw"]
            for b in rows
            if (b["schedule"], b["framework"], b["sampler"], b["nfe"])
            == (schedule, "ddkit best", r["sampler"], r["nfe"])
        )
        bar = max(best, floor) if r["sampler"] in STOCHASTIC else best
        ratio = r["sw"] / bar
        if ratio > worst[0]:
            worst = (ratio, f"{r['sampler']} at NFE {r['nfe']}: {r['sw']:.4f} against {bar:.4f}")
    met = "met" if worst[0] <= 2.0 else "NOT met"
    return (
        f"Defaults against each sampler's best settings at NFE ≥ 10 (target ≤ 2×; stochastic samplers "
        f"against the larger of their best and the floor): {met}; the largest ratio is {worst[0]:.2f} "
        f"({worst[1]})."
    )


def _sw(value: float) -> str:
    """A sliced Wasserstein distance: 3 decimals, or 3 significant digits once a sampler has diverged."""
    if not math.isfinite(value):
        return "inf" if value > 0 else "nan"
    return f"{value:.3f}" if value < 100 else f"{value:.3g}"


def render_guidance(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, Any]:
    by = {(x["method"], x["scale"]): x for x in r["rows"]}
    scales = sorted({x["scale"] for x in r["rows"]})
    rows = []
    for s in scales:
        cells: list[str] = [fmt(s, 1)]
        for method in ("classifier-free", "classifier"):
            x = by.get((method, s))
            cells += ["—", "—"] if x is None else [fmt(x["accuracy"], 3), fmt(x["sliced_w2"], 4)]
        rows.append(cells)
    text = [
        f"Toy `{r['toy']}` {r['toy_params']} ({r['num_classes']} overlapping classes). A class-conditional "
        f"`mlp` trained {r['train_steps']} steps with ddkit.Trainer (condition dropout 0.15); samples by "
        f"{r['sampler']}, {r['samples']} per scale for balanced labels from one x_T. Classifier-free "
        "guidance uses the conditional network; classifier guidance steers the same network with its "
        "null label (unconditional) by a noisy-data classifier, so both are unconditional at 0 and "
        "conditional at 1. "
        f"Accuracy is judged by a clean-data classifier (its accuracy on true data: "
        f"{fmt(r['clean_classifier_accuracy'], 3)}; the Bayes classifier's: {fmt(r['bayes_accuracy'], 3)}, "
        "which is what exact conditional sampling scores). Sliced W2 is to the true (unguided) distribution; "
        f"two true draws differ by {fmt(r['true_data_sliced_w2'], 4)}.",
        "",
        table(
            [
                "scale",
                "CFG accuracy",
                "CFG sliced W2",
                "classifier-guidance accuracy",
                "classifier-guidance sliced W2",
            ],
            rows,
        ),
    ]
    png = files / "guidance_accuracy.png"
    if png.exists():
        text += ["", f"![guidance accuracy against scale]({_rel(png, out_dir)})"]
    head = {}
    for s in (1.0, 3.0):
        for method, short in (("classifier-free", "CFG"), ("classifier", "classifier guidance")):
            if (method, s) in by:
                head[f"{short} at scale {s:g}"] = by[(method, s)]["accuracy"]
    return "\n".join(text), head


def render_attention(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, Any]:
    model = r.get("model", {})
    rows = []
    method = None
    for x in r["rows"]:
        if x.get("status") != "ok":
            rows.append([x["backend"], f"{x.get('status')}: {x.get('reason', '')}", "", "", ""])
            continue
        method = x.get("method", method)
        rows.append(
            [
                x["backend"],
                fmt(x["peak_mib"], 1),
                fmt(x.get("peak_ratio_to_sdpa"), 2, "×"),
                fmt(x["seconds_per_step"] * 1e3, 1),
                fmt(x.get("time_ratio_to_sdpa"), 2, "×"),
            ]
        )
    text = (
        f"`adm-unet` at 64×64, num_channels {model.get('num_channels')}, num_res_blocks "
        f"{model.get('num_res_blocks')}, attention at {model.get('attention_resolutions')} (head channels "
        f"{model.get('num_head_channels')}); batch {r.get('batch')}, {r.get('sampler')}, {r.get('dtype')}, "
        f"device {r.get('device')}; each backend in a fresh process. Memory: {method}.\n\n"
        + table(
            [
                "attention backend",
                "peak memory of sampling (MiB)",
                "ratio to sdpa",
                "time per step (ms)",
                "ratio to sdpa",
            ],
            rows,
        )
    )
    ok = {x["backend"]: x for x in r["rows"] if x.get("status") == "ok"}
    head = {
        f"{b} / sdpa": x["peak_ratio_to_sdpa"]
        for b, x in ok.items()
        if b != "sdpa" and x.get("peak_ratio_to_sdpa")
    }
    return text, head


def render_train_step(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, float | None]:
    net = r.get("network", {})
    dd, gd = r.get("ddkit", {}), r.get("guided_diffusion", {})

    def cells(name: str, x: dict[str, Any]) -> list[str]:
        spp = fmt(x.get("samples_per_sec"), 2)
        return [name, fmt(x.get("sec_per_step"), 3), fmt(x.get("steps_per_sec"), 3), spp]

    text = (
        f"One full step (forward, loss, backward, optimizer, EMA, resampler) on the same `adm-unet` "
        f"({fmt(net.get('parameters'))} parameters, {net.get('image_size')}×{net.get('image_size')}, "
        f"num_channels {net.get('num_channels')}), batch {r.get('batch_size')}, {r.get('device')}, precision "
        f"{r.get('precision')} (guided-diffusion: {gd.get('precision', '?')}), median of {r.get('rounds')} "
        "alternating rounds.\n\n"
        + table(
            ["trainer", "s / step", "steps / s", "samples / s"],
            [
                cells("ddkit.Trainer", dd),
                cells("guided-diffusion TrainLoop", gd),
                ["**ddkit / guided-diffusion**", "", f"**{fmt(r.get('ratio'), 2, '×')}**", ""],
            ],
        )
    )
    return text, r.get("ratio")


def render_sampling_speed(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, Any]:
    f = r.get("flags", {})

    def diff(x: dict[str, Any], key: str) -> str:
        value = x.get(key)
        return f"{value:.1e}" if isinstance(value, (int, float)) else "—"

    rows = [
        [
            x["config"],
            fmt(x["steps_per_s"], 2),
            fmt(x["images_per_s"], 2),
            diff(x, "forward_max_abs_diff_to_gd_fp32"),
            diff(x, "sample_max_abs_diff_to_gd_fp32" if "forward_scale" in x else "max_abs_diff_to_gd_fp32"),
        ]
        for x in r["rows"]
    ]
    rows += [[f"**{k}**", f"**{fmt(v, 2, '×')}**", "", "", ""] for k, v in r.get("ratios", {}).items()]
    scale = next((x["forward_scale"] for x in r["rows"] if "forward_scale" in x), None)
    text = (
        f"ADM U-Net 64×64 (num_channels {f.get('num_channels')}, num_res_blocks {f.get('num_res_blocks')}, "
        f"attention at {f.get('attention_resolutions')}, learned sigma), identical (random) weights; batch "
        f"{r.get('batch')}; {r.get('sampler')}; ddkit attention `{r.get('attention_backend')}`; median of "
        f"{r.get('reps')} interleaved rounds. The last two columns check agreement with guided-diffusion "
        f"fp32: one network output at t = 500 (largest magnitude {fmt(scale, 2)}), and the final samples, "
        "which random weights make chaotic, so reduced precision moves them far more.\n\n"
        + table(
            [
                "configuration",
                "steps / s",
                "images / s",
                "one forward: max abs diff",
                "samples: max abs diff",
            ],
            rows,
        )
    )
    ratios = r.get("ratios", {})
    main = ratios.get(
        "ddkit bf16 (autocast) / guided-diffusion fp16", ratios.get("ddkit fp32 / guided-diffusion fp32")
    )
    loops = {k: v for k, v in ratios.items() if "diffusers" in k}
    if not loops:
        return text, main
    head = {"ddkit / guided-diffusion (ddim)": main, **loops}
    return text, head


def render_unet(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, Any]:
    if "forward" not in r or "train" not in r:
        ratios = find_ratios(r)
        return generic(r), (min(ratios.values()) if ratios else None)
    cfg = r.get("config", {})
    fwd, train = r["forward"], r["train"]
    diff = r.get("max_abs_output_diff_vs_gd", {})
    rows = []
    for name in fwd:
        f, t = fwd[name], train.get(name, {})
        rows.append(
            [
                name,
                fmt(f.get("images_per_s"), 1),
                fmt(t.get("images_per_s"), 2),
                fmt(f.get("speedup_vs_gd"), 2, "×"),
                fmt(t.get("speedup_vs_gd"), 2, "×"),
                fmt(f.get("speedup_vs_gd_cpu_time"), 2, "×"),
                fmt(t.get("speedup_vs_gd_cpu_time"), 2, "×"),
                f"{diff[name]:.1e}" if isinstance(diff.get(name), (int, float)) else "—",
            ]
        )
    rival = any("speedup_vs_diffusers" in x for x in (*fwd.values(), *train.values()))
    if rival:  # ddkit against diffusers' UNet2DModel of the same shape (its own weights)
        for row, name in zip(rows, fwd):
            f, t = fwd[name], train.get(name, {})
            row[3:3] = [
                fmt(f.get("speedup_vs_diffusers"), 2, "×"),
                fmt(t.get("speedup_vs_diffusers"), 2, "×"),
            ]
    text = (
        f"ADM U-Net {cfg.get('image_size')}×{cfg.get('image_size')}, num_channels {cfg.get('num_channels')}, "
        f"channel_mult {cfg.get('channel_mult')}, num_res_blocks {cfg.get('num_res_blocks')}, attention at "
        f"{cfg.get('attention_resolutions')}; identical weights; batch {cfg.get('batch')}, device "
        f"{cfg.get('device')}, {cfg.get('dtype')}"
        + (f", {cfg.get('threads')} threads" if cfg.get("device") == "cpu" else "")
        + f"; {cfg.get('rounds')} interleaved forward rounds (training: half). A training step is forward, "
        "MSE, backward and Adam. Ratios are medians of per-round paired ratios; the CPU-time ratios are "
        "less sensitive to other processes on a shared machine."
        + (
            " diffusers' `UNet2DModel` is built to the same shape (its parameter count: "
            f"{fmt((r.get('parameters') or {}).get('diffusers UNet2DModel'))}, ddkit's "
            f"{fmt((r.get('parameters') or {}).get('ddkit'))}) with its own weights and runs in ddkit's "
            "precision; the × diffusers columns are ddkit's speed over it."
            if rival
            else ""
        )
        + "\n\n"
        + table(
            [
                "contender",
                "forward img/s",
                "train img/s",
                *(["forward × diffusers", "train × diffusers"] if rival else []),
                "forward × gd",
                "train × gd",
                "forward × gd (CPU time)",
                "train × gd (CPU time)",
                "max abs output diff to gd",
            ],
            rows,
        )
    )
    text += render_unet_breakdown(r.get("train_breakdown") or {}, r.get("compile_s") or {})
    ours = fwd.get("ddkit", {}), train.get("ddkit", {})
    head = {"forward": ours[0].get("speedup_vs_gd"), "training": ours[1].get("speedup_vs_gd")}
    if rival:
        head["forward / diffusers"] = ours[0].get("speedup_vs_diffusers")
        head["training / diffusers"] = ours[1].get("speedup_vs_diffusers")
    return text, head


def render_unet_breakdown(breakdown: dict[str, Any], compile_s: dict[str, Any]) -> str:
    """Where a training step's time goes (profiled), and what compiling cost."""
    text = ""
    gd = breakdown.get("guided-diffusion")
    if gd:
        gd_step = gd["conv_ms"] + gd["other_ms"]
        rows = [
            [
                name,
                fmt(b["conv_ms"], 0),
                fmt(b["other_ms"], 0),
                f"{b['conv_ms'] / (b['conv_ms'] + b['other_ms']):.0%}",
                fmt(gd_step / b["conv_ms"], 2, "×"),
            ]
            for name, b in breakdown.items()
        ]
        text += (
            "\n\nWhere a training step's time goes (3 profiled steps each; the profiler inflates the "
            "many small ops, so read shares, not timings). Convolutions are oneDNN's kernels for both "
            "networks (guided-diffusion's attention projections are 1×1 convolutions, ddkit's are "
            "matrix products); the last column is the ratio to guided-diffusion's step that a network "
            "would reach if everything but its convolutions were free.\n\n"
            + table(
                ["contender", "convolutions ms/step", "rest ms/step", "convolution share",
                 "gd step / convolutions"],
                rows,
            )
        )  # fmt: skip
    for name, seconds in compile_s.items():
        text += (
            f"\n\n`{name}` compiled in {seconds:.0f} s (its first forward and training step, with "
            "Inductor's on-disk cache as the run found it; not in the timings)."
        )
    return text


# -- sections whose summary rows carry their own targets -----------------------------------


class Verdict(NamedTuple):
    """One summary row a renderer judged itself: ``met`` is None where the figure has no target."""

    figure: str
    target: str
    measured: str
    met: bool | None


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _range(values: Sequence[float], digits: int = 2, unit: str = "×") -> str:
    """``lo–hi`` of ``values`` (one value when they agree to the digits shown)."""
    lo, hi = fmt(min(values), digits), fmt(max(values), digits)
    return f"{lo}{unit}" if lo == hi else f"{lo}–{hi}{unit}"


def _options(cfg: dict[str, Any]) -> str:
    """A registry config as one phrase: ``ddim, steps 20, eta 1.0``."""
    rest = ", ".join(f"{k} {v}" for k, v in cfg.items() if k != "name")
    return f"{cfg.get('name', '?')}" + (f", {rest}" if rest else "")


#: Issue 18's targets for the RL calls: (result key, what, target text, test).
RL_COST_TARGETS: tuple[tuple[str, str, str, Callable[[float], bool]], ...] = (
    ("log_prob_over_forward", "`transition_log_prob` / one model forward", "≤ 1.2×", lambda v: v <= 1.2),
    ("rollout_over_sample", "`rollout` / `sample` per step", "≤ 1.1×", lambda v: v <= 1.1),
)
#: Issue 18's "clear, stated margin" for the reward: the rise over this many standard deviations of the seeds.
RL_MARGIN_SD = 3.0


def render_rl_finetune(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, list[Verdict]]:
    """Section 8: reward before and after fine-tuning per example, and the cost of the RL calls.

    The reward must rise by a clear, stated margin (issue 18): here more than ``RL_MARGIN_SD``
    standard deviations of the fine-tuned seeds, so a rise that one seed's luck could explain fails.
    """
    examples = [(name, r[name]) for name in ("ddpo", "grpo") if name in r]
    verdicts: list[Verdict] = []
    rows = []
    for name, x in examples:
        cfg = x.get("config", {})
        settings = x.get("settings", {})
        batch = (
            f"{settings['groups']} groups of {settings['group']}"
            if "groups" in settings
            else f"batch {settings.get('batch', '?')}"
        )
        model = cfg.get("model", {}).get("name", "?")
        param = cfg.get("parameterization", {}).get("name", "?")
        schedule = cfg.get("schedule", {}).get("name", "?")
        label = (
            f"{name.upper()} (`{Path(x.get('example', '?')).name}`, {param} `{model}` on {schedule}, {batch})"
        )
        rise, spread = x["after_mean"] - x["before"], x["after_std"]
        ok = rise > RL_MARGIN_SD * spread and rise > 0
        rows.append(
            [
                label,
                _options(cfg.get("sampler", {})) if cfg else "—",
                fmt(x["before"], 3),
                f"{fmt(x['after_mean'], 3)} ± {fmt(spread, 3)}",
                f"{rise:+.2f}",
                _met(ok),
                fmt(x.get("train_cpu_s"), 1),
            ]
        )
        verdicts.append(
            Verdict(
                f"RL fine-tuning, {name.upper()}: reward rise over {x['seeds']} seeds",
                f"> {RL_MARGIN_SD:g} × their standard deviation",
                f"{rise:+.2f} (sd {fmt(spread, 3)})",
                ok,
            )
        )
    first = examples[0][1] if examples else {}
    text = [
        f"The examples of `examples/rl/` to a fixed budget ({first.get('iterations')} iterations; one base "
        f"model per example, trained {first.get('pretrain_steps', '?')} steps with seed 0, fine-tuned with "
        f"seeds 0–{first.get('seeds', 1) - 1}). Reward: minus the distance to the target mode (of eight on "
        f"a circle of radius 2), mean of {first.get('reward_samples', '?')} fresh samples; ± is the standard "
        f"deviation over the seeds. Target (issue 18): the reward rises by more than {RL_MARGIN_SD:g} of "
        "those standard deviations.",
        "",
        table(
            ["example", "sampler", "reward before", "reward after", "rise", "met", "CPU s per run"],
            rows,
            ["---", "---", "---:", "---:", "---:", "---", "---:"],
        ),
    ]
    costs = r.get("cost", [])
    if costs:
        header = ["batch"]
        for _, what, target, _ in RL_COST_TARGETS:
            header += [f"{what} (target {target})", "met"]
        cost_rows = []
        for c in costs:
            cells = [str(c["batch"])]
            parts = (
                (c["log_prob_over_forward"], c["transition_log_prob_us"], c["forward_us"]),
                (c["rollout_over_sample"], c["rollout_us_per_step"], c["sample_us_per_step"]),
            )
            for (_, what, target, test), (ratio, ours, base) in zip(RL_COST_TARGETS, parts):
                cells += [f"{fmt(ratio, 2, '×')} ({ours:.0f} / {base:.0f} µs)", _met(test(ratio))]
                verdicts.append(
                    Verdict(f"RL calls, {what}, batch {c['batch']}", target, fmt(ratio, 2, "×"), test(ratio))
                )
            cost_rows.append(cells)
        text += [
            "",
            f"Cost of the RL calls (median of {r.get('reps', '?')} interleaved repetitions; clock: "
            f"{r.get('clock', 'CPU time')}; the DDPO example's network, {r.get('threads', 1)} thread):",
            "",
            table(header, cost_rows, ["---:", "---:", "---", "---:", "---"]),
            "",
            "What `transition_log_prob` adds to the forward is the parameterization's read-out, the "
            "transition mean and the Gaussian log-density; the rollout adds the log-density per step and "
            "the stacking of the states. On a shared machine these ratios move between runs by more than "
            "the rewards do (they are timings; the rewards are not): read them with the load average in "
            "the footer.",
        ]
    return "\n".join(text), verdicts


def _flow_and_eps(r: dict[str, Any], names: Sequence[str]) -> tuple[str | None, str | None]:
    """The velocity path and the ε path of a quality_paths result (by their recorded configs, else names)."""
    paths = r.get("paths") or {}

    def find(param: str, word: str) -> str | None:
        by_cfg = [n for n in names if paths.get(n, {}).get("parameterization", {}).get("name") == param]
        return next(iter(by_cfg or [n for n in names if word in n]), None)

    return find("velocity", "flow"), find("epsilon", "ε")


#: Issue 19's target for the flow path: its best at NFE 10 within this factor of the ε model's best.
FLOW_OVER_EPS = 1.2


def render_quality_paths(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, list[Verdict]]:
    """Every sampler's distance to data on every trained Gaussian path; bold: the best of a column."""
    rows_in = r["rows"]
    names: list[str] = []
    samplers: list[str] = []
    for x in rows_in:
        names += [] if x["path"] in names else [x["path"]]
        samplers += [] if x["sampler"] in samplers else [x["sampler"]]
    nfes = sorted({x["nfe"] for x in rows_in})
    by = {(x["path"], x["sampler"], x["nfe"]): x for x in rows_in}
    columns = [(p, n) for p in names for n in nfes]
    best = {
        col: min(
            (by[(col[0], s, col[1])]["sw"] for s in samplers if (col[0], s, col[1]) in by), default=math.inf
        )
        for col in columns
    }

    def cell(s: str, col: tuple[str, int]) -> str:
        x = by.get((col[0], s, col[1]))
        if x is None:
            return "—"
        if x.get("error"):
            return "error"
        text = _sw(x["sw"])
        return f"**{text}**" if x["sw"] == best[col] else text

    body = table(
        ["sampler", *(f"{p} NFE {n}" for p, n in columns)],
        ([s, *(cell(s, col) for col in columns)] for s in sorted(samplers)),
    )
    paths = r.get("paths") or {}
    trained = "; ".join(
        f"{name}: `{c['schedule']['name']}`, {c['parameterization']['name']} model, "
        f"`{c['resampler']['name']}` times"
        for name, c in paths.items()
    )
    text = [
        f"The same network (ddkit's `mlp`, dim 2) trained by `ddkit.Trainer` for {r.get('train_steps')} steps"
        + (f" (batch {r['batch_size']}, lr {r['lr']:g})" if "batch_size" in r else "")
        + " on the 8-Gaussian ring once per path"
        + (f" ({trained})" if trained else "")
        + f"; every sampler at its defaults, {r.get('samples')} samples from the same noise; sliced "
        "Wasserstein distance to fresh data (lower is better; floor, two data samples: "
        f"{fmt(r.get('floor'), 3)}). Sample quality, not timing. Bold: the best of a column.",
        "",
        body,
        "",
    ]
    verdicts: list[Verdict] = []
    flow, eps = _flow_and_eps(r, names)
    at = 10 if 10 in nfes else nfes[-1]
    if flow and eps:

        def winner(path: str) -> dict[str, Any]:
            return min((x for x in rows_in if x["path"] == path and x["nfe"] == at), key=lambda x: x["sw"])

        f, e = winner(flow), winner(eps)
        ratio = f["sw"] / e["sw"]
        ok = ratio <= FLOW_OVER_EPS
        text.append(
            f"- **Target: the flow model's best at NFE {at} within {FLOW_OVER_EPS:g}× of the ε model's "
            f"best at NFE {at}: {fmt(ratio, 2, '×')}, {'met' if ok else 'NOT met'}** ({_sw(f['sw'])}, "
            f"{f['sampler']}, against {_sw(e['sw'])}, {e['sampler']})."
        )
        verdicts.append(
            Verdict(
                f"Sample quality on every Gaussian path: flow best / ε best at NFE {at}",
                f"≤ {FLOW_OVER_EPS:g}× the ε model",
                fmt(ratio, 2, "×"),
                ok,
            )
        )
    finite = [x for x in rows_in if not x.get("error") and math.isfinite(x["sw"])]
    failed = [x for x in rows_in if x.get("error") or not math.isfinite(x["sw"])]
    if finite:
        worst = max(finite, key=lambda x: x["sw"])
        text.append(
            f"- The worst finite cell is {_sw(worst['sw'])} ({worst['sampler']}, {worst['path']}, NFE "
            f"{worst['nfe']})."
        )
    if failed:
        text.append(
            "- Failed or not finite: "
            + "; ".join(
                f"{x['sampler']} on {x['path']} at NFE {x['nfe']} ({x.get('error') or _sw(x['sw'])})"
                for x in failed
            )
            + "."
        )
    else:
        text.append("- No sampler failed or returned a non-finite sample on any path.")
    return "\n".join(text), verdicts


def render_fitted_spacing(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, list[Verdict]]:
    """``ddkit.fit_spacing``'s grid against each sampler's default on held-out noise, with ranges per NFE."""
    rows_in = r["rows"]

    def cell(x: dict[str, Any], metric: str) -> str:
        if f"default_{metric}" not in x:
            return "–"
        d, f = x[f"default_{metric}"], x[f"fitted_{metric}"]
        fitted = f"**{f:.4f}**" if f < d else f"{f:.4f}"
        return f"{d:.4f} → {fitted} ({f / d:.2f}×)"

    rows = [
        [
            x["model"],
            x["sampler"],
            x["nfe"],
            cell(x, "teacher"),
            cell(x, "ref"),
            cell(x, "data"),
            fmt(x["fit_s"], 1),
        ]
        for x in rows_in
    ]
    fit = r.get("fit_defaults", {})
    floors = r.get("floors", {})
    text = [
        "`ddkit.fit_spacing(pipe, nfe, sampler=name)` at its defaults "
        f"({fit.get('samples', 256)} fitting x_T, seed {fit.get('seed', 0)}, teacher DPM-Solver++(3M) with "
        f"{fit.get('teacher_steps', 200)} log-SNR steps from the sampler's own start, about 10 × NFE² extra "
        "model evaluations) against the sampler's default grid at the same NFE, both evaluated on a "
        f"**held-out** batch ({r.get('samples')} x_T). Sliced "
        "Wasserstein distance (lower is better) to the teacher's output from the same held-out x_T (what the "
        "fit aims at), to the exact probability-flow solution over the whole chain (exact ring only) and to "
        "fresh data (floors, two data samples: "
        + ", ".join(f"{k} {fmt(v, 3)}" for k, v in floors.items())
        + "). Models: the ring's closed-form ε (`_toy.ExactRing`) and the README's example and its "
        f"rectified-flow variant, each trained by `ddkit.Trainer` for {r.get('iters')} steps. Sample "
        "quality, not timing. Bold: fitted better than default.",
        "",
        table(
            [
                "model",
                "sampler",
                "NFE",
                "to teacher: default → fitted",
                "to exact ODE: default → fitted",
                "to data: default → fitted",
                "fit (s)",
            ],
            rows,
            ["---", "---", "---:", "---", "---", "---", "---:"],
        ),
        "",
    ]
    verdicts: list[Verdict] = []

    def ratios(xs: Iterable[dict[str, Any]], metric: str) -> list[float]:
        return [x[f"fitted_{metric}"] / x[f"default_{metric}"] for x in xs if f"default_{metric}" in x]

    for nfe in sorted({x["nfe"] for x in rows_in}):
        here = [x for x in rows_in if x["nfe"] == nfe]
        per = "; ".join(
            f"{s} {_range(ratios([x for x in here if x['sampler'] == s], 'teacher'))}"
            for s in dict.fromkeys(x["sampler"] for x in here)
        )
        line = (
            f"- **NFE {nfe}:** fitted / default distance to the teacher {_range(ratios(here, 'teacher'))} "
            f"({per})"
        )
        if ratios(here, "ref"):
            line += f"; to the exact ODE solution {_range(ratios(here, 'ref'))}"
        line += f"; to data {_range(ratios(here, 'data'))}."
        text.append(line)
        worst = max(ratios(here, "teacher"))
        verdicts.append(
            Verdict(
                f"Fitted time grids, fitted / default distance to the teacher (held-out), NFE {nfe}: worst",
                "(no target)",
                fmt(worst, 2, "×"),
                None,
            )
        )
    losses = [x for x in rows_in if x["fitted_teacher"] >= x["default_teacher"]]
    if losses:
        text.append(
            "- **Where the fitted grid is not closer to the teacher on held-out noise:** "
            + "; ".join(
                f"{x['sampler']} on {x['model']} at NFE {x['nfe']}, {cell(x, 'teacher')}" for x in losses
            )
            + ". A grid is fitted on a few hundred points: compare on your own held-out noise before "
            "keeping it."
        )
    else:
        text.append(
            "- The fitted grid is closer to the teacher than the default for every model, sampler and NFE."
        )
    exact = [x["fit_s"] for x in rows_in if "default_ref" in x]
    trained = [x["fit_s"] for x in rows_in if "default_ref" not in x]
    cost = [
        f"{_range(v, 1, ' s')} on the {what}"
        for what, v in (("exact ring", exact), ("trained toys", trained))
        if v
    ]
    if cost:
        text.append(
            f"- Fitting costs {' and '.join(cost)} ({r.get('threads', 1)} thread)"
            + (f"; the whole run took {r['total_s']:.0f} s." if r.get("total_s") is not None else ".")
        )
    return "\n".join(text), verdicts


#: Issue 21's target: ddkit's per-step overhead on a diffusers UNet at most diffusers' own loop's.
DIFFUSERS_OVERHEAD = 1.0


def render_diffusers_overhead(r: dict[str, Any], files: Path, out_dir: Path) -> tuple[str, list[Verdict]]:
    """ddkit sampling a diffusers UNet against diffusers' pipeline loop: framework µs per step."""
    verdicts: list[Verdict] = []
    rows = []
    for x in r["rows"]:
        ratio = x["ratio_overhead"]
        ok = ratio <= DIFFUSERS_OVERHEAD
        rows.append(
            [
                x["sampler"],
                fmt(x["ddkit_step_us"], 0),
                fmt(x["diffusers_step_us"], 0),
                fmt(x["ddkit_overhead_us"], 0),
                fmt(x["diffusers_overhead_us"], 0),
                fmt(ratio, 2, "×"),
                _met(ok),
            ]
        )
        verdicts.append(
            Verdict(
                f"ddkit-diffusers overhead per step, ddkit / diffusers: {x['sampler']}",
                f"≤ {DIFFUSERS_OVERHEAD:.1f}× diffusers",
                fmt(ratio, 2, "×"),
                ok,
            )
        )
    text = (
        "Per-step overhead of ddkit sampling a diffusers `UNet2DModel` (loaded by "
        "`ddkit_diffusers.from_diffusers`, through the `diffusers` model wrapper) against diffusers' own "
        "pipeline loop (`set_timesteps`, UNet call, `scheduler.step`) with the same scheduler, weights, "
        "noise and timesteps. Both UNets are made near-free (their `forward` returns a precomputed output "
        f"of the same type; {fmt(r.get('unet_call_us'), 1)} µs per call, subtracted), so the figures are "
        f"framework time. Batch {r.get('shape')}, {r.get('steps')} steps, {r.get('threads', 1)} thread, "
        f"median of {r.get('reps')} interleaved runs; clock: {r.get('clock', 'thread CPU time')}; µs "
        f"per step. Target (issue 21): ddkit ≤ {DIFFUSERS_OVERHEAD:.1f}× diffusers.\n\n"
        + table(
            [
                "sampler",
                "ddkit step",
                "diffusers step",
                "ddkit overhead",
                "diffusers overhead",
                "ddkit / diffusers",
                "met",
            ],
            rows,
            ["---", "---:", "---:", "---:", "---:", "---:", "---"],
        )
    )
    return text, verdicts


RENDERERS: dict[str, Callable[[dict[str, Any], Path, Path], tuple[str, Any]]] = {
    "sampler_overhead": render_sampler_overhead,
    "unet_throughput": render_unet,
    "quality_vs_nfe": render_quality,
    "guidance_accuracy": render_guidance,
    "import_cost": render_import_cost,
    "attention_memory": render_attention,
    "train_step": render_train_step,
    "train_step_fp16": render_train_step,
    "sampling_speed": render_sampling_speed,
    "rl_finetune": render_rl_finetune,
    "quality_paths": render_quality_paths,
    "fitted_spacing": render_fitted_spacing,
    "diffusers_overhead": render_diffusers_overhead,
}

CPU_SECTIONS: tuple[tuple[str, str], ...] = (
    ("sampler_overhead", "Sampling-loop overhead per step"),
    ("unet_throughput", "U-Net forward and training throughput against guided-diffusion"),
    ("quality_vs_nfe", "Sample quality against model evaluations (2-D toy)"),
    ("guidance_accuracy", "Classifier-free and classifier guidance: accuracy against scale"),
    ("import_cost", "Import and discovery cost"),
    ("attention_memory", "Peak memory of sampling at 64×64 per attention backend"),
    ("train_step", "Training throughput of the whole Trainer step"),
    ("rl_finetune", "RL fine-tuning of 2-D toys (DDPO, GRPO with flow-sde)"),
    ("quality_paths", "Sample quality on every Gaussian path (2-D toy, trained)"),
    ("fitted_spacing", "Fitted time grids (2-D toys)"),
    ("diffusers_overhead", "ddkit-diffusers: sampling a diffusers UNet"),
)
GPU_SECTIONS: tuple[tuple[str, str], ...] = (
    ("unet_throughput", "U-Net throughput, ddkit bf16 against guided-diffusion fp16 and diffusers"),
    (
        "sampling_speed",
        "Sampling steps per second: ddim and dpm-solver++ against guided-diffusion and diffusers",
    ),
    ("attention_memory", "Peak memory of sampling per attention backend (xformers included where it runs)"),
    ("train_step", "Trainer step, bf16 (guided-diffusion fp32: it has no bf16)"),
    ("train_step_fp16", "Trainer step, fp16 on both"),
)


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


RUN_FILE = "_run.json"


def _read_run(folder: Path) -> dict[str, Any] | None:
    """What the last measuring run recorded: its command, start and end, and the machine."""
    try:
        run = json.loads((folder / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return run if isinstance(run, dict) and {"command", "started", "finished"} <= set(run) else None


def load(folder: Path) -> dict[str, Envelope]:
    found: dict[str, Envelope] = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            if path.name.startswith(("_", ".")):
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and "benchmark" in data:
                found[str(data["benchmark"])] = data
            elif isinstance(data, dict):  # a script's own JSON, not wrapped by run_all.py / gpu_suite.py
                found[path.stem] = _bare_envelope(path, data)
    return found


def _bare_envelope(path: Path, data: dict[str, Any]) -> Envelope:
    """A script's own ``--json`` as an envelope: with its command, date and machine where it records them.

    Scripts that call ``run_all.script_provenance`` record all three, so a benchmark run by hand
    renders like one run by run_all.py; older files say that nothing was recorded.
    """
    env: Envelope = {"benchmark": path.stem, "status": "ok", "result": data, "machine": {}, "adapted": []}
    if isinstance(data.get("command"), str) and isinstance(data.get("date"), str):
        machine = data.get("machine")
        wall = data.get("wall_s", data.get("total_s"))
        env.update(
            command=data["command"],
            date=data["date"],
            machine=machine if isinstance(machine, dict) else {},
            wall_s=wall if isinstance(wall, (int, float)) else None,
        )
    else:
        env["bare"] = f"{path.parent.name}/{path.name}"
    return env


def renderer(key: str) -> Callable[[dict[str, Any], Path, Path], tuple[str, Any]]:
    """The renderer for ``key``, or for the longest known prefix of it (``train_step_bf16``)."""
    if key in RENDERERS:
        return RENDERERS[key]
    prefixes = [k for k in RENDERERS if key.startswith(k + "_")]
    if prefixes:
        return RENDERERS[max(prefixes, key=len)]
    return lambda r, f, o: (generic(r), None)


def section(
    number: str, key: str, title: str, envs: dict[str, Envelope], files: Path, out_dir: Path
) -> tuple[str, Any]:
    env = envs.get(key)
    lines = [f"### {number} {title}", ""]
    head = None
    if env is None or env.get("status") != "ok" or env.get("result") is None:
        lines.append(not_measured(env, f"`{key}`"))
    else:
        try:
            text, head = renderer(key)(env["result"], files, out_dir)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a result of a changed shape
            text = (
                f"_This report could not read the result's shape ({type(exc).__name__}: {exc}); raw:_\n\n"
                + generic(env["result"])
            )
        lines += [text, "", provenance(env)]
    return "\n".join(lines), head


def render(results_dir: Path, out: Path, command: str, fresh: bool) -> str:
    """BENCHMARKS.md from ``results_dir``; ``command`` rendered it, ``fresh``: right after measuring."""
    cpu_dir, gpu_dir = results_dir / "cpu", results_dir / "gpu"
    cpu, gpu = load(cpu_dir), load(gpu_dir)
    out_dir = out.parent.resolve()
    run = _read_run(cpu_dir)
    machine = (run or {}).get("machine") or next(
        (e["machine"] for e in cpu.values() if e.get("machine")), machine_info()
    )
    dates = sorted(str(e["date"]) for e in cpu.values() if e.get("date"))
    packages = machine.get("packages", {})
    refs = [
        f"{d} {packages[d]}" for d in ("guided-diffusion-sdk", "diffusers", "k-diffusion") if d in packages
    ]
    if fresh and run:
        head = [f"- **Command:** {command}", f"- **Date:** {run['started']} to {run['finished']}"]
    elif run:
        head = [
            f"- **Command:** {run['command']} measured the CPU figures ({run['started']} to "
            f"{run['finished']}); {command} rendered this file ({now()})",
        ]
    else:
        span = f" (CPU measurements from {dates[0]} to {dates[-1]})" if dates else ""
        head = [f"- **Command:** {command}", f"- **Date:** {now()}{span}"]

    if run and dates and (dates[0] < run["started"] or dates[-1] > run["finished"]):
        head.append(
            f"- **Note:** some CPU results were measured outside that run (from {dates[0]} to "
            f"{dates[-1]}): each table's footer says when"
        )

    parts = [
        "# ddkit benchmarks",
        "",
        "<!-- Generated by bench/report.py: do not edit by hand; change bench/ and rerun the command "
        "below. -->",
        "",
        *head,
        f"- **Machine (CPU figures):** {machine_line(machine)}",
        f"- **References:** {', '.join(refs) or 'none installed'}"
        + ("" if "k-diffusion" in packages else " (k-diffusion not installed: see bench/README.md)"),
    ]
    env_gpu = gpu.get("environment")
    if env_gpu and env_gpu.get("status") == "ok" and env_gpu.get("dry"):
        parts.append(
            f"- **GPU figures:** none measured: `{_rel(gpu_dir, out_dir)}/*.json` hold a dry run on the CPU "
            f"({env_gpu.get('date')}, `bench/gpu_suite.py --dry`), which only shows that the suite runs"
        )
    elif env_gpu and env_gpu.get("status") == "ok":
        g = env_gpu["result"]
        parts.append(
            f"- **GPU figures:** measured {env_gpu.get('date')} on {machine_line(env_gpu['machine'], g)} by "
            f"`{env_gpu.get('command', 'bench/gpu_suite.py')}`, read from `{_rel(gpu_dir, out_dir)}/*.json`; "
            f"xformers: {g.get('xformers', {}).get('status', '?')}"
        )
    elif gpu:
        parts.append(
            f"- **GPU figures:** from `{_rel(gpu_dir, out_dir)}/*.json`, without an environment.json "
            "(written by bench/gpu_suite.py): the device is named in each table where the file records it"
        )
    else:
        parts.append(
            f"- **GPU figures:** none (`{_rel(gpu_dir, out_dir)}/*.json` absent; produce them on a CUDA "
            "machine with `python bench/gpu_suite.py --out bench/results/gpu`)"
        )
    parts += [
        "",
        "Machine-dependent figures are given as ratios to the reference measured in the same run, so they "
        "carry over between machines better than absolute times; absolute times are shown for context. "
        "On a shared or loaded machine (see the load average) absolute times are noisy; ratios less so.",
        "",
    ]

    cpu_text, heads = [], {}
    for i, (key, title) in enumerate(CPU_SECTIONS, 1):
        text, head = section(f"{i}.", key, title, cpu, cpu_dir, out_dir)
        cpu_text.append(text)
        heads[key] = head
    gpu_text, gpu_heads = [], {}
    gpu_titles: dict[str, str] = {}
    if gpu:
        sections = [s for s in GPU_SECTIONS if s[0] in gpu or not any(k.startswith(s[0] + "_") for k in gpu)]
        known = {key for key, _ in sections}
        base = dict(CPU_SECTIONS)
        for key in gpu:
            if key not in known and key != "environment":
                prefix = max((k for k in base if key.startswith(k + "_")), key=len, default=None)
                sections.append((key, f"{base[prefix]} (`{key}`)" if prefix else f"`{key}`"))
        for i, (key, title) in enumerate(sections, 1):
            text, head = section(f"G{i}.", key, title, gpu, gpu_dir, out_dir)
            gpu_text.append(text)
            gpu_heads[key] = head
            gpu_titles[key] = title

    parts += ["## Summary", "", _summary(heads, gpu_heads, gpu_titles, cpu, gpu), "", "## CPU", ""]
    parts += ["\n\n".join(cpu_text), ""]
    if gpu:
        parts += ["## GPU", "", GPU_CHECKLIST, ""]
        if env_gpu and env_gpu.get("status") == "ok" and env_gpu.get("dry"):
            parts += [
                f"**Dry run** on the CPU ({env_gpu.get('date')}, `bench/gpu_suite.py --dry`): every GPU "
                "benchmark ran end to end at tiny sizes; no GPU figure below is meaningful.",
                "",
            ]
        elif env_gpu and env_gpu.get("status") == "ok":
            g = env_gpu["result"]
            parts += [
                f"Measured on **{g.get('gpu', '?')}** ({g.get('gpu_memory_gib', '?')} GiB, compute "
                f"capability {g.get('capability', '?')}, CUDA {g.get('cuda', '?')}, torch "
                f"{g.get('torch', '?')}) on {env_gpu.get('date')}. "
                f"xformers: {g.get('xformers', {}).get('status', '?')}.",
                "",
            ]
        parts += ["\n\n".join(gpu_text), ""]
    return "\n".join(parts).rstrip() + "\n"


#: The CPU sections whose renderers judge their own figures (they return a list of Verdict).
JUDGED = ("sampler_overhead", "rl_finetune", "quality_paths", "fitted_spacing", "diffusers_overhead")


def _verdict_rows(heads: dict[str, Any], cpu: dict[str, Envelope]) -> list[list[str]]:
    """Summary rows of the sections in ``JUDGED``; one "not measured" row for each without a result."""
    titles = dict(CPU_SECTIONS)
    rows = []
    for key in JUDGED:
        env = cpu.get(key)
        value = heads.get(key)
        if not isinstance(value, list):
            status = "not measured" if env is None or env.get("status") != "ok" else "see section"
            rows.append([titles[key], "see section", "—", status])
            continue
        quick = " (quick run)" if env and env.get("quick") else ""
        for v in value:
            met = "" if v.met is None else "yes" if v.met else "**no**"
            rows.append([v.figure, v.target, v.measured + quick, met])
    return rows


def _summary(
    heads: dict[str, Any],
    gpu_heads: dict[str, Any],
    gpu_titles: dict[str, str],
    cpu: dict[str, Envelope],
    gpu: dict[str, Envelope],
) -> str:
    labels = {
        "unet_throughput": "U-Net throughput, ddkit / guided-diffusion (CPU, identical weights)",
        "import_cost": '`ddkit plugins` / `python -c "import torch"` wall time',
        "train_step": "Trainer step, ddkit / guided-diffusion TrainLoop (steps per second)",
    }
    rows = []
    for key, label in labels.items():
        value = heads.get(key)
        target, test = TARGETS[key]
        env = cpu.get(key)
        quick = " (quick run)" if env and env.get("quick") else ""
        values = value if isinstance(value, dict) else {"": value}
        for part, v in values.items():
            name = f"{label}: {part}" if part else label
            if v is None:
                status = "not measured" if env is None or env.get("status") != "ok" else "see section"
                rows.append([name, target, "—", status])
            else:
                rows.append([name, target, fmt(v, 2, "×") + quick, "yes" if test(v) else "**no**"])
    judged = _verdict_rows(heads, cpu)
    rows += [row for row in judged if row[1] != "(no target)"]
    info = (
        ("guidance_accuracy", "Accuracy of guided samples (Bayes accuracy on true data: {bayes})"),
        ("attention_memory", "Peak memory of sampling at 64×64 (CPU), backend"),
    )
    for key, label in info:
        value = heads.get(key)
        env = cpu.get(key)
        if not isinstance(value, dict) or env is None:
            continue
        result = env.get("result") or {}
        label = label.format(bayes=fmt(result.get("bayes_accuracy"), 3))
        quick = " (quick run)" if env.get("quick") else ""
        unit = "" if key == "guidance_accuracy" else "×"
        for part, v in value.items():
            rows.append([f"{label}: {part}", "(no target)", fmt(v, 2 if unit else 3, unit) + quick, ""])
    rows += [row for row in judged if row[1] == "(no target)"]
    gpu_labels = {
        "sampling_speed": "GPU sampling steps/s, ddkit bf16 / guided-diffusion fp16",
        "unet_throughput": "GPU U-Net throughput, ddkit bf16 / guided-diffusion fp16",
        "attention_memory": "GPU peak memory of sampling at 64×64, backend",
    }
    for key, value in gpu_heads.items():
        if value is None or key not in gpu:
            continue
        label = gpu_labels.get(key) or f"GPU {gpu_titles.get(key, key)}, ddkit / guided-diffusion"
        if isinstance(value, dict) and any("diffusers" in part for part in value):
            label = {
                "unet_throughput": "GPU U-Net throughput, ddkit bf16",
                "sampling_speed": "GPU sampling",
            }.get(key, label)
        values = value if isinstance(value, dict) else {"": value}
        dry = bool(gpu[key].get("dry"))
        quick = " (dry run)" if dry else " (quick run)" if gpu[key].get("quick") else ""
        for part, v in values.items():
            name = f"{label}: {part}" if part else label
            goal = GPU_TARGETS.get((key, part))
            target = goal[0] if goal else "(no target)"
            met = "" if goal is None or v is None or dry else "yes" if goal[1](v) else "**no**"
            rows.append([name, target, fmt(v, 2, "×") + quick if v is not None else "—", met])
    return table(["figure", "target", "measured", "met"], rows, ["---", "---", "---:", "---"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-run", action="store_true", help="render from the JSON files already there")
    parser.add_argument(
        "--quick", action="store_true", help="each benchmark's smoke mode (numbers meaningless)"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only these CPU benchmarks (others: as on disk)"
    )
    parser.add_argument(
        "--results", default=str(BENCH / "results"), help="folder with cpu/ and gpu/ subfolders"
    )
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the Markdown file to write")
    parser.add_argument(
        "--command", default=None, help="the command to record at the top (e.g. 'nox -s bench')"
    )
    args = parser.parse_args(argv)
    results = Path(args.results)
    out = Path(args.out)
    rest = list(sys.argv[1:] if argv is None else argv)
    if "--command" in rest:
        i = rest.index("--command")
        del rest[i : i + 2]
    invoked = shlex.join(["python", "bench/report.py", *rest])
    shown = f"`{args.command}` (runs `{invoked}`)" if args.command else f"`{invoked}`"
    if not args.no_run:
        run = {"command": shown, "started": now(), "machine": machine_info(), "quick": args.quick}
        run_all(results / "cpu", quick=args.quick, only=args.only)
        run["finished"] = now()
        (results / "cpu" / RUN_FILE).write_text(json.dumps(run, indent=2))
    text = render(results, out, shown, fresh=not args.no_run)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
