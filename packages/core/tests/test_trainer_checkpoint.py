"""Checkpoint directories: atomic writes, rewrites and prunes, recovery, integrity, data-only contents."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest
import torch

from ddkit import _atomic
from ddkit.errors import IntegrityError
from ddkit.training import checkpoint as ckpt


def _files(value: float) -> dict[str, bytes]:
    return {
        "model.safetensors": ckpt.tensors_bytes({"w": torch.full((3, 2), value)}),
        "state.pt": ckpt.state_bytes({"step": int(value), "rng": [torch.arange(4)], "name": "x"}),
    }


def test_write_then_verify_and_read_back(tmp_path: Path) -> None:
    path = ckpt.write_checkpoint(tmp_path, 100, _files(1.0), meta={"seed": 3})
    assert path == tmp_path / "ckpt-000100"
    manifest = ckpt.verify_checkpoint(path)
    assert set(manifest["files"]) == {"model.safetensors", "state.pt"}
    assert manifest["meta"] == {"seed": 3}
    assert manifest["step"] == 100
    assert torch.equal(ckpt.load_tensors(path / "model.safetensors")["w"], torch.full((3, 2), 1.0))
    state = ckpt.load_state(path / "state.pt")
    assert state["step"] == 1
    assert torch.equal(state["rng"][0], torch.arange(4))
    # Nothing is left behind but the checkpoint itself.
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000100"]


class _Code:
    """Stands for any object whose unpickling would import and run code."""


def test_state_files_refuse_pickled_code(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(ckpt.state_bytes({"obj": _Code()}))
    with pytest.raises(Exception, match=r"[Ww]eights only load failed|Unsupported global"):
        ckpt.load_state(tmp_path / "bad.pt")


def test_crash_between_file_writes_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt.write_checkpoint(tmp_path, 10, _files(1.0))
    real_write = ckpt._write_file
    calls = []

    def crash_on_second(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash in the middle of a checkpoint")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write_file", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(tmp_path, 20, _files(2.0))
    # The half-written one is only a temporary directory: not listed, no manifest.
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [10]
    leftovers = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1
    assert not (leftovers[0] / ckpt.MANIFEST).exists()
    ckpt.verify_checkpoint(tmp_path / "ckpt-000010")
    monkeypatch.setattr(ckpt, "_write_file", real_write)
    ckpt.write_checkpoint(tmp_path, 20, _files(2.0))
    removed = ckpt.prune_checkpoints(tmp_path, keep=3)
    assert removed == leftovers
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [20, 10]


def test_rewriting_a_step_replaces_it_only_when_complete(tmp_path: Path) -> None:
    ckpt.write_checkpoint(tmp_path, 5, _files(1.0))
    ckpt.write_checkpoint(tmp_path, 5, _files(7.0))
    path = tmp_path / "ckpt-000005"
    ckpt.verify_checkpoint(path)
    assert ckpt.load_tensors(path / "model.safetensors")["w"][0, 0] == 7.0
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000005"]


def test_keep_last_n(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40, 50):
        ckpt.write_checkpoint(tmp_path, step, _files(float(step)))
        ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [50, 40]
    with pytest.raises(ValueError, match="'keep' must be >= 1"):
        ckpt.prune_checkpoints(tmp_path, keep=0)


def test_list_orders_by_step_not_name(tmp_path: Path) -> None:
    for step in (999_999, 1_000_000, 5):
        ckpt.write_checkpoint(tmp_path, step, _files(1.0))
    (tmp_path / "ckpt-notanumber").mkdir()
    (tmp_path / "ckpt-000007").write_text("a file, not a checkpoint")
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [1_000_000, 999_999, 5]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "model.safetensors has .* bytes, the manifest says"),
        ("tamper", "model.safetensors does not match its SHA-256"),
        ("delete", "file state.pt is missing"),
        ("no-manifest", "has no manifest.json: it was not completely written"),
        ("bad-manifest", "manifest.json cannot be read"),
    ],
)
def test_verify_names_the_checkpoint_and_the_damaged_file(tmp_path: Path, damage: str, message: str) -> None:
    path = ckpt.write_checkpoint(tmp_path, 100, _files(1.0))
    model = path / "model.safetensors"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:-5])
    elif damage == "tamper":
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "delete":
        (path / "state.pt").unlink()
    elif damage == "no-manifest":
        (path / ckpt.MANIFEST).unlink()
    else:
        (path / ckpt.MANIFEST).write_text("{not json")
    with pytest.raises(IntegrityError, match=f"checkpoint ckpt-000100.*{message}"):
        ckpt.verify_checkpoint(path)


def test_manifest_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_write = ckpt._write_file

    def record(path: Path, data: bytes) -> None:
        order.append(path.name)
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write_file", record)
    path = ckpt.write_checkpoint(tmp_path, 1, _files(1.0))
    assert order[-1] == ckpt.MANIFEST
    assert len(order) == 3
    entries = json.loads((path / ckpt.MANIFEST).read_text())["files"]
    assert all(len(e["sha256"]) == 64 for e in entries.values())


def test_manifest_name_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="written by write_checkpoint itself"):
        ckpt.write_checkpoint(tmp_path, 1, {ckpt.MANIFEST: b"{}"})


# -- rewrites, prunes and recovery under kills ----------------------------------------------------


def _killed_at(monkeypatch: pytest.MonkeyPatch, label: str) -> None:
    """Stop at fault point ``label`` as a SIGKILL would: no clean-up runs afterwards."""

    def stop(name: str) -> None:
        if name == label:
            raise SystemExit(f"killed at {label}")

    monkeypatch.setattr(_atomic, "fault_point", stop)
    monkeypatch.setattr(_atomic, "remove_dir", lambda path: None)
    monkeypatch.setattr(ckpt.shutil, "rmtree", lambda path, ignore_errors=False: None)


def test_a_kill_between_the_rewrite_renames_is_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt.write_checkpoint(tmp_path, 5, _files(1.0))
    with monkeypatch.context() as m:
        _killed_at(m, "replace:aside")
        with pytest.raises(SystemExit):
            ckpt.write_checkpoint(tmp_path, 5, _files(7.0))
    # Only the two complete copies under temporary names are left: nothing is listed.
    assert ckpt.list_checkpoints(tmp_path) == []
    kinds = sorted(p.name.split(".")[1].split("-")[0] for p in tmp_path.iterdir())
    assert kinds == ["old", "tmp"]
    assert [p.name.split(".")[0] for p in ckpt.stranded_checkpoints(tmp_path)] == ["ckpt-000005"] * 2
    assert ckpt.recover_checkpoints(tmp_path) == ["ckpt-000005"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000005"]
    ckpt.verify_checkpoint(tmp_path / "ckpt-000005")
    assert ckpt.load_tensors(tmp_path / "ckpt-000005" / "model.safetensors")["w"][0, 0] == 7.0  # the new one


def test_recovery_keeps_a_valid_checkpoint_and_drops_incomplete_leftovers(tmp_path: Path) -> None:
    ckpt.write_checkpoint(tmp_path, 5, _files(1.0))
    partial = tmp_path / "ckpt-000005.tmp-0123abcd"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert ckpt.stranded_checkpoints(tmp_path) == []  # no manifest: not a checkpoint
    assert ckpt.recover_checkpoints(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000005"]
    assert ckpt.load_tensors(tmp_path / "ckpt-000005" / "model.safetensors")["w"][0, 0] == 1.0


def test_a_kill_during_pruning_leaves_only_complete_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (10, 20, 30):
        ckpt.write_checkpoint(tmp_path, step, _files(float(step)))
    with monkeypatch.context() as m:
        _killed_at(m, "prune:renamed")
        with pytest.raises(SystemExit):
            ckpt.prune_checkpoints(tmp_path, keep=1)
    # The victims were renamed to trash names before any file was deleted.
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [30]
    assert sorted(p.name.split(".")[1][:5] for p in tmp_path.iterdir() if "." in p.name) == ["trash"] * 2
    assert ckpt.stranded_checkpoints(tmp_path) == []  # trash is never put back
    ckpt.prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000030"]


def test_a_write_that_fails_with_enospc_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt.write_checkpoint(tmp_path, 1, _files(1.0))
    real = ckpt._write_file

    def full(path: Path, data: bytes) -> None:
        if path.name == "state.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_file", full)
    with pytest.raises(OSError, match=r"No space left on device.*state\.pt"):
        ckpt.write_checkpoint(tmp_path, 2, _files(2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000001"]


def test_the_slow_write_hook_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_atomic.SLOW_WRITE_ENV, raising=False)
    began = time.perf_counter()
    _atomic.fault_point("checkpoint:file")
    assert time.perf_counter() - began < 0.05
    monkeypatch.setenv(_atomic.SLOW_WRITE_ENV, "0.1")
    began = time.perf_counter()
    _atomic.fault_point("checkpoint:file")
    assert time.perf_counter() - began >= 0.1
