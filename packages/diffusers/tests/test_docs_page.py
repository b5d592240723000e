"""docs/diffusers.md cannot rot: its Python blocks run, in order, in one namespace, in a temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

PAGE = Path(__file__).resolve().parents[3] / "docs" / "diffusers.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def test_bring_your_diffusers_model_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 4, f"{PAGE} lost its examples"
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict[str, object] = {"__name__": "docs_diffusers"}
    try:
        for i, block in enumerate(blocks, 1):
            exec(compile(block, f"docs/diffusers.md (python block {i})", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    images = namespace["images"]
    assert isinstance(images, torch.Tensor)
    assert images.shape == (2, 3, 16, 16)
    assert (tmp_path / "tiny-ddim" / "model_index.json").is_file()
