"""ENOSPC and EIO on every file of a checkpoint and of a pipeline save: the previous one always loads."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch
from _faults import ERRNOS, failing_writes, tiny_pipeline

import ddkit
from ddkit import _atomic
from ddkit.pipeline import io as pipeline_io
from ddkit.training import checkpoint as ckpt

CHECKPOINT_FILES = ["model.safetensors", "optimizer.pt", "state.pt", "ema-0.9999.safetensors", ckpt.MANIFEST]


def points(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


def trainer(out: Path, **extra: object) -> ddkit.Trainer:
    return ddkit.Trainer(tiny_pipeline(), points(), batch_size=16, out_dir=out, seed=5, **extra)  # type: ignore[arg-type]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if any(k in p.name for k in (".tmp-", ".old-", ".trash-")))


@pytest.mark.parametrize("code", list(ERRNOS))
@pytest.mark.parametrize("fail_on", CHECKPOINT_FILES)
@pytest.mark.parametrize("rewrite", [False, True], ids=["new-step", "rewrite"])
def test_checkpoint_write_fault_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str, fail_on: str, rewrite: bool
) -> None:
    run = trainer(tmp_path)
    run.train(2)  # ckpt-000002
    if not rewrite:
        run.train(3)  # the next checkpoint, ckpt-000003, is the one that fails
    target = ckpt.checkpoint_name(run.step)
    before = ckpt.load_tensors(tmp_path / target / "model.safetensors") if rewrite else None
    with failing_writes(monkeypatch, ckpt, "_write_file", fail_on, ERRNOS[code]) as written:
        if not rewrite:
            run.step += 1  # pretend one more step was taken: a new step to save
        with pytest.raises(OSError, match=re.escape(fail_on)) as info:
            run.save_checkpoint()
    assert info.value.errno == ERRNOS[code]
    assert fail_on in str(info.value)  # the OSError names the file
    assert fail_on in written
    assert leftovers(tmp_path) == []  # the partial write is gone
    listed = ckpt.list_checkpoints(tmp_path)
    for _, path in listed:
        ckpt.verify_checkpoint(path)
    if rewrite:  # the checkpoint being rewritten is intact, old content
        assert [s for s, _ in listed] == [2]
        after = ckpt.load_tensors(tmp_path / target / "model.safetensors")
        assert all(torch.equal(before[k], after[k]) for k in after)  # type: ignore[index]
    else:
        assert [s for s, _ in listed] == [3, 2]
    run.close()
    assert trainer(tmp_path, resume=True).step == listed[0][0]


def test_checkpoint_rename_fault_puts_the_old_copy_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"a.bin": b"old"}
    ckpt.write_checkpoint(tmp_path, 7, files)
    real = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if ".tmp-" in os.fspath(src) and ".trash-" not in os.fspath(dst):  # the swap-in only
            raise OSError(errno.EIO, "Input/output error", os.fspath(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        ckpt.write_checkpoint(tmp_path, 7, {"a.bin": b"new"})
    monkeypatch.setattr(os, "replace", real)
    assert (tmp_path / "ckpt-000007" / "a.bin").read_bytes() == b"old"
    ckpt.verify_checkpoint(tmp_path / "ckpt-000007")
    assert leftovers(tmp_path) == []


# -- pipeline saves ------------------------------------------------------------------------------


def classifier_pipeline(tmp_path: Path, seed: int) -> ddkit.Pipeline:
    """A pipeline with an EMA and classifier-guidance weights: every kind of file a save holds."""
    from safetensors.torch import save_file

    clf_cfg = {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1, "num_classes": 3}
    clf = ddkit.create("model", "mlp", dim=2, hidden=8, depth=1, num_classes=3)
    weights = tmp_path / f"clf{seed}.safetensors"
    save_file(clf.state_dict(), str(weights))
    torch.manual_seed(seed)
    pipe = ddkit.Pipeline.from_config(
        {
            "model": {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1, "num_classes": 3},
            "schedule": {"name": "linear", "timesteps": 50},
            "sampler": {"name": "ddim", "steps": 3},
            "guidance": [
                {"name": "classifier", "scale": 1.0, "classifier": {**clf_cfg, "weights": str(weights)}}
            ],
        }
    )
    average = ddkit.create("model", "mlp", dim=2, hidden=8, depth=1, num_classes=3)
    pipe.ema["0.9999"] = average
    return pipe


SAVE_FILES = [
    "model.safetensors",
    "ema_0.9999.safetensors",
    "guidance1-classifier.safetensors",
    "pipeline.toml",
    pipeline_io.MANIFEST,
]


def state(pipe: ddkit.Pipeline) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.model.state_dict().items()}


@pytest.mark.parametrize("code", list(ERRNOS))
@pytest.mark.parametrize("fail_on", SAVE_FILES)
def test_pipeline_save_fault_leaves_the_previous_save_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str, fail_on: str
) -> None:
    out = tmp_path / "saved"
    first = classifier_pipeline(tmp_path, 1)
    first.save(out)
    second = classifier_pipeline(tmp_path, 2)
    with (
        failing_writes(monkeypatch, pipeline_io, "_write", fail_on, ERRNOS[code]) as written,
        pytest.raises(OSError, match=re.escape(fail_on)) as info,
    ):
        second.save(out)
    assert fail_on in written
    assert type(info.value) is OSError  # not a SafetensorError
    assert info.value.errno == ERRNOS[code]
    assert fail_on in str(info.value)
    assert leftovers(tmp_path) == []
    loaded = ddkit.Pipeline.load(out)
    got, want = state(loaded), state(first)
    assert all(torch.equal(got[k], want[k]) for k in want)
    # The first save onto a full disk leaves nothing behind.
    fresh = tmp_path / "fresh"
    with (
        failing_writes(monkeypatch, pipeline_io, "_write", fail_on, ERRNOS[code]),
        pytest.raises(OSError, match=re.escape(fail_on)),
    ):
        second.save(fresh)
    assert not fresh.exists()
    assert leftovers(tmp_path) == []


def test_pipeline_swap_rename_fault_puts_the_old_save_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "saved"
    first = tiny_pipeline(1)
    first.save(out)
    real = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if ".tmp-" in os.fspath(src) and ".trash-" not in os.fspath(dst):  # the swap-in only
            raise OSError(errno.EIO, "Input/output error", os.fspath(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        tiny_pipeline(2).save(out)
    monkeypatch.setattr(os, "replace", real)
    got, want = state(ddkit.Pipeline.load(out)), state(first)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert leftovers(tmp_path) == []


def test_a_kill_between_the_swap_renames_is_recovered_on_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "saved"
    tiny_pipeline(1).save(out)
    second = tiny_pipeline(2)

    def killed(label: str) -> None:
        if label == "replace:aside":
            raise SystemExit("killed between the two renames")

    monkeypatch.setattr(_atomic, "fault_point", killed)
    monkeypatch.setattr(_atomic, "remove_dir", lambda path: None)  # a kill runs no clean-up
    with pytest.raises(SystemExit):
        second.save(out)
    monkeypatch.undo()
    assert not out.exists()  # the old save is aside, the new one complete beside it
    got, want = state(ddkit.Pipeline.load(out)), state(second)
    assert all(torch.equal(got[k], want[k]) for k in want)  # the complete new save was put back
    assert leftovers(tmp_path) == []


def test_a_save_never_replaces_a_folder_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ddkit.ConfigError, match=r"Pipeline\.save did not write \(notes\.txt\)"):
        tiny_pipeline().save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
