"""The quickstart's shell commands, run as written in a fresh clone and fresh environments.

Issue 20 item 9: the install lines must work from this repository (the packages are not on PyPI)
and install the CPU build of torch; ``ddkit train`` on the 2-D config must end by printing a
``ddkit sample`` command that works for 2-D points. Slow (two fresh environments with torch):
marked ``isolation`` like the other tests that build environments.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.isolation

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart.md"


def install_blocks() -> list[str]:
    """The ```bash blocks of the quickstart's Install section, joined across backslash newlines."""
    text = QUICKSTART.read_text()
    section = text[text.index("## Install") : text.index("\n## ", text.index("## Install") + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [block.replace("\\\n", " ") for block in blocks]


def _environment() -> dict[str, str]:
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("DDKIT_")}


def _run(line: str, cwd: Path) -> str:
    # /opt/wheels holds the CPU torch wheel here; elsewhere $DDKIT_TORCH_FIND_LINKS says where it is.
    folder = os.environ.get("DDKIT_TORCH_FIND_LINKS")
    if folder:
        line = line.replace("/opt/wheels", folder)
    done = subprocess.run(
        ["bash", "-c", line],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"`{line}` failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("uv") is None or shutil.which("git") is None:
        pytest.fail("uv and git must be on PATH for the quickstart test (nox -s tests installs uv)")
    target = tmp_path / "ddkit"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=300)
    return target


def test_the_install_section_has_a_uv_and_a_pip_block() -> None:
    blocks = install_blocks()
    assert len(blocks) == 2
    for block in blocks:
        assert "--find-links /opt/wheels torch==2.13.0" in block  # never the CUDA build from PyPI
        assert "./packages/core" in block
        assert "pip install ddkit-core" not in block


@pytest.mark.parametrize("which", ["uv", "pip"])
def test_the_install_commands_work_as_written(clone: Path, which: str) -> None:
    block = install_blocks()[0 if which == "uv" else 1]
    output = ""
    for line in block.strip().splitlines():
        output = _run(line, clone)
    assert "ddim" in output  # the last line is `.venv/bin/ddkit plugins`
    python = clone / ".venv" / "bin" / "python"
    version = _run(f"{shlex.quote(str(python))} -c 'import torch; print(torch.__version__)'", clone)
    assert version.strip() == "2.13.0+cpu"
    if which == "uv":
        # `ddkit train` on the 2-D config prints a sample command that works for points.
        out = _run(
            ".venv/bin/ddkit train examples/configs/toy-2d.toml --out runs/toy --steps 5 --no-progress", clone
        )
        command = out.strip().splitlines()[-1].removeprefix("sample from it with: ")
        assert "--npz" in command
        assert "--out grid.png" not in command
        _run(f".venv/bin/{command} --no-progress", clone)
        assert (clone / "samples.npz").is_file()
