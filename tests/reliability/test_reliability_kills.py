"""Randomized SIGKILLs of ``ddkit train``: at random moments, inside checkpoint writes, rewrites, prunes.

After every kill: every checkpoint under a checkpoint name verifies (0 corrupt), the newest
complete step on disk never goes back and a resuming trainer starts from it (0 lost runs);
every run, finished by a resume, ends with the weights of a run that was never killed, bit
for bit (0 non-identical resumes). The trial plan is random; its seed is printed (set
``DDKIT_RELIABILITY_SEED`` to replay one).
"""

from __future__ import annotations

import collections
import os
import random
import time
from pathlib import Path

import pytest
import torch
from _faults import (
    THREADS,
    assert_same_weights,
    cli_args,
    sigkill,
    start,
    tiny_pipeline,
    torch_threads,
    wait_for,
    write_config,
)

import ddkit
from ddkit.cli import main
from ddkit.cli.train import trainer_options
from ddkit.pipeline import read_config
from ddkit.training import checkpoint as ckpt

STEPS, EVERY = 40, 5
KILLS = 32
#: (mode, environment of the runner, needs an earlier checkpoint). ``checkpoint:file`` is reached
#: once per file of a checkpoint (4 files), so an n up to 12 lands in the first three checkpoints.
MODES = (
    "random",
    "write-file",
    "write-manifest",
    "rewrite-aside",
    "rewrite-swapped",
    "prune",
    "pipeline-save",
)


def plan(rng: random.Random, mode: str, marker: Path) -> dict[str, str]:
    if mode == "random":
        return {"STEP_DELAY": "0.01"}
    label = {
        "write-file": f"checkpoint:file:{rng.randint(1, 12)}",
        "write-manifest": f"checkpoint:manifest:{rng.randint(1, 3)}",
        "rewrite-aside": "replace:aside:1",
        "rewrite-swapped": "replace:swapped:1",
        "prune": f"prune:renamed:{rng.randint(1, 2)}",
        "pipeline-save": rng.choice(["save:file:1", "save:manifest:1"]),  # ddkit train's final save
    }[mode]
    env = {"STOP_AT": label, "MARKER": str(marker)}
    if mode.startswith("rewrite"):
        env["RESAVE"] = "1"
    return env


def newest_on_disk(out: Path) -> int:
    """The newest step held by a complete checkpoint, listed or left under a temporary name."""
    steps = [step for step, _ in ckpt.list_checkpoints(out)]
    steps += [int(p.name[5:11]) for p in ckpt.stranded_checkpoints(out)]
    return max(steps, default=0)


def resumed_step(config: Path, out: Path) -> int:
    """The step a resuming trainer starts from (built as ``ddkit train --resume`` builds it)."""
    cfg = read_config(config)
    options, data, _ = trainer_options(cfg, None)
    torch.manual_seed(options["seed"])
    trainer = ddkit.Trainer(ddkit.Pipeline.from_config(cfg), data, **options, out_dir=out, resume=True)
    try:
        return int(trainer.step)
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("config"), steps=STEPS, every=EVERY)


@pytest.fixture(scope="module")
def reference(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that was never killed, at the trials' thread count.

    Module-scoped fixtures are set up before the function-scoped ``_one_thread``: without
    ``torch_threads`` this run took the process's count (2 under OMP_NUM_THREADS=2 in CI), and a
    2-thread run is not bit-identical to the 1-thread trials (issue 20).
    """
    out = tmp_path_factory.mktemp("straight")
    with torch_threads(THREADS):
        assert main(cli_args(config, out)) == 0
    return out / ckpt.checkpoint_name(STEPS)


def test_randomized_sigkills_lose_nothing(
    config: Path, reference: Path, spawn_dir: Path, tmp_path: Path
) -> None:
    seed = int(os.environ.get("DDKIT_RELIABILITY_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"DDKIT_RELIABILITY_SEED={seed}")
    rng = random.Random(seed)
    kills: collections.Counter[str] = collections.Counter()
    finished_runs = 0
    pending: list[str] = []
    run = 0
    started = time.monotonic()
    while sum(kills.values()) < KILLS:
        run += 1
        out = tmp_path / f"run{run}"
        budget = rng.randint(7, 11)
        on_disk = 0
        for trial in range(budget):
            if not pending:  # every mode in turn, in a random order: each is tried several times
                pending = rng.sample(MODES, len(MODES))
            mode = pending.pop()
            if mode.startswith("rewrite") and on_disk == 0:
                mode = "write-file"  # a rewrite needs a checkpoint to rewrite
            marker = tmp_path / f"marker-{run}-{trial}"
            extra = ("--resume",) if out.exists() else ()
            proc = start(config, out, spawn_dir, *extra, **plan(rng, mode, marker))
            if mode == "random":
                lock = out / ".lock"
                ready = wait_for(
                    lambda lock=lock, proc=proc: lock.is_file() and lock.read_text().strip() == str(proc.pid),
                    proc,
                    "the trainer to start",
                )
                if ready:
                    time.sleep(rng.uniform(0.0, 0.5))
            else:
                ready = wait_for(marker.exists, proc, f"fault point {mode}")
            if proc.poll() is not None:  # the run finished before the kill: not a trial
                sigkill(proc)
                assert proc.returncode == 0
                break
            sigkill(proc)
            kills[mode] += 1
            # 0 corrupt: whatever is listed as a checkpoint is complete.
            for _, path in ckpt.list_checkpoints(out):
                ckpt.verify_checkpoint(path)
            # 0 lost: the newest complete step never goes back, and a resume starts from it.
            now = newest_on_disk(out)
            assert now >= on_disk, f"{mode}: the newest complete checkpoint went back from {on_disk} to {now}"
            on_disk = now
            if out.exists():
                assert resumed_step(config, out) == on_disk, f"{mode}: the resume did not start at {on_disk}"
            if (out / "pipeline").exists():  # a save is whole or absent, never half
                ddkit.Pipeline.load(out / "pipeline")
        # Finish the run and compare with the one that was never killed: 0 non-identical resumes.
        assert main(cli_args(config, out, "--resume") if out.exists() else cli_args(config, out)) == 0
        assert_same_weights(reference, out / ckpt.checkpoint_name(STEPS))
        saved, straight = (
            ddkit.Pipeline.load(out / "pipeline"),
            ddkit.Pipeline.load(reference.parent / "pipeline"),
        )
        for key, value in straight.ema["0.9999"].state_dict().items():
            assert torch.equal(saved.ema["0.9999"].state_dict()[key], value), f"saved pipeline: {key} differs"
        assert [p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []
        finished_runs += 1
    total = sum(kills.values())
    print(f"{total} SIGKILLs in {finished_runs} runs ({dict(kills)}) in {time.monotonic() - started:.0f} s")
    assert total >= KILLS
    assert kills["write-file"] + kills["write-manifest"] > 0
    assert kills["rewrite-aside"] + kills["rewrite-swapped"] > 0
    assert kills["prune"] > 0
    assert kills["pipeline-save"] > 0


def test_a_rewrite_writes_exactly_what_was_committed(tmp_path: Path) -> None:
    """Re-saving a resumed step (the RESAVE trials) gives the same bytes, so the ``.old-``/``.tmp-``
    copies an interrupted rewrite leaves are interchangeable and recovery's choice cannot change a run."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    first = ddkit.Trainer(tiny_pipeline(), x, batch_size=16, seed=5, out_dir=tmp_path, checkpoint_every=3)
    first.train(3)
    first.close()
    committed = ckpt.verify_checkpoint(tmp_path / ckpt.checkpoint_name(3))
    resumed = ddkit.Trainer(tiny_pipeline(1), x, batch_size=16, seed=5, out_dir=tmp_path, resume=True)
    assert resumed.step == 3
    resumed.save_checkpoint()
    resumed.close()
    assert ckpt.verify_checkpoint(tmp_path / ckpt.checkpoint_name(3)) == committed


def test_checkpoints_record_the_thread_count_and_a_resume_with_another_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bit-identical CPU resumes need the same torch thread count (issue 20): it is recorded and checked."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    trainer = ddkit.Trainer(tiny_pipeline(), x, batch_size=16, seed=5, out_dir=tmp_path, device="cpu")
    trainer.train(2)
    trainer.close()
    assert ckpt.verify_checkpoint(tmp_path / ckpt.checkpoint_name(2))["meta"]["cpu_threads"] == THREADS
    for threads, logged in ((THREADS, False), (THREADS + 1, True)):
        caplog.clear()
        with torch_threads(threads), caplog.at_level("WARNING", logger="ddkit.training"):
            ddkit.Trainer(
                tiny_pipeline(), x, batch_size=16, out_dir=tmp_path, resume=True, device="cpu"
            ).close()
        message = f"ckpt-000002 was trained with {THREADS} CPU threads and the run continues with {threads}"
        assert (message in caplog.text) is logged, caplog.text
