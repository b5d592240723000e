"""Two trainers on one run directory: the second is refused at once, clearly; a dead holder frees it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from _faults import cli_args, sigkill, start, tiny_pipeline, wait_for, write_config

import ddkit
from ddkit.cli import main
from ddkit.training import checkpoint as ckpt
from ddkit.training.lock import RunDirectoryLock, RunLockedError


def points(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


def test_a_second_trainer_beside_a_running_one_is_refused_at_once(
    spawn_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, steps=40, every=5)
    out = tmp_path / "run"
    marker = tmp_path / "paused"
    # The first trainer pauses inside its second checkpoint, holding the directory.
    proc = start(config, out, spawn_dir, STOP_AT="checkpoint:manifest:2", MARKER=str(marker))
    try:
        assert wait_for(marker.exists, proc, "the first trainer's second checkpoint")
        before = sorted(p.name for p in out.iterdir())
        for resume in (True, False):
            began = time.monotonic()
            with pytest.raises(RunLockedError) as info:
                ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=out, resume=resume)
            assert time.monotonic() - began < 5, "the refusal must not wait for the lock"
            message = str(info.value)
            assert str(out) in message
            assert f"process {proc.pid}" in message
            assert "another output directory" in message
        # The CLI says the same in one line, exit 1, nothing touched.
        assert main(cli_args(config, out, "--resume")) == 1
        err = capsys.readouterr().err
        assert f"in use by process {proc.pid}" in err
        assert "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        sigkill(proc)
    # SIGKILL leaves no stale lock: a resume takes over at once and continues the run.
    assert main(cli_args(config, out, "--resume")) == 0
    assert ckpt.list_checkpoints(out)[0][0] == 40


def test_the_lock_is_held_for_the_trainers_life(tmp_path: Path) -> None:
    first = ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path, seed=1)
    first.train(2)
    with pytest.raises(RunLockedError, match=rf"in use by process {os.getpid()} \(this process"):
        ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path, resume=True)
    first.close()
    second = ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path, resume=True)
    assert second.step == 2
    second.train(4)
    second.close()
    # The closed first trainer may not write over the newer run's checkpoints.
    with pytest.raises(ddkit.ConfigError, match=r"ckpt-000004, written by another run"):
        first.train(6)
    # A trainer nobody references any more frees the directory.
    third = ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path, resume=True)
    del third, second, first
    again = ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path, resume=True)
    assert again.step == 4
    again.close()


def test_lock_file_records_the_holder_only_while_it_holds(tmp_path: Path) -> None:
    lock = RunDirectoryLock(tmp_path)
    with lock:
        assert lock.held
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        other = RunDirectoryLock(tmp_path)
        with pytest.raises(RunLockedError, match=str(tmp_path)):
            other.acquire()
        assert not other.held
    assert not lock.held
    with RunDirectoryLock(tmp_path) as again:  # released: free for the next one
        assert again.held


def test_a_trainer_whose_setup_failed_does_not_keep_the_directory(tmp_path: Path) -> None:
    kept = []
    try:
        ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path, cond_dropout=0.1)
    except ddkit.ConfigError as exc:  # no null class to drop labels to: found after the lock was taken
        kept.append(exc)  # the traceback keeps the half-built trainer alive, as a notebook does
    assert kept
    trainer = ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path)
    trainer.train(1)
    assert ckpt.list_checkpoints(tmp_path)[0][0] == 1
    trainer.close()


def test_a_with_block_releases_the_directory(tmp_path: Path) -> None:
    with ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path, seed=1) as trainer:
        trainer.train(2)
        with pytest.raises(RunLockedError):
            ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path, resume=True)
    with ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=tmp_path, resume=True) as again:
        assert again.step == 2
