"""`ddkit train` killed with SIGKILL, at a random moment or in the middle of writing a checkpoint, resumes
with `--resume` and ends with the same weights, bit for bit, as a run that never stopped (CPU)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from ddkit.cli import main
from ddkit.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

STEPS = 120
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

[resampler]
name = "loss-second-moment"

[train]
steps = 120
batch_size = 32
lr = 1e-3
seed = 3
checkpoint_every = 10
keep_checkpoints = 3
log_every = 10
grad_clip = 1.0

[data]
name = "gaussians"
n = 600
"""

# Runs the real CLI, with two test hooks: a sleep per step (so that a random kill lands mid-run)
# and a pause half-way through one file of one checkpoint (so that the kill lands mid-write).
RUNNER = """
import os, sys, time
import torch

torch.set_num_threads(1)
from ddkit.training import checkpoint, trainer

delay = float(os.environ.get("STEP_DELAY", "0"))
if delay:
    run_step = trainer.Trainer._run_step

    def slow_step(self):
        time.sleep(delay)
        run_step(self)

    trainer.Trainer._run_step = slow_step

pause = os.environ.get("PAUSE_IN")
if pause:
    ckpt_name, file_name = pause.split(":")
    write_file = checkpoint._write_file

    def paused_write(path, data):
        if path.parent.name.startswith(ckpt_name + ".tmp-") and path.name == file_name:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            open(os.environ["PAUSED_MARKER"], "w").close()
            time.sleep(600)
        write_file(path, data)

    checkpoint._write_file = paused_write

torch.manual_seed(0)
from ddkit.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "toy.toml"
    path.write_text(CONFIG)
    return path


def train_here(config: Path, out: Path, *extra: str) -> None:
    torch.manual_seed(0)  # the model's initial weights, as the runner script sets them
    assert main(["train", str(config), "--out", str(out), "--device", "cpu", "--no-progress", *extra]) == 0


@pytest.fixture(scope="module")
def reference(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that never stopped."""
    out = tmp_path_factory.mktemp("straight")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_here(config, out)
    finally:
        torch.set_num_threads(threads)
    return out / f"ckpt-{STEPS:06d}"


def start(config: Path, out: Path, tmp: Path, **env: str) -> subprocess.Popen[bytes]:
    runner = tmp / "runner.py"
    runner.write_text(textwrap.dedent(RUNNER))
    command = [
        sys.executable,
        str(runner),
        "train",
        str(config),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    return subprocess.Popen(
        command,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read()!r}"
            )  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def assert_same_weights(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "ema-0.9999.safetensors"):
        wa, wb = ckpt.load_tensors(a / name), ckpt.load_tensors(b / name)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}: {key} differs"


def test_sigkill_at_a_random_moment_then_resume(config: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start(config, out, tmp_path, STEP_DELAY="0.02")
    wait_for(lambda: (out / "ckpt-000010").is_dir(), proc, "the first checkpoint")
    moment = random.uniform(0.0, 0.8)
    time.sleep(moment)
    assert proc.poll() is None, "the run finished before the kill; it must be killed mid-run"
    kill(proc)
    survivors = ckpt.list_checkpoints(out)
    assert survivors, f"no checkpoint survived a kill {moment:.2f} s after the first one"
    assert survivors[0][0] < STEPS
    train_here(config, out, "--resume")
    assert_same_weights(reference, out / f"ckpt-{STEPS:06d}")


def test_sigkill_while_writing_a_checkpoint_then_resume(
    config: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    marker = tmp_path / "paused"
    proc = start(config, out, tmp_path, PAUSE_IN="ckpt-000020:optimizer.pt", PAUSED_MARKER=str(marker))
    wait_for(marker.exists, proc, "the pause inside checkpoint 20")
    kill(proc)
    # The half-written checkpoint is a temporary directory without a manifest; the previous one is intact.
    assert [step for step, _ in ckpt.list_checkpoints(out)] == [10]
    ckpt.verify_checkpoint(out / "ckpt-000010")
    (partial,) = [p for p in out.iterdir() if p.name.startswith("ckpt-000020.tmp-")]
    assert (partial / "model.safetensors").is_file()
    assert not (partial / ckpt.MANIFEST).exists()
    train_here(config, out, "--resume")
    assert not partial.exists()  # leftovers are cleaned up once a newer checkpoint is complete
    assert_same_weights(reference, out / f"ckpt-{STEPS:06d}")


def test_a_second_run_in_the_same_directory_is_refused(
    config: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = reference.parent
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    torch.manual_seed(0)
    assert main(["train", str(config), "--out", str(out), "--device", "cpu", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err
    assert "--resume" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
