"""One integrity manifest over a whole saved pipeline: pipeline.toml and every weights file,
classifier-guidance weights included (copied into the folder and resolved against it)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import tomllib
import torch
from safetensors.torch import save_file

import ddkit
from ddkit.pipeline import io as pipeline_io

#: Data of 3 dimensions, so that an unconditional mlp gives 3 logits: a noisy-data classifier of 3 classes.
CLASSIFIER = {"name": "mlp", "dim": 3, "hidden": 8, "depth": 1}


def guided(tmp_path: Path) -> ddkit.Pipeline:
    """A class-conditional pipeline with classifier guidance whose weights path is relative to the CWD."""
    torch.manual_seed(0)
    clf = ddkit.create("model", "mlp", dim=3, hidden=8, depth=1)
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(torch.randn_like(p))
    save_file(clf.state_dict(), str(tmp_path / "clf.safetensors"))
    return ddkit.Pipeline.from_config(
        {
            "model": {"name": "mlp", "dim": 3, "hidden": 8, "depth": 1, "num_classes": 3},
            "schedule": {"name": "linear", "timesteps": 50},
            "sampler": {"name": "ddpm"},
            "guidance": [
                {
                    "name": "classifier",
                    "scale": 2.0,
                    "classifier": {**CLASSIFIER, "weights": "clf.safetensors"},
                }
            ],
        }
    )


def draw(pipe: ddkit.Pipeline) -> torch.Tensor:
    return pipe.sample(4, generator=torch.Generator().manual_seed(3), y=torch.tensor([0, 1, 2, 0]))


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, torch.Tensor]:
    monkeypatch.chdir(tmp_path)
    pipe = guided(tmp_path)
    expected = draw(pipe)
    out = tmp_path / "saved"
    pipe.save(out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # loading must not depend on the working directory
    return out, expected


def test_guidance_weights_are_saved_hashed_and_resolved_against_the_folder(
    saved: tuple[Path, torch.Tensor],
) -> None:
    out, expected = saved
    doc = tomllib.loads((out / "pipeline.toml").read_text())
    assert doc["guidance"][0]["classifier"]["weights"] == "guidance1-classifier.safetensors"
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        "pipeline.toml",
        "model.safetensors",
        "guidance1-classifier.safetensors",
    }
    loaded = ddkit.Pipeline.load(out)
    assert torch.equal(draw(loaded), expected)
    # A re-save of the loaded pipeline into another folder is self-contained too.
    again = out.parent / "again"
    loaded.save(again)
    assert torch.equal(draw(ddkit.Pipeline.load(again)), expected)


EDITS = {
    "schedule": ('name = "linear"', 'name = "cosine"'),
    "timesteps": ("timesteps = 50", "timesteps = 40"),
    "parameterization": ('name = "epsilon"', 'name = "x0"'),
    "sampler": ('name = "ddpm"', 'name = "ddim"'),
    "use_ema": ("use_ema = true", "use_ema = false"),
    "guidance scale": ("scale = 2.0", "scale = 9.0"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_any_change_to_the_config_is_refused_naming_the_file(
    saved: tuple[Path, torch.Tensor], edit: str
) -> None:
    out, _ = saved
    config = out / "pipeline.toml"
    old, new = EDITS[edit]
    text = config.read_text()
    assert old in text, f"the saved config has no {old!r}"
    config.write_text(text.replace(old, new, 1))
    with pytest.raises(ddkit.IntegrityError, match=re.escape(str(config)) + ".*does not match the SHA-256"):
        ddkit.Pipeline.load(out)


@pytest.mark.parametrize("name", ["guidance1-classifier.safetensors", "model.safetensors", "manifest.json"])
def test_changed_or_missing_files_are_refused_naming_them(
    saved: tuple[Path, torch.Tensor], name: str
) -> None:
    out, _ = saved
    path = out / name
    if name == "manifest.json":
        path.unlink()
        match = "has no manifest.json"
    else:
        data = path.read_bytes()
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        match = re.escape(str(path)) + ".*does not match the SHA-256"
    with pytest.raises(ddkit.IntegrityError, match=match):
        ddkit.Pipeline.load(out)


def test_reseal_accepts_a_deliberate_edit(saved: tuple[Path, torch.Tensor]) -> None:
    out, _ = saved
    config = out / "pipeline.toml"
    config.write_text(config.read_text().replace("scale = 2.0", "scale = 1.0", 1))
    pipeline_io.reseal(out)
    assert ddkit.Pipeline.load(out).config["guidance"][0]["scale"] == 1.0


def test_a_save_without_manifest_from_ddkit_0_1_still_loads_with_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "old"
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config({"model": {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1}})
    pipe.save(out)
    (out / "manifest.json").unlink()
    config = out / "pipeline.toml"
    config.write_text(config.read_text().replace("format = 2", "format = 1", 1))
    with pytest.warns(UserWarning, match="hashed only the weights"):
        loaded = ddkit.Pipeline.load(out)
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in pipe.model.state_dict().items())
    assert os.path.exists(out / "model.safetensors")
