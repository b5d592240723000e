"""``ddkit train`` then ``ddkit sample``, run as a user would: the installed command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

CONFIG = """
[schedule]
name = "cosine"
timesteps = 50

[parameterization]
name = "v"

[model]
name = "adm-unet"
image_size = 8
num_channels = 32
channel_mult = "1,2"
num_res_blocks = 1
attention_resolutions = "4"
class_cond = true
num_classes = 3
null_class = true

[sampler]
name = "ddim"
steps = 4

[[guidance]]
name = "classifier-free"
scale = 2.0

[train]
steps = 3
batch_size = 4
lr = 0.001
ema_rates = [0.99]
cond_dropout = 0.1
log_every = 1
seed = 0

[data]
name = "shapes"
image_size = 8
num_classes = 3
n = 32
"""


def ddkit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "ddkit", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.toml"
    config.write_text(CONFIG)
    out = root / "run"
    done = ddkit("train", config, "--out", out, "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"pipeline saved to {out / 'pipeline'}" in done.stdout
    return out


def test_train_writes_a_loadable_pipeline_and_checkpoints(trained: Path) -> None:
    assert (trained / "pipeline" / "pipeline.toml").is_file()
    assert (trained / "pipeline" / "ema_0.99.safetensors").is_file()
    assert (trained / "log.jsonl").is_file()
    assert any(p.name.startswith("ckpt-") for p in trained.iterdir())


def test_the_same_config_trains_to_the_same_weights(trained: Path, tmp_path: Path) -> None:
    # [train] seed fixes the initial weights too, not only the training draws.
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    again = tmp_path / "again"
    done = ddkit("train", config, "--out", again, "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr
    first = (trained / "pipeline" / "model.safetensors").read_bytes()
    second = (again / "pipeline" / "model.safetensors").read_bytes()
    assert first == second


def test_sample_writes_a_grid_and_an_npz(trained: Path) -> None:
    png, npz = trained.parent / "grid.png", trained.parent / "samples.npz"
    done = ddkit(
        "sample", trained, "--n", "6", "--out", png, "--npz", npz, "--batch-size", "4", "--no-progress"
    )
    assert done.returncode == 0, done.stderr
    arrays = np.load(npz)
    assert arrays["arr_0"].shape == (6, 8, 8, 3)
    assert arrays["arr_0"].dtype == np.uint8
    assert arrays["arr_1"].tolist() == [0, 0, 1, 1, 2, 2]  # --classes all is the default
    grid = Image.open(png)
    # One row per class, two samples per row, each 8 px drawn 8x larger with 2 px gaps.
    assert grid.size == (2 * 66 + 2, 3 * 66 + 2)
    assert grid.mode == "RGB"
    # The same seed gives the same samples whatever the batch size.
    again = trained.parent / "again.npz"
    done = ddkit("sample", trained, "--n", "6", "--npz", again, "--batch-size", "6", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(again)["arr_0"], arrays["arr_0"])


def test_sample_options_change_the_class_sampler_and_guidance(trained: Path) -> None:
    npz = trained.parent / "one-class.npz"
    done = ddkit(
        "sample",
        trained,
        "--n",
        "3",
        "--npz",
        npz,
        "--class-label",
        "1",
        "--sampler",
        "ddpm",
        "--steps",
        "3",
        "--guidance-scale",
        "1.5",
        "--no-ema",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert np.load(npz)["arr_1"].tolist() == [1, 1, 1]


def test_sample_refuses_bad_requests_with_one_message(trained: Path) -> None:
    done = ddkit("sample", trained, "--n", "4")
    assert done.returncode == 1
    assert "nothing to write: give --out GRID.png and/or --npz OUT.npz" in done.stderr
    done = ddkit("sample", trained, "--n", "4", "--npz", trained / "x.npz", "--class-label", "5")
    assert done.returncode == 1
    assert "--class-label must lie in 0..2 (got 5)" in done.stderr
    done = ddkit("sample", trained.parent / "nowhere", "--npz", trained / "x.npz")
    assert done.returncode == 1
    assert "no saved pipeline" in done.stderr
    assert "Traceback" not in done.stderr


def test_resume_continues_the_run(trained: Path) -> None:
    config = trained.parent / "tiny.toml"
    done = ddkit("train", config, "--out", trained, "--device", "cpu", "--no-progress")
    assert done.returncode == 1
    assert "--resume" in done.stderr  # the run's checkpoints are never overwritten silently
    done = ddkit(
        "train", config, "--out", trained, "--steps", "5", "--resume", "--device", "cpu", "--no-progress"
    )
    assert done.returncode == 0, done.stderr
    assert "trained 5 steps" in done.stdout


def test_a_bad_train_table_fails_before_training(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(CONFIG.replace("batch_size = 4", "batch_sise = 4"))
    done = ddkit("train", config, "--out", tmp_path / "run")
    assert done.returncode == 1
    assert "[train] has no key 'batch_sise'" in done.stderr
    assert "did you mean 'batch_size'" in done.stderr
    assert not (tmp_path / "run").exists()
