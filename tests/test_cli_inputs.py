"""Command-line values that used to fail late (after loading, training or sampling) fail first, in one line.

Issue 20 items 8 and 9: every ddkit error prints as ``ddkit CMD: error: ...`` with exit status 1
(no traceback); a bad ``--out`` extension, ``--device cuda`` without CUDA and ``--per-class 0``
are refused before any work; ``ddkit --help`` does not import torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddkit
from ddkit.cli import main
from ddkit.cli.train import sample_command, trainer_options

TOY = {
    "schedule": {"name": "linear", "timesteps": 20},
    "parameterization": {"name": "epsilon", "clip_denoised": False},
    "model": {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1},
    "sampler": {"name": "ddim", "steps": 4},
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "toy"
    ddkit.Pipeline.from_config(TOY).save(path)
    return path


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, expecting exit status 1 and exactly one ``error:`` message with no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ddkit {argv[0]}: error: ")
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--out", "grid.gif"], "--out 'grid.gif' must end in .png"),
        (["--out", "grid"], "(got no extension); e.g. --out grid.png"),
        (["--npz", "samples.npy"], "--npz 'samples.npy' must end in .npz"),
        (["--npz", "s.npz", "--n", "0"], "--n must be a positive int (got 0)"),
        (["--npz", "s.npz", "--batch-size", "0"], "--batch-size must be a positive int (got 0)"),
        (["--npz", "s.npz", "--device", "potato"], "--device 'potato' is not a device"),
    ],
)
def test_sample_refuses_bad_options_before_loading(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], match: str
) -> None:
    # The pipeline directory does not exist: the options are refused before it is looked at.
    assert match in _error(capsys, ["sample", str(tmp_path / "missing"), *extra])


def test_device_cuda_without_cuda_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, saved: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _error(capsys, ["sample", str(saved), "--npz", str(tmp_path / "s.npz"), "--device", "cuda"])
    assert "--device cuda: CUDA is not available here" in err
    assert "use --device cpu" in err
    assert not (tmp_path / "s.npz").exists()


def test_a_png_of_non_image_samples_is_refused_before_sampling(
    capsys: pytest.CaptureFixture[str], saved: Path, tmp_path: Path
) -> None:
    err = _error(capsys, ["sample", str(saved), "--out", str(tmp_path / "grid.png"), "--no-progress"])
    assert "samples of shape [2] are not images" in err


def test_any_ddkit_error_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], saved: Path, tmp_path: Path
) -> None:
    argv = ["sample", str(saved), "--npz", str(tmp_path / "s.npz"), "--steps", "500", "--no-progress"]
    err = _error(capsys, argv)
    assert "sampler 'ddim'" in err
    assert "500 steps" in err
    assert err.count("\n") == 1


def test_demo_refuses_per_class_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _error(capsys, ["demo", "--fast", "--out", str(tmp_path / "demo"), "--per-class", "0"])
    assert "--per-class must be a positive int (got 0)" in err
    assert not (tmp_path / "demo").exists()  # nothing trained


def test_train_suggests_lr_for_learning_rate() -> None:
    cfg = {"train": {"steps": 1, "batch_size": 2, "learning_rate": 1e-3}, "data": {"name": "moons"}}
    with pytest.raises(ddkit.ConfigError, match=r"no key 'learning_rate'; did you mean 'lr'\?"):
        trainer_options(cfg, None)


def test_train_suggests_a_command_that_works_for_the_data() -> None:
    assert sample_command(Path("run/pipeline"), (2,)).endswith("--npz samples.npz")
    assert sample_command(Path("run/pipeline"), (3, 32, 32)).endswith("--out grid.png")


def test_help_and_version_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from ddkit.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['sample', '--help'], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
