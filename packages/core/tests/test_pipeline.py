"""The Pipeline with core alone: composition, checks, sampling, losses, TOML, save/load.

Plugins are not installed here, so a toy network, sampler and guidance are registered
in-process on a fresh registry (core's built-ins: schedules, parameterizations, resamplers).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch
from torch import Tensor, nn

import ddkit
from ddkit import (
    CompositionError,
    ConfigError,
    IntegrityError,
    ModelSpec,
    Record,
    SamplerState,
    UnknownPluginError,
)
from ddkit.denoiser import Denoiser
from ddkit.diffusion.losses import training_losses
from ddkit.pipeline import _toml
from ddkit.registry import Registry
from ddkit.testing import fake_plugin, fresh_registry

torch.set_num_threads(1)


class ToyNet(nn.Module):
    """A tiny time- (and optionally class-) conditional MLP for vectors of ``dim`` features."""

    def __init__(self, dim: int = 2, num_classes: int | None = None, learn_sigma: bool = False) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.out_dim = dim * (2 if learn_sigma else 1)
        self.inp = nn.Linear(dim + 1, 16)
        self.out = nn.Linear(16, self.out_dim)
        self.emb = nn.Embedding(num_classes + 1, 16) if num_classes else None

    @property
    def spec(self) -> ModelSpec:
        null = self.num_classes if self.num_classes else None
        return ModelSpec(self.dim, self.out_dim, (self.dim,), self.num_classes, null)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.inp(torch.cat([x, t.float()[:, None] / 1000], dim=1))
        if self.emb is not None:
            h = h + self.emb(y if y is not None else torch.full_like(t, self.num_classes).long())
        return self.out(torch.tanh(h))


class ToySampler:
    """Ancestral sampling over the full chain; takes one generator or one per sample."""

    stochastic = True

    def __init__(self, forms: tuple[str, ...] = ("model", "mean", "score")) -> None:
        self.guidance_forms = forms

    def check(self, denoiser: Denoiser) -> None:
        pass

    def iterate(
        self, denoiser: Denoiser, x_T: Tensor, *, generator: Any = None, **_: Any
    ) -> Iterator[SamplerState]:
        x = x_T
        T = denoiser.process.num_timesteps
        for k, i in enumerate(reversed(range(T))):
            pred = denoiser(x, i, posterior=True)
            assert pred.mean is not None
            assert pred.log_variance is not None
            if i > 0:
                if isinstance(generator, (list, tuple)):
                    noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generator])
                else:
                    noise = torch.randn(x.shape, generator=generator)
                x = pred.mean + (0.5 * pred.log_variance).exp() * noise
            else:
                x = pred.mean
            yield SamplerState(step=k, t=float(i), x=x, x0=pred.x0, nfe=denoiser.nfe)

    def sample(self, denoiser: Denoiser, x_T: Tensor, **options: Any) -> Tensor:
        states = list(self.iterate(denoiser, x_T, **options))
        return states[-1].x


def mean_only_sampler() -> ToySampler:
    return ToySampler(forms=("mean",))


class ShiftGuidance:
    """A score/mean-form guidance pushing towards +1 (its gradient is a constant)."""

    name = "shift"

    def __init__(self, scale: float = 1.0, form: str = "score") -> None:
        self.scale = scale
        self.forms: tuple[str, ...] = (form,)

    def check(self, spec: ModelSpec, conditioning: Mapping[str, Any]) -> None:
        pass

    def wrap_model(self, model: Any, *, mean_channels: int) -> Any:
        raise AssertionError("score form only")

    def gradient(self, x: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
        return torch.full_like(x, self.scale)


TOYS = fake_plugin(
    "toys",
    model=[Record("toy-net", ToyNet, "A toy MLP.")],
    sampler=[
        Record("toy", ToySampler, "Ancestral toy."),
        Record("toy-mean", mean_only_sampler, "Mean form only."),
    ],
    guidance=[Record("shift", ShiftGuidance, "Constant push.")],
)


@pytest.fixture
def registry() -> Iterator[Registry]:
    with fresh_registry() as reg:
        reg.register(TOYS, distribution="ddkit-toys", version="1.2.3")
        yield reg


def base(**changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "schedule": {"name": "cosine", "timesteps": 40},
        "model": {"name": "toy-net", "dim": 2, "num_classes": 3},
        "sampler": "toy",
    }
    cfg.update(changes)
    return cfg


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturb(model: nn.Module, seed: int) -> None:
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


# -- composition and defaults ------------------------------------------------------------------


def test_defaults_are_filled_in_and_shown(registry: Registry) -> None:
    pipe = ddkit.Pipeline.from_config({"model": {"name": "toy-net"}, "sampler": "toy"})
    assert pipe.config["schedule"] == {"name": "linear", "timesteps": 1000}
    assert pipe.config["parameterization"] == {
        "name": "epsilon",
        "variance": "fixed-small",
        "clip_denoised": True,
    }
    assert pipe.config["loss"] == {"name": "mse"}
    assert pipe.config["resampler"] == {"name": "uniform"}
    assert pipe.config["guidance"] == []
    assert pipe.process.num_timesteps == 1000
    assert pipe.loss_name == "mse"
    assert pipe.sample_shape == (2,)  # from the model's spec
    # The resampler got the schedule's length without the config saying it.
    t, w = pipe.resampler.sample(256, generator=gen())
    assert int(t.max()) < 1000
    assert int(t.max()) > 500
    assert torch.all(w == 1)


def test_default_sampler_comes_from_ddkit_samplers(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="ddpm") as info:
        ddkit.Pipeline.from_config({"model": {"name": "toy-net"}})
    assert "[sampler]" in str(info.value)
    assert "ddkit-samplers" in str(info.value)


def test_dict_and_toml_build_identical_pipelines(registry: Registry, tmp_path: Path) -> None:
    cfg = base(
        parameterization={"name": "v", "variance": "fixed-large"},
        guidance=[{"name": "shift", "scale": 0.5}],
        loss={"name": "mse", "min_snr_gamma": 5.0},
    )
    torch.manual_seed(0)
    a = ddkit.Pipeline.from_config(cfg)
    path = tmp_path / "cfg.toml"
    path.write_text(a.to_toml())
    torch.manual_seed(0)
    b = ddkit.Pipeline.from_toml(path)
    assert a.config == b.config
    assert b.min_snr_gamma == 5.0
    assert b.parameterization.prediction == "v"
    x_a = a.sample(5, generator=gen(3), y=1)
    x_b = b.sample(5, generator=gen(3), y=1)
    assert torch.equal(x_a, x_b)


def test_objects_are_used_as_given_and_marked(registry: Registry) -> None:
    net = ToyNet(dim=2)
    pipe = ddkit.Pipeline.from_config({"sampler": "toy"}, model=net, guidance=[ShiftGuidance(0.1)])
    assert pipe.model is net
    assert pipe.config["model"] == {"object": f"{__name__}.ToyNet"}
    assert pipe.config["guidance"] == [{"object": f"{__name__}.ShiftGuidance"}]
    # A config value that is an object works the same as the keyword.
    other = ddkit.Pipeline.from_config({"model": net, "sampler": ToySampler()})
    assert other.model is net
    assert other.config["sampler"] == {"object": f"{__name__}.ToySampler"}


def test_keyword_objects_reach_the_part_that_takes_them(registry: Registry) -> None:
    pipe = ddkit.Pipeline.from_config(base(guidance=[{"name": "shift"}]), scale=0.25)
    assert pipe.guidances[0].scale == 0.25  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"keyword scael=\.\.\. is used by no part.*did you mean 'scale'"):
        ddkit.Pipeline.from_config(base(guidance=[{"name": "shift"}]), scael=0.25)


def test_swapping_parts_shares_the_model(registry: Registry) -> None:
    pipe = ddkit.Pipeline.from_config(base())
    guided = pipe.with_guidance([{"name": "shift", "scale": 2.0}])
    assert guided.model is pipe.model
    assert guided.ema is pipe.ema
    assert guided.config["guidance"] == [{"name": "shift", "scale": 2.0}]
    assert pipe.config["guidance"] == []
    assert guided.guidance_forms == ("score",)
    x = pipe.sample(64, generator=gen(), y=0)
    pushed = guided.sample(64, generator=gen(), y=0)
    assert pushed.mean() > x.mean()  # the guidance moved the samples towards +1
    with pytest.raises(CompositionError, match="guidance 'shift' acts in the score form"):
        guided.with_sampler("toy-mean")
    mean = pipe.with_sampler("toy-mean").with_guidance([{"name": "shift", "form": "mean"}])
    assert mean.config["sampler"] == {"name": "toy-mean"}
    assert pipe.config["sampler"] == {"name": "toy"}
    assert mean.guidance_forms == ("mean",)
    assert mean.model is pipe.model
    with pytest.raises(ConfigError, match="no sampler named 'tyo'; did you mean 'toy'"):
        pipe.with_sampler("tyo")


# -- sampling ------------------------------------------------------------------------------------


def test_sampling_is_reproducible_and_per_sample_generators_ignore_the_batch(registry: Registry) -> None:
    pipe = ddkit.Pipeline.from_config(base())
    perturb(pipe.model, 1)
    a = pipe.sample(4, generator=gen(5), y=[0, 1, 2, 0])
    assert a.shape == (4, 2)
    assert torch.equal(a, pipe.sample(4, generator=gen(5), y=[0, 1, 2, 0]))
    gens = [gen(100 + i) for i in range(4)]
    full = pipe.sample(4, generator=gens, y=2)
    part = pipe.sample(2, generator=[gen(102), gen(103)], y=2)
    assert torch.allclose(full[2:], part, atol=1e-6)


def test_samples_iter_yields_each_step_and_restores_modes(registry: Registry) -> None:
    pipe = ddkit.Pipeline.from_config(base())
    pipe.model.train()
    states = list(pipe.samples_iter(3, generator=gen(1), y=1))
    assert len(states) == 40
    assert [s.step for s in states] == list(range(40))
    assert torch.equal(states[-1].x, pipe.sample(3, generator=gen(1), y=1))
    assert torch.is_grad_enabled()
    assert pipe.model.training
    with pytest.raises(ValueError, match="x_T holds 2 samples but n=3"):
        pipe.sample(3, x_T=torch.zeros(2, 2), y=0)


def test_use_ema_switches_the_sampling_weights(registry: Registry) -> None:
    pipe = ddkit.Pipeline.from_config(base())
    average = copy.deepcopy(pipe.model)
    perturb(average, 7)
    pipe.ema["0.999"] = average
    assert pipe.sampling_model is average
    with_ema = pipe.sample(3, generator=gen(), y=0)
    pipe.use_ema = False
    assert pipe.sampling_model is pipe.model
    assert not torch.equal(with_ema, pipe.sample(3, generator=gen(), y=0))


def test_conditioning_is_checked_against_the_model(registry: Registry) -> None:
    uncond = ddkit.Pipeline.from_config(base(model={"name": "toy-net"}))
    with pytest.raises(CompositionError, match=r"y were given, but model 'toy-net' is unconditional"):
        uncond.sample(2, y=1)
    cond = ddkit.Pipeline.from_config(base())
    with pytest.raises(CompositionError, match=r"class label 7 is outside model 'toy-net''s labels 0\.\.2"):
        cond.sample(2, y=7)
    with pytest.raises(CompositionError, match=r"shape \[2\]"):
        cond.sample(2, y=[0, 1, 2])
    assert cond.sample(2, y=3).shape == (2, 2)  # the null class is allowed
    assert cond.sample(2).shape == (2, 2)  # a model with a null class samples unconditionally


def test_unknown_sample_shape_is_reported(registry: Registry) -> None:
    class Bare(nn.Module):
        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            return x

    pipe = ddkit.Pipeline.from_config({"sampler": "toy"}, model=Bare())
    with pytest.raises(ConfigError, match=r"sample shape is unknown.*\[sample\] shape"):
        pipe.sample(2)
    shaped = ddkit.Pipeline.from_config({"sampler": "toy", "sample": {"shape": [3]}}, model=Bare())
    assert shaped.sample(2, generator=gen()).shape == (2, 3)


# -- losses --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "variance", "loss"), [("epsilon", "fixed-small", "mse"), ("v", "learned-range", "hybrid")]
)
def test_loss_equals_training_losses(registry: Registry, prediction: str, variance: str, loss: str) -> None:
    learn = variance.startswith("learned")
    pipe = ddkit.Pipeline.from_config(
        base(
            model={"name": "toy-net", "num_classes": 3, "learn_sigma": learn},
            parameterization={"name": prediction, "variance": variance},
            loss=loss,
        )
    )
    perturb(pipe.model, 2)
    x0 = torch.randn(6, 2, generator=gen(1))
    t = torch.tensor([0, 3, 10, 20, 30, 39])
    noise = torch.randn(6, 2, generator=gen(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    got = pipe.loss(x0, t=t, noise=noise, y=y)
    want = training_losses(
        pipe.process, pipe.parameterization, pipe.model, x0, t, noise=noise, loss=loss, model_kwargs={"y": y}
    )
    assert set(got) == set(want)
    assert "loss" in got
    for key in want:
        assert got[key].shape == (6,)
        assert torch.equal(got[key], want[key])
    # t and noise drawn from the generator when left out: the same generator gives the same losses.
    assert torch.equal(
        pipe.loss(x0, generator=gen(9), y=y)["loss"], pipe.loss(x0, generator=gen(9), y=y)["loss"]
    )


# -- save and load -------------------------------------------------------------------------------


def saved(tmp_path: Path) -> tuple[ddkit.Pipeline, Path]:
    pipe = ddkit.Pipeline.from_config(base(guidance=[{"name": "shift", "scale": 0.1}]))
    perturb(pipe.model, 3)
    average = copy.deepcopy(pipe.model)
    perturb(average, 4)
    pipe.ema["0.9999"] = average
    out = tmp_path / "saved"
    pipe.save(out)
    return pipe, out


def test_save_load_gives_bit_identical_samples(registry: Registry, tmp_path: Path) -> None:
    pipe, out = saved(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [
        "ema_0.9999.safetensors",
        "manifest.json",
        "model.safetensors",
        "pipeline.toml",
    ]
    doc = tomllib.loads((out / "pipeline.toml").read_text())
    assert doc["sampler"] == {"name": "toy"}
    assert doc["guidance"] == [{"name": "shift", "scale": 0.1}]
    assert doc["provenance"]["sampler"] == {"name": "toy", "distribution": "ddkit-toys", "version": "1.2.3"}
    assert doc["provenance"]["schedule"]["distribution"] == "ddkit-core"
    assert len(doc["weights"]["model.safetensors"]["sha256"]) == 64
    assert doc["ema"]["rates"] == ["0.9999"]
    loaded = ddkit.Pipeline.load(out)
    assert loaded.config == pipe.config
    assert list(loaded.ema) == ["0.9999"]
    assert torch.equal(loaded.sample(5, generator=gen(8), y=2), pipe.sample(5, generator=gen(8), y=2))
    loaded.use_ema = pipe.use_ema = False
    assert torch.equal(loaded.sample(5, generator=gen(8), y=2), pipe.sample(5, generator=gen(8), y=2))
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in out.iterdir())  # no pickle anywhere


@pytest.mark.parametrize("damage", ["truncate", "tamper", "delete"])
def test_damaged_weights_are_rejected(registry: Registry, tmp_path: Path, damage: str) -> None:
    _, out = saved(tmp_path)
    path = out / "ema_0.9999.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "tamper":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        path.unlink()
    with pytest.raises(IntegrityError, match=r"ema_0\.9999\.safetensors") as info:
        ddkit.Pipeline.load(out)
    if damage == "truncate":
        assert f"{len(data)} were saved" in str(info.value)
    elif damage == "delete":
        assert "is missing" in str(info.value)
    else:
        assert "SHA-256" in str(info.value)


def test_loading_without_the_plugin_names_the_distribution(tmp_path: Path) -> None:
    with fresh_registry() as reg:
        reg.register(TOYS, distribution="ddkit-toys", version="1.2.3")
        _, out = saved(tmp_path)
    with fresh_registry() as reg:  # ddkit-toys is not installed here
        reg.register(fake_plugin("models", model=[Record("toy-net", ToyNet, "")]), distribution="other")
        with pytest.raises(UnknownPluginError) as info:
            ddkit.Pipeline.load(out)
    message = str(info.value)
    assert "sampler 'toy'" in message
    assert "guidance 'shift'" in message
    assert "pip install ddkit-toys==1.2.3" in message


def test_an_object_model_must_be_given_again(registry: Registry, tmp_path: Path) -> None:
    net = ToyNet(dim=2, num_classes=3)
    perturb(net, 5)
    pipe = ddkit.Pipeline.from_config(
        {"sampler": "toy", "schedule": {"name": "cosine", "timesteps": 30}}, model=net
    )
    pipe.save(tmp_path / "p")
    with pytest.raises(
        ConfigError, match=r"\[model\] was an object \(.*ToyNet\).*Pipeline.load\(dir, model="
    ):
        ddkit.Pipeline.load(tmp_path / "p")
    loaded = ddkit.Pipeline.load(tmp_path / "p", model=ToyNet(dim=2, num_classes=3))
    assert torch.equal(loaded.sample(3, generator=gen(), y=1), pipe.sample(3, generator=gen(), y=1))
    with pytest.raises(IntegrityError, match="do not fit the model"):
        ddkit.Pipeline.load(tmp_path / "p", model=ToyNet(dim=2, num_classes=5))


def test_a_saved_pipeline_toml_is_not_a_config(registry: Registry, tmp_path: Path) -> None:
    _, out = saved(tmp_path)
    with pytest.raises(ConfigError, match=r"saved pipeline's pipeline.toml.*Pipeline.load"):
        ddkit.Pipeline.from_toml(out / "pipeline.toml")
    assert ddkit.Pipeline.load(out / "pipeline.toml").config["sampler"] == {"name": "toy"}


# -- bad configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"shedule": {"name": "cosine"}}, r"unknown top-level table 'shedule'; did you mean 'schedule'"),
        ({"schedule": {"name": "cosin"}}, r"\[schedule\] no schedule named 'cosin'; did you mean 'cosine'"),
        (
            {"schedule": {"name": "cosine", "timestep": 10}},
            r"unknown parameter 'timestep'; did you mean 'timesteps'",
        ),
        ({"schedule": {"name": "cosine", "timesteps": "10"}}, r"'timesteps' must be int \(got str '10'\)"),
        ({"schedule": {"timesteps": 10}}, r"\[schedule\] has no 'name'"),
        ({"schedule": 5}, r"\[schedule\] must be a table with a 'name'"),
        ({"model": None}, r"the config has no \[model\]"),
        ({"loss": "msee"}, r"\[loss\] name 'msee' is not a loss; did you mean 'mse'"),
        (
            {"loss": {"name": "mse", "min_snr": 5}},
            r"\[loss\] has no key 'min_snr'; did you mean 'min_snr_gamma'",
        ),
        ({"sample": {"shape": [2, 0]}}, r"\[sample\] 'shape' must be a list of positive ints"),
        ({"sample": {"shap": [2]}}, r"\[sample\] has no key 'shap'; did you mean 'shape'"),
        ({"train": 3}, r"\[train\] must be a table"),
        ({"parameterization": {"name": "epsilon", "variance": "learnd"}}, r"did you mean 'learned'"),
    ],
)
def test_bad_configs_raise_one_clear_error(registry: Registry, change: dict[str, Any], pattern: str) -> None:
    cfg = base()
    cfg.update(change)
    if cfg.get("model", 0) is None:
        del cfg["model"]
    with pytest.raises(ConfigError, match=pattern):
        ddkit.Pipeline.from_config(cfg)


def test_every_problem_is_listed_in_one_error(registry: Registry) -> None:
    cfg = base(sampler="tyo", schedule={"name": "cosine", "timestep": 10}, extra=1)
    with pytest.raises(ConfigError) as info:
        ddkit.Pipeline.from_config(cfg)
    message = str(info.value)
    assert message.startswith("the config has 3 problems")
    assert "'extra'" in message
    assert "'tyo'" in message
    assert "'timestep'" in message


def test_output_channels_must_fit_the_variance_mode(registry: Registry) -> None:
    cfg = base(parameterization={"name": "epsilon", "variance": "learned-range"})
    with pytest.raises(CompositionError) as info:
        ddkit.Pipeline.from_config(cfg)
    message = str(info.value)
    assert "model 'toy-net'" in message
    assert "parameterization 'epsilon' (variance='learned-range')" in message
    assert "outputs 2 channels but 4 were expected" in message


def test_a_guidance_the_sampler_cannot_take_names_both(registry: Registry) -> None:
    pattern = r"guidance 'shift' acts in the score form, but sampler 'toy-mean' accepts only mean"
    with pytest.raises(CompositionError, match=pattern):
        ddkit.Pipeline.from_config(base(sampler="toy-mean", guidance=[{"name": "shift", "form": "score"}]))


def test_sample_shape_must_fit_the_model(registry: Registry) -> None:
    with pytest.raises(
        CompositionError, match=r"\[sample\] shape \[3\] has 3 channels, but model 'toy-net' takes 2"
    ):
        ddkit.Pipeline.from_config(base(sample={"shape": [3]}))


def test_factory_errors_name_the_part(registry: Registry) -> None:
    with pytest.raises(ConfigError, match=r"\[\[guidance\]\] #2 guidance 'shift'"):
        ddkit.Pipeline.from_config(base(guidance=[{"name": "shift"}, {"name": "shift", "scael": 1}]))


def test_from_toml_reports_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 'x'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
        ddkit.Pipeline.from_toml(bad)
    with pytest.raises(ConfigError, match="no config file"):
        ddkit.Pipeline.from_toml(tmp_path / "missing.toml")


# -- the TOML writer -------------------------------------------------------------------------------


def test_toml_writer_round_trips() -> None:
    doc = {
        "title": 'quotes " and \\ and\nnewline, ünïcode',
        "schedule": {"name": "cosine", "timesteps": 1000, "s": 0.008, "tiny": 1e-5, "big": 1e20},
        "model": {"name": "m", "attention": [16, 8], "flag": False, "nested": {"a": 1, "b": [1.5, "x"]}},
        "weights": {"model.safetensors": {"sha256": "ab" * 32, "bytes": 10}, "key with space": {}},
        "guidance": [{"name": "classifier-free", "scale": 3.0}, {"name": "shift", "scale": [1.0, 2.0]}],
        "limits": {"hi": math.inf, "lo": -math.inf},
        "empty": [],
    }
    text = _toml.dumps(doc)
    assert _toml.loads(text) == doc
    assert "[[guidance]]" in text
    assert '"model.safetensors" = {' in text
    with pytest.raises(TypeError, match=r"cannot write model\.obj"):
        _toml.dumps({"model": {"obj": object()}})


class _ModeRecorder(nn.Module):
    """A tiny ε model whose sub-layer records whether it was in training mode at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)
        self.seen: list[bool] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.seen.append(self.inner.training)
        return self.inner(x) * 0.0


@pytest.mark.parametrize("root_training", [True, False])
def test_sampling_runs_every_module_in_eval_mode_and_restores_the_root_mode(
    registry: Registry, root_training: bool
) -> None:
    model = _ModeRecorder()
    model.train(root_training)
    model.inner.train(True)  # a sub-module left in training mode under the root's mode
    pipe = ddkit.Pipeline.from_config(
        {"schedule": {"name": "cosine", "timesteps": 5}, "sampler": "toy"}, model=model
    )
    pipe.sample(x_T=torch.randn(4, 2))
    assert model.seen
    assert not any(model.seen)
    assert model.training is root_training
    assert model.inner.training is root_training
    model.seen.clear()
    pipe.sample(x_T=torch.randn(4, 2))  # now every module is in the root's mode already
    assert model.seen
    assert not any(model.seen)
    assert model.training is root_training
    assert model.inner.training is root_training
