"""`torchrun --nproc_per_node=2` (gloo, CPU) trains and samples like one process with the same global
batch, and a run checkpointed by 2 processes resumes in 1 from the same step with the same batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ddkit.cli import main
from ddkit.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

CONFIG = """
[schedule]
name = "linear"
timesteps = 100

[model]
name = "mlp"
dim = 2
hidden = 32
depth = 2

[parameterization]
name = "epsilon"
clip_denoised = false

[sampler]
name = "ddim"
steps = 10

[resampler]
name = "loss-second-moment"

[train]
batch_size = 32
lr = 1e-3
seed = 11
grad_accum = 2
checkpoint_every = 6
log_every = 3

[data]
name = "moons"
n = 200
"""
FIRST, SECOND = 12, 24
# The CLI with the model's initial weights fixed (the same in every process). Arguments in
# DDKIT_TEST_ARGS are appended here, out of reach of torchrun's own parser (which would take
# `--n` for an abbreviation of one of its options).
RUNNER = """
import os
import sys
import torch

torch.manual_seed(0)
from ddkit.cli import main

sys.exit(main(sys.argv[1:] + os.environ.get("DDKIT_TEST_ARGS", "").split()))
"""


def run(runner: Path, *args: str, nproc: int, extra: tuple[str, ...] = ()) -> None:
    """``args`` through the CLI: in this process for 1, under torchrun for more."""
    if nproc == 1:
        torch.manual_seed(0)  # as the runner does
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert main([*args, *extra]) == 0
        finally:
            torch.set_num_threads(threads)
        return
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDKIT_TEST_ARGS": " ".join(extra)}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [sys.executable, *launcher, str(runner), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The same config trained to step 12 and sampled by 1 process and by 2 (torchrun)."""
    root = tmp_path_factory.mktemp("torchrun")
    config = root / "toy.toml"
    config.write_text(CONFIG)
    runner = root / "runner.py"
    runner.write_text(RUNNER)
    outs = {}
    for nproc in (1, 2):
        out = root / f"world{nproc}"
        common = ("--device", "cpu", "--no-progress")
        run(runner, "train", str(config), "--out", str(out), "--steps", str(FIRST), *common, nproc=nproc)
        # 9 samples: 4 on rank 0, 5 on rank 1, gathered by rank 0.
        npz = str(out / "samples.npz")
        run(
            runner,
            "sample",
            str(out),
            "--npz",
            npz,
            "--batch-size",
            "3",
            *common,
            nproc=nproc,
            extra=("--n", "9"),
        )
        outs[nproc] = out
    return outs


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(a: Path, b: Path, atol: float = 1e-6) -> None:
    for name in ("model.safetensors", "ema-0.9999.safetensors"):
        wa, wb = ckpt.load_tensors(a / name), ckpt.load_tensors(b / name)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.allclose(wa[key], wb[key], atol=atol, rtol=0), f"{name}: {key} differs"


def log(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one(runs: dict[int, Path]) -> None:
    one, two = (runs[n] / f"ckpt-{FIRST:06d}" for n in (1, 2))
    assert_close(one, two)
    assert ckpt.verify_checkpoint(two)["meta"]["world_size"] == 2
    assert ckpt.verify_checkpoint(one)["meta"]["world_size"] == 1
    # Rank 0 alone logs, and its quartile statistics cover both ranks' samples.
    log1, log2 = log(runs[1]), log(runs[2])
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == [3, 6, 9, 12]
    for r1, r2 in zip(log1, log2):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        assert r2["loss_q3"] == pytest.approx(r1["loss_q3"], rel=1e-5)


def test_the_sampling_job_gathers_every_rank(runs: dict[int, Path]) -> None:
    one = np.load(runs[1] / "samples.npz")["arr_0"]
    two = np.load(runs[2] / "samples.npz")["arr_0"]
    assert one.shape == two.shape == (9, 2)
    np.testing.assert_allclose(two, one, atol=1e-4)


def test_resume_two_processes_with_one(runs: dict[int, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config = runs[1].parent / "toy.toml"
    for out in (runs[2], runs[1]):
        assert (
            main(
                [
                    "train",
                    str(config),
                    "--out",
                    str(out),
                    "--resume",
                    "--steps",
                    str(SECOND),
                    "--device",
                    "cpu",
                    "--no-progress",
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert_close(runs[1] / f"ckpt-{SECOND:06d}", runs[2] / f"ckpt-{SECOND:06d}")
    assert ckpt.verify_checkpoint(runs[2] / f"ckpt-{SECOND:06d}")["meta"]["world_size"] == 1
    resumed = log(runs[2])
    assert [r["step"] for r in resumed] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert [r["samples"] for r in resumed] == [32 * r["step"] for r in resumed]  # the same global batch
