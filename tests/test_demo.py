"""``ddkit demo --fast`` end to end, as CI runs it: train, sample, write a grid with a row per class."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ddkit.cli import demo

pytestmark = pytest.mark.slow


def test_fast_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "DDKIT_DEMO_FAST": "1", "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "ddkit", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    grid = Image.open(out / "grid.png")
    classes = demo.DEMO["data"]["num_classes"]
    # A row per class and 8 samples per row, 16 px images drawn 4x larger with 2 px gaps.
    assert grid.size == (8 * 66 + 2, classes * 66 + 2)
    assert (out / "pipeline" / "pipeline.toml").is_file()
    assert f"{out / 'grid.png'}: {8 * classes} generated images, one row per class" in done.stdout
    for k, shape in enumerate(("circle", "square", "triangle", "cross")):
        assert f"row {k + 1}: class {k}, {shape}" in done.stdout
    assert "fast mode" in done.stdout  # the environment variable switched it on
    assert "train:" in done.stderr  # the progress bar was shown


def test_the_fast_demo_is_the_same_pipeline_smaller() -> None:
    fast, full = demo.config(fast=True), demo.config(fast=False)
    assert set(fast) == set(full)
    assert fast["model"]["name"] == full["model"]["name"] == "adm-unet"
    assert fast["guidance"] == full["guidance"]
    assert fast["train"]["steps"] < full["train"]["steps"]
    assert full["train"]["cond_dropout"] == 0.1
    assert full["model"]["null_class"] is True
