"""Bad configs written as a new user would write them: each gives one clear error before any work.

Every case is a TOML file with one mistake; the error must name the table, the wrong value and
the fix, and nothing may be trained or sampled first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ddkit
from ddkit import CompositionError, ConfigError

GOOD = """
[schedule]
name = "cosine"
timesteps = 100

[model]
name = "adm-unet"
image_size = 8
num_channels = 32
channel_mult = "1,2"
num_res_blocks = 1
attention_resolutions = "4"
class_cond = true
num_classes = 3
null_class = true

[sampler]
name = "ddim"
steps = 10

[[guidance]]
name = "classifier-free"
scale = 3.0
"""


def build(tmp_path: Path, text: str) -> ddkit.Pipeline:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return ddkit.Pipeline.from_toml(path)


def test_the_good_config_builds(tmp_path: Path) -> None:
    pipe = build(tmp_path, GOOD)
    assert pipe.sample(2, generator=torch.Generator().manual_seed(0), y=1).shape == (2, 3, 8, 8)


@pytest.mark.parametrize(
    ("old", "new", "error", "fragments"),
    [
        pytest.param(
            'name = "ddim"',
            'name = "ddimm"',
            ConfigError,
            ["[sampler]", "no sampler named 'ddimm'", "did you mean 'ddim'", "available samplers:"],
            id="misspelt-name",
        ),
        pytest.param(
            "\nsteps = 10",
            "\nstpes = 10",
            ConfigError,
            ["[sampler]", "unknown parameter 'stpes'", "did you mean 'steps'"],
            id="misspelt-key",
        ),
        pytest.param(
            "\nsteps = 10",
            '\nsteps = "10"',
            ConfigError,
            ["[sampler]", "'steps' must be int", "got str '10'"],
            id="wrong-type",
        ),
        pytest.param(
            "[schedule]",
            "[shedule]",
            ConfigError,
            ["unknown top-level table 'shedule'", "did you mean 'schedule'"],
            id="misspelt-table",
        ),
        pytest.param(
            'name = "adm-unet"',
            'name = "adm-unet"\nnum_chanels = 64',
            ConfigError,
            ["[model]", "'num_chanels'", "did you mean 'num_channels'"],
            id="misspelt-model-flag",
        ),
        pytest.param(
            "[sampler]",
            '[parameterization]\nname = "epsilon"\nvariance = "learned-range"\n\n[sampler]',
            CompositionError,
            [
                "model 'adm-unet'",
                "parameterization 'epsilon' (variance='learned-range')",
                "outputs 3 channels but 6 were expected",
                "learn_sigma",
            ],
            id="channels-vs-variance",
        ),
        pytest.param(
            'name = "classifier-free"\nscale = 3.0',
            'name = "classifier"\nform = "mean"\nclassifier = {name = "adm-classifier", image_size = 8}',
            CompositionError,
            ["guidance 'classifier'", "mean form", "sampler 'ddim'", "choose another sampler"],
            id="guidance-the-sampler-cannot-take",
        ),
        pytest.param(
            "class_cond = true\nnum_classes = 3\nnull_class = true",
            "",
            CompositionError,
            ["guidance 'classifier-free' does not fit model 'adm-unet'", "no class"],
            id="classifier-free-on-unconditional-model",
        ),
        pytest.param(
            "\nsteps = 10",
            "\nsteps = 10\n\n[sample]\nshape = [1, 8, 8]",
            CompositionError,
            ["[sample] shape [1, 8, 8] has 1 channels", "model 'adm-unet' takes 3"],
            id="sample-shape-vs-model",
        ),
        pytest.param(
            "[model]",
            '[parameterization]\nname = "previous-x"\n\n[model]',
            CompositionError,
            ["sampler 'ddim'", "'previous-x'"],
            id="sampler-cannot-run-the-parameterization",
        ),
    ],
)
def test_a_mistake_gives_one_clear_error(
    tmp_path: Path, old: str, new: str, error: type[Exception], fragments: list[str]
) -> None:
    assert old in GOOD
    with pytest.raises(error) as info:
        build(tmp_path, GOOD.replace(old, new, 1))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_labels_for_an_unconditional_model_are_refused(tmp_path: Path) -> None:
    text = GOOD.replace("class_cond = true\nnum_classes = 3\nnull_class = true", "").split("[[guidance]]")[0]
    pipe = build(tmp_path, text)
    with pytest.raises(CompositionError, match=r"labels y were given, but model 'adm-unet' is unconditional"):
        pipe.sample(2, y=1)


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.toml is not valid TOML.*line"):
        build(tmp_path, GOOD.replace('name = "ddim"', 'name = "ddim'))
