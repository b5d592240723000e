"""Shared pieces of the reliability tests: a tiny run, a subprocess trainer with kill hooks, faults."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import ddkit
from ddkit.training import checkpoint as ckpt

#: A run small enough to train in a fraction of a second per step on one CPU thread.
CONFIG = """
[schedule]
name = "linear"
timesteps = 100

[model]
name = "mlp"
dim = 2
hidden = 16
depth = 1

[parameterization]
name = "epsilon"
clip_denoised = false

[resampler]
name = "loss-second-moment"

[train]
steps = {steps}
batch_size = 16
lr = 1e-3
seed = 3
checkpoint_every = {every}
keep_checkpoints = 2
log_every = 5
grad_clip = 1.0

[data]
name = "gaussians"
n = 256
"""

#: The torch CPU thread count of every training run of these tests, in-process and in subprocesses.
#: Runs compared bit for bit must use one count: some CPU kernels (LayerNorm's backward among them)
#: split their sums per thread, so a 1-thread and a 2-thread run differ from the second step on
#: (issue 20: a reference trained at the process's default of 2 threads never matched the trials).
THREADS = 1


@contextmanager
def torch_threads(n: int = THREADS) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads; the previous count comes back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# The real CLI in a subprocess, with test hooks (the library's only hook is ddkit._atomic.fault_point):
#   STOP_AT=<label>:<n>  the n-th time (1-based) the writer reaches fault point <label>, write the
#                        marker file and sleep, so that the test kills it exactly there;
#   STEP_DELAY=<s>       sleep per step, so that a kill at a random moment lands mid-run;
#   RESAVE=1             rewrite the checkpoint of the resumed step before training on (the
#                        "rewrite at an already-saved step" path: same step, same content).
RUNNER = """
import os, sys, time
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # THREADS, set by start()
from ddkit import _atomic
from ddkit.training import trainer

stop = os.environ.get("STOP_AT")
if stop:
    label, nth = stop.rsplit(":", 1)
    seen = [0]
    fault_point = _atomic.fault_point

    def stopping_point(name):
        if name == label:
            seen[0] += 1
            if seen[0] == int(nth):
                open(os.environ["MARKER"], "w").close()
                time.sleep(600)
        fault_point(name)

    _atomic.fault_point = stopping_point

delay = float(os.environ.get("STEP_DELAY", "0"))
if delay:
    run_step = trainer.Trainer._run_step

    def slow_step(self):
        time.sleep(delay)
        run_step(self)

    trainer.Trainer._run_step = slow_step

if os.environ.get("RESAVE"):
    train = trainer.Trainer.train

    def resave_then_train(self, steps):
        if self.step > 0:
            self.save_checkpoint()
        return train(self, steps)

    trainer.Trainer.train = resave_then_train

from ddkit.cli import main

sys.exit(main(sys.argv[1:]))
"""


def write_config(folder: Path, *, steps: int = 40, every: int = 5) -> Path:
    path = folder / "run.toml"
    path.write_text(CONFIG.format(steps=steps, every=every))
    return path


def cli_args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(config), "--out", str(out), "--device", "cpu", "--no-progress", *extra]


def start(config: Path, out: Path, tmp: Path, *extra: str, **env: str) -> subprocess.Popen[bytes]:
    """``ddkit train`` in a subprocess of its own session, with the RUNNER's hooks set by ``env``.

    Bytecode is cached under ``tmp`` even where PYTHONDONTWRITEBYTECODE is set, so that dozens
    of subprocesses do not each compile torch's sources again.
    """
    runner = tmp / "runner.py"
    if not runner.exists():
        runner.write_text(textwrap.dedent(RUNNER))
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return subprocess.Popen(
        [sys.executable, str(runner), *cli_args(config, out, *extra)],
        env={
            **base,
            "PYTHONPYCACHEPREFIX": str(tmp / "pycache"),
            "OMP_NUM_THREADS": str(THREADS),
            "MKL_NUM_THREADS": str(THREADS),
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float = 120
) -> bool:
    """Wait until ``condition()``; False if the process ended first (exit 0), an error otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            if proc.returncode == 0:
                return False
            err = proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"the run failed (exit {proc.returncode}) before {what}: {err!r}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return True


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stderr:
        proc.stderr.close()


def weights(ckpt_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: ckpt.load_tensors(ckpt_dir / name) for name in ("model.safetensors", "ema-0.9999.safetensors")
    }


def assert_same_weights(a: Path, b: Path) -> None:
    """The checkpoints ``a`` and ``b`` hold bit-identical weights (and were trained at one thread count)."""
    threads = [ckpt.verify_checkpoint(path)["meta"].get("cpu_threads") for path in (a, b)]
    assert threads[0] == threads[1], f"{a} was trained with {threads[0]} CPU threads, {b} with {threads[1]}"
    wa, wb = weights(a), weights(b)
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), f"{name}: {key} differs ({a} vs {b})"


# -- fault injection -------------------------------------------------------------------------


def tiny_pipeline(seed: int = 0, **model: Any) -> Any:
    torch.manual_seed(seed)
    return ddkit.Pipeline.from_config(
        {
            "model": {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1, **model},
            "schedule": {"name": "linear", "timesteps": 50},
            "sampler": {"name": "ddim", "steps": 3},
        }
    )


@contextmanager
def failing_writes(
    monkeypatch: pytest.MonkeyPatch, module: Any, attribute: str, fail_on: str, code: int
) -> Iterator[list[str]]:
    """Make ``module.attribute`` (a ``(path, data)`` writer) fail with errno ``code`` on file ``fail_on``.

    The failing write leaves half the bytes behind, as a full disk does. Yields the names written.
    """
    real = getattr(module, attribute)
    names: list[str] = []

    def writer(path: Path, data: bytes) -> None:
        names.append(path.name)
        if path.name == fail_on:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(code, os.strerror(code), str(path))
        real(path, data)

    monkeypatch.setattr(module, attribute, writer)
    try:
        yield names
    finally:
        monkeypatch.setattr(module, attribute, real)


ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}
