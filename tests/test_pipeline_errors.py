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


# -- sampling and loss inputs: refused before the first model call, with a ddkit error --------------

TOY = {
    "schedule": {"name": "linear", "timesteps": 50},
    "parameterization": {"name": "epsilon", "clip_denoised": False},
    "model": {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1},
    "sampler": {"name": "ddim", "steps": 5},
}


class _Counting(torch.nn.Module):
    """An MLP-like model that counts its calls and returns what ``out`` says."""

    def __init__(self, out: str = "ok") -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.out = out
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        self.calls += 1
        if self.out == "none":
            return None
        if self.out == "narrow":
            return x[:, :1]
        if self.out == "nan":
            return x * float("nan")
        out: torch.Tensor = self.lin(x)
        return out


def _toy(out: str = "ok") -> tuple[ddkit.Pipeline, _Counting]:
    model = _Counting(out)
    cfg = {k: v for k, v in TOY.items() if k != "model"}
    return ddkit.Pipeline.from_config({**cfg, "sample": {"shape": [2]}}, model=model), model


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x_T": torch.full((2, 2), float("nan"))}, ddkit.errors.NonFiniteError, "x_T holds NaN or infinity"),
        ({"x_T": torch.full((2, 2), float("inf"))}, ddkit.errors.NonFiniteError, "in 2 of 2 samples"),
        ({"x_T": torch.ones(2, 2, dtype=torch.long)}, TypeError, "floating-point tensor"),
        ({"x_T": torch.randn(2)}, ValueError, r"shape \[B, C, ...\]"),
        ({"x_T": torch.randn(2, 3)}, ValueError, r"of shape \[3\], but the pipeline samples shape \[2\]"),
        ({"x_T": [[0.0, 1.0]]}, TypeError, "must be a torch.Tensor"),
        ({"n": 2, "x_T": torch.randn(3, 2)}, ValueError, "x_T holds 3 samples but n=2"),
        ({"n": 0}, ValueError, r"n must be a positive int, the number of samples \(got 0\)"),
        ({"n": 2.0}, TypeError, "got float 2.0"),
        ({}, ValueError, "give n, the number of samples, or x_T"),
        ({"n": 2, "generator": 42}, TypeError, r"generator=torch.Generator\(\).manual_seed\(42\)"),
        ({"n": 2, "generator": [torch.Generator()]}, ValueError, "one per sample: 2 \\(got 1\\)"),
        ({"n": 2, "y": "cat"}, TypeError, r"y=classes.index\('cat'\)"),
    ],
)
def test_bad_sampling_inputs_are_refused_before_the_model_runs(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    pipe, model = _toy()
    with pytest.raises(error, match=match) as info:
        pipe.sample(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ddkit.errors.DdkitError)
    assert model.calls == 0


def test_string_labels_for_a_conditional_model_name_the_fix() -> None:
    from ddkit.pipeline import checks

    spec = ddkit.ModelSpec(num_classes=3)
    with pytest.raises(ddkit.errors.InputTypeError, match=r"classes.index\('cat'\)"):
        checks.normalize_conditioning(2, {"y": "cat"}, object(), spec, "model 'x'", torch.device("cpu"))
    with pytest.raises(ddkit.errors.InputTypeError, match="must be an int, a list of ints"):
        checks.normalize_conditioning(2, {"y": object()}, object(), spec, "model 'x'", torch.device("cpu"))


def test_float64_and_numpy_x_T_work() -> None:
    import numpy as np

    pipe, _ = _toy()
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    expected = pipe.sample(x_T=x)
    assert torch.allclose(pipe.sample(x_T=x.double()), expected)  # cast to the weights' float32
    assert torch.allclose(pipe.sample(x_T=x.numpy()), expected)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="NumPy array of dtype int64"):
        pipe.sample(x_T=np.zeros((3, 2), dtype=np.int64))  # type: ignore[arg-type]
    # Below the pipeline, a sampler says how to fix the dtype instead of failing inside the network.
    denoiser = pipe.denoiser()
    with pytest.raises(ddkit.errors.InputError, match=r"x_T is float64 but the model's weights are float32"):
        pipe.sampler.sample(denoiser, x.double())


@pytest.mark.parametrize(
    ("out", "error", "match"),
    [
        ("none", TypeError, "returned NoneType for x of shape \\(2, 2\\)"),
        ("narrow", ValueError, r"returned shape \(2, 1\) .* needs \(2, 2\)"),
        ("nan", ddkit.errors.NonFiniteError, r"NaN or infinite after its last step \(step 5 of 5\)"),
    ],
)
def test_a_bad_model_output_is_named(out: str, error: type[Exception], match: str) -> None:
    pipe, model = _toy(out)
    with pytest.raises(error, match=match) as info:
        pipe.sample(2)
    assert isinstance(info.value, ddkit.errors.DdkitError)
    if out != "nan":
        assert model.calls == 1  # refused at the first call, not after sampling
    assert not model._forward_hooks  # the one-call check removed itself


def test_loss_refuses_out_of_range_and_misshapen_timesteps() -> None:
    pipe, model = _toy()
    x0 = torch.randn(4, 2)
    for t in (torch.tensor([-1, 0, 1, 2]), torch.tensor([50, 0, 1, 2])):
        with pytest.raises(ddkit.errors.InputError, match=r"outside the schedule's steps 0..49 .*not count"):
            pipe.loss(x0, t=t)
    with pytest.raises(ddkit.errors.InputError, match=r"t must have shape \[4\]"):
        pipe.loss(x0, t=torch.tensor([1, 2]))
    with pytest.raises(ddkit.errors.InputTypeError, match="t must be a tensor"):
        pipe.loss(x0, t=3)  # type: ignore[arg-type]
    with pytest.raises(ddkit.errors.InputError, match=r"x0 has samples of shape \[3\]"):
        pipe.loss(torch.randn(4, 3))
    assert model.calls == 0
    assert pipe.loss(x0, t=torch.tensor([0, 49, 3, 4]))["loss"].shape == (4,)


def test_a_plan_the_schedule_cannot_hold_is_a_composition_error() -> None:
    with pytest.raises(ddkit.CompositionError, match="sampler 'ddim': cannot take 500 steps from a chain"):
        ddkit.Pipeline.from_config({**TOY, "sampler": {"name": "ddim", "steps": 500}})


@pytest.mark.parametrize(
    ("kind", "name", "params", "match"),
    [
        ("sampler", "ddim", {"eta": float("inf")}, "'eta' must be finite"),
        ("sampler", "euler", {"s_noise": float("inf")}, "'s_noise' must be finite"),
        ("model", "mlp", {"time_scale": float("nan")}, "'time_scale' must be finite"),
        ("schedule", "cosine", {"max_beta": float("nan")}, "'max_beta' must be finite"),
        ("schedule", "linear", {"timesteps": 10**12}, "'timesteps' must be at most 100000"),
        ("schedule", "cosine", {"s": -1.0}, r"'s' must lie in \[0, 1\)"),
        ("schedule", "sigmoid", {"tau": 1e-300}, "exp\\(\\) overflows"),
    ],
)
def test_non_finite_and_overflowing_parameters_are_refused(
    kind: str, name: str, params: dict[str, object], match: str
) -> None:
    with pytest.raises(ddkit.errors.DdkitError, match=match):
        ddkit.create(kind, name, **params)


def test_an_infinite_default_may_be_given_explicitly() -> None:
    assert ddkit.create("sampler", "euler", s_tmax=float("inf")).s_tmax == float("inf")
