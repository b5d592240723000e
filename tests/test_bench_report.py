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
