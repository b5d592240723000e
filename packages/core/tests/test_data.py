"""Built-in data: 2-D toys, procedural shapes, the image-folder loader and ``ddkit.data.load``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddkit import data
from ddkit.data import ArrayDataset, FolderDataset
from ddkit.data.shapes import SHAPES
from ddkit.errors import ConfigError


def test_names_and_descriptions() -> None:
    assert data.names() == ["rings", "spirals", "gaussians", "moons", "checkerboard", "shapes", "folder"]
    assert "8 Gaussians" in data.describe("gaussians")
    with pytest.raises(ConfigError, match=r"no built-in dataset named 'spiral'.*did you mean 'spirals'"):
        data.load("spiral")
    with pytest.raises(ConfigError, match=r"'moons' does not take these parameters.*colour"):
        data.load("moons", colour=3)


@pytest.mark.parametrize(("name", "classes"), [("rings", 3), ("spirals", 2), ("gaussians", 8), ("moons", 2)])
def test_toys_are_deterministic_bounded_and_labelled(name: str, classes: int) -> None:
    a = data.load(name, n=2000, seed=3)
    b = data.load(name, n=2000, seed=3)
    c = data.load(name, n=2000, seed=4)
    assert isinstance(a, ArrayDataset)
    assert a.sample_shape == (2,)
    assert len(a) == 2000
    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, c.samples)
    assert a.samples.dtype == torch.float32
    assert a.samples.abs().max() < 1.2
    assert a.labels is not None
    assert a.num_classes == classes
    assert set(a.labels.tolist()) == set(range(classes))
    x, y = a[0]
    assert x.shape == (2,)
    assert isinstance(y, int)


def test_toy_geometry() -> None:
    rings = data.load("rings", n=3000)
    radius = rings.samples.norm(dim=1)
    for k, r in enumerate((0.3, 0.6, 0.9)):
        assert (radius[rings.labels == k] - r).abs().mean() < 0.03
    gauss = data.load("gaussians", n=4000)
    angle = torch.atan2(gauss.samples[:, 1], gauss.samples[:, 0]) % (2 * np.pi)
    nearest = torch.round(angle / (2 * np.pi / 8)).long() % 8
    assert (nearest == gauss.labels).float().mean() > 0.99
    board = data.load("checkerboard", n=4000)
    assert board.labels is None
    assert board.num_classes is None
    cell = torch.floor((board.samples + 1) / 0.5).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()  # only the dark squares
    assert board.samples.min() >= -1
    assert board.samples.max() <= 1


def test_true_sampler_and_sliced_wasserstein() -> None:
    draw = data.sampler("gaussians")
    fresh, labels = draw(3000, torch.Generator().manual_seed(11))
    assert fresh.shape == (3000, 2)
    assert labels is not None
    train = data.load("gaussians", n=3000, seed=0).samples
    same = data.sliced_wasserstein(fresh, train)
    other = data.sliced_wasserstein(fresh, data.load("moons", n=3000).samples)
    shifted = data.sliced_wasserstein(fresh, train + 0.3)
    assert same < 0.04
    assert other > 4 * same
    assert shifted > 4 * same
    assert data.sliced_wasserstein(train, train) == 0.0
    # Different sizes are compared at common quantiles.
    assert data.sliced_wasserstein(fresh[:1000], train) < 0.06
    with pytest.raises(ValueError, match="expected point sets"):
        data.sliced_wasserstein(fresh, torch.zeros(5, 3))
    with pytest.raises(ConfigError, match="no 2-D toy named 'circle'"):
        data.sampler("circle")


def test_shapes_are_class_conditional_images() -> None:
    ds = data.load("shapes", image_size=16, n=300, num_classes=10, seed=1)
    assert isinstance(ds, ArrayDataset)
    assert ds.sample_shape == (3, 16, 16)
    assert ds.num_classes == 10
    assert len(SHAPES) == 10
    assert ds.samples.min() >= -1
    assert ds.samples.max() <= 1
    assert torch.equal(ds.samples, data.load("shapes", image_size=16, n=300, num_classes=10, seed=1).samples)
    assert ds.labels is not None
    assert set(ds.labels.tolist()) == set(range(10))
    # Each class has its own mean colour: the brightest channel of a class's foreground differs.
    fg = []
    for k in range(10):
        imgs = ds.samples[ds.labels == k]
        mask = imgs.mean(dim=1, keepdim=True) > -0.5
        fg.append((imgs * mask).sum(dim=(0, 2, 3)) / mask.sum())
    colours = torch.stack(fg)
    gaps = torch.cdist(colours, colours) + torch.eye(10) * 10
    assert gaps.min() > 0.2
    # Positions and scales vary within a class.
    circles = ds.samples[ds.labels == 0].mean(dim=1)
    assert (circles[0] - circles[1]).abs().max() > 0.5


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"image_size": 4}, "'image_size' must lie in \\[8, 256\\]"),
        ({"num_classes": 11}, "'num_classes' must lie in \\[1, 10\\]"),
        ({"n": 0}, "'n' must be a positive number of images"),
        ({"n": 2.5}, "'n' must be an int"),
    ],
)
def test_shapes_reject_bad_parameters(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        data.load("shapes", **params)


def _image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    _image(tmp_path / "cats" / "a.png", (40, 20), (255, 0, 0))
    _image(tmp_path / "cats" / "deep" / "b.jpg", (20, 20), (255, 0, 0))
    _image(tmp_path / "dogs" / "c.png", (20, 60), (0, 0, 255))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    ds = data.load("folder", path=tmp_path, image_size=8)
    assert isinstance(ds, FolderDataset)
    assert ds.classes == ["cats", "dogs"]
    assert len(ds) == 3
    assert ds.num_classes == 2
    assert ds.sample_shape == (3, 8, 8)
    x, y = ds[2]
    assert y == 1
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x[2], torch.ones(8, 8))
    assert torch.allclose(x[0], -torch.ones(8, 8))


def test_folder_centre_crops(tmp_path: Path) -> None:
    img = np.zeros((10, 30, 3), dtype=np.uint8)
    img[:, 10:20] = 255  # the white centre square survives the crop
    Image.fromarray(img).save(tmp_path / "wide.png")
    ds = FolderDataset(tmp_path, image_size=10)
    assert ds.labels is None
    x = ds[0]
    assert isinstance(x, torch.Tensor)
    assert torch.allclose(x, torch.ones(3, 10, 10))


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        FolderDataset(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no images"):
        FolderDataset(tmp_path)
    _image(tmp_path / "a.png", (4, 4), (0, 0, 0))
    _image(tmp_path / "sub" / "b.png", (4, 4), (0, 0, 0))
    with pytest.raises(ConfigError, match="holds images both directly and in subfolders"):
        FolderDataset(tmp_path)
