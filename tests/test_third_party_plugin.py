"""The third-party plugin path, end to end: examples/ddkit-sampler-example as a user would meet it.

One fresh environment (uv) gets the released packages and the example, built from source: its
names are listed with its distribution, a pipeline built from a config samples with its sampler
and schedule, uninstalling it makes the names unknown again, and a build of it declaring another
plugin API major version is reported as incompatible instead of loaded. In-process, UniPC is
compared with ddkit's DDIM and with diffusers, and the conformance kit is shown to catch broken
samplers.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from test_isolation import TORCH, clean_env, find_links, uv
from torch import Tensor

import ddkit
from ddkit.denoiser import Denoiser
from ddkit.diffusion import GaussianProcess
from ddkit.protocols import SamplerState
from ddkit.sampling import Plan, Run, SamplerBase
from ddkit.testing import AnalyticGaussian, SamplerConformance, fresh_registry
from ddkit.testing.sampler_conformance import linear_betas

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ddkit-sampler-example"
DISTRIBUTION = "ddkit-sampler-example"
RELEASED = [ROOT / "packages" / name for name in ("core", "samplers", "models", "guidance")]

torch.set_num_threads(1)

# -- a fresh environment with the example installed, then uninstalled, then incompatible -------

INSTALLED = """
import json, sys, warnings
import torch, ddkit
import ddkit.testing
from ddkit.registry import get_registry
result = {"pytest_imported": "pytest" in sys.modules}
pipeline = ddkit.Pipeline.from_config({
    "schedule": {"name": "laplace"},
    "model": {"name": "mlp", "dim": 2, "hidden": 32, "depth": 2},
    "sampler": {"name": "unipc", "steps": 10},
})
out = pipeline.sample(8, generator=torch.Generator().manual_seed(0))
result["pipeline"] = {
    "shape": list(out.shape), "finite": bool(out.isfinite().all()),
    "sampler": type(pipeline.sampler).__module__ + "." + type(pipeline.sampler).__name__,
    "schedule": type(pipeline.schedule).__name__, "config": pipeline.config["sampler"],
    "nfe": pipeline.sampler.last_nfe,
}
result["qualified"] = type(ddkit.create("sampler", "ddkit-sampler-example:unipc", order=3)).__name__
result["describe"] = ddkit.describe("schedule", "laplace").distribution
print(json.dumps(result))
"""

UNKNOWN = """
import json, warnings
import ddkit
from ddkit.registry import get_registry
result = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    get_registry()
result["warnings"] = [str(w.message) for w in caught]
result["rows"] = [r.to_json() for r in get_registry().rows() if r.distribution == "ddkit-sampler-example"]
for kind, name in (("sampler", "unipc"), ("schedule", "laplace")):
    try:
        ddkit.create(kind, name)
    except Exception as exc:
        result[name] = [type(exc).__name__, str(exc), repr(exc.__cause__)]
try:
    ddkit.Pipeline.from_config({"schedule": "laplace", "model": "mlp", "sampler": "unipc"})
except Exception as exc:
    result["pipeline"] = [type(exc).__name__, str(exc)]
print(json.dumps(result))
"""


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    """test_isolation's ``run``, letting the interpreter cache bytecode (each start imports torch)."""
    env = {k: v for k, v in clean_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _python_json(bin_dir: Path, script: str) -> dict[str, Any]:
    done = run(bin_dir / "python", "-c", script)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _incompatible_copy(folder: Path) -> Path:
    """The example as a build made for plugin API 2.0 (version 0.2.0)."""
    copy = folder / "incompatible"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info"))
    plugin = copy / "src" / "ddkit_sampler_example" / "_plugin.py"
    plugin.write_text(plugin.read_text().replace('DDKIT_PLUGIN_API = "1.0"', 'DDKIT_PLUGIN_API = "2.0"'))
    project = copy / "pyproject.toml"
    project.write_text(project.read_text().replace('version = "0.1.0"', 'version = "0.2.0"', 1))
    return copy


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Install the example beside the released packages, use it, uninstall it, install an incompatible one."""
    folder = tmp_path_factory.mktemp("third-party")
    run(uv(), "venv", "--quiet", "--python", sys.executable, folder / "venv")
    bin_dir = folder / "venv" / "bin"
    python = bin_dir / "python"
    install: list[str | Path] = [uv(), "pip", "install", "--quiet", "--python", python, *find_links()]
    run(*install, TORCH, *RELEASED, EXAMPLE)
    phases: dict[str, Any] = {"listed": json.loads(run(bin_dir / "ddkit", "plugins", "--json").stdout)}
    phases["installed"] = _python_json(bin_dir, INSTALLED)
    run(uv(), "pip", "uninstall", "--quiet", "--python", python, DISTRIBUTION)
    phases["uninstalled"] = _python_json(bin_dir, UNKNOWN)
    run(*install, _incompatible_copy(folder))
    phases["incompatible"] = _python_json(bin_dir, UNKNOWN)
    return phases


@pytest.mark.isolation
def test_ddkit_plugins_lists_the_examples_names_with_its_distribution(lifecycle: dict[str, Any]) -> None:
    rows = {(r["kind"], r["name"]): r for r in lifecycle["listed"] if r["distribution"] == DISTRIBUTION}
    assert set(rows) == {("sampler", "unipc"), ("schedule", "laplace")}
    assert {(r["version"], r["status"]) for r in rows.values()} == {("0.1.0", "ok")}
    assert rows[("sampler", "unipc")]["summary"].startswith("UniPC multistep predictor-corrector")
    official = {r["distribution"] for r in lifecycle["listed"]} - {DISTRIBUTION}
    assert official == {"ddkit-core", "ddkit-samplers", "ddkit-models", "ddkit-guidance"}


@pytest.mark.isolation
def test_a_pipeline_from_config_samples_with_the_examples_sampler_and_schedule(
    lifecycle: dict[str, Any],
) -> None:
    result = lifecycle["installed"]
    assert result["pipeline"] == {
        "shape": [8, 2],
        "finite": True,
        "sampler": "ddkit_sampler_example.unipc.UniPC",
        "schedule": "LaplaceSchedule",
        "config": {"name": "unipc", "steps": 10},
        "nfe": 10,
    }
    assert result["qualified"] == "UniPC"
    assert result["describe"] == DISTRIBUTION
    assert result["pytest_imported"] is False  # ddkit.testing loads the pytest-based kit only on demand


@pytest.mark.isolation
def test_uninstalling_makes_the_names_unknown_with_a_clear_error(lifecycle: dict[str, Any]) -> None:
    result = lifecycle["uninstalled"]
    assert result["rows"] == []
    kind, message, _ = result["unipc"]
    assert kind == "UnknownPluginError"
    assert message.splitlines()[0] == "no sampler named 'unipc'"
    listed = message.split("available samplers: ", 1)[1].splitlines()[0].split(", ")
    assert {"ddim", "ddpm", "dpm-solver++", "euler", "euler-ancestral", "heun", "plms"} <= set(listed)
    assert "unipc" not in listed
    kind, message, _ = result["laplace"]
    assert kind == "UnknownPluginError"
    listed = message.split("available schedules: ", 1)[1].splitlines()[0].split(", ")
    assert {"cosine", "edm", "linear", "rectified-flow", "scaled-linear", "sigmoid"} <= set(listed)
    assert "laplace" not in listed
    kind, message = result["pipeline"]
    assert kind == "ConfigError"
    assert "[schedule] no schedule named 'laplace'" in message
    assert "[sampler] no sampler named 'unipc'" in message


@pytest.mark.isolation
def test_a_build_for_another_plugin_api_major_is_reported_not_loaded(lifecycle: dict[str, Any]) -> None:
    result = lifecycle["incompatible"]
    (row,) = result["rows"]
    assert (row["kind"], row["name"], row["version"], row["status"]) == (None, None, "0.2.0", "incompatible")
    assert (
        "ddkit-sampler-example targets ddkit plugin API 2.0, but this ddkit speaks plugin API 1.0"
        in row["error"]
    )
    assert any("ddkit-sampler-example 0.2.0 is incompatible" in w for w in result["warnings"])
    kind, message, cause = result["unipc"]
    assert kind == "UnknownPluginError"
    assert "'unipc' is provided by ddkit-sampler-example 0.2.0, which is incompatible" in message
    assert cause.startswith("IncompatiblePluginError(")


# -- in-process: the example's source on sys.path, registered in a fresh registry ----------------


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The example's package, importable from its source tree and registered (not installed)."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    import ddkit_sampler_example
    from ddkit_sampler_example import _plugin

    with fresh_registry() as registry:  # core's built-ins, then exactly the plugins these tests use
        registry.register(importlib.import_module("ddkit_samplers._plugin"), distribution="ddkit-samplers")
        registry.register(_plugin, distribution=DISTRIBUTION, version=ddkit_sampler_example.__version__)
        yield ddkit_sampler_example


def _gaussian(process: GaussianProcess, **data: Any) -> AnalyticGaussian:
    return AnalyticGaussian(process.alphas_cumprod, mean=(0.5, -0.3), std=(1.0, 0.5), **data)


def test_unipc_at_10_nfe_is_closer_to_the_exact_ode_solution_than_ddim(example: ModuleType) -> None:
    process = GaussianProcess(linear_betas(1000))
    x_T = torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = _gaussian(process)
    exact = model.ode_solution(x_T, float(process.alphas_cumprod[-1]))
    errors, nfe = {}, {}
    for name in ("ddim", "unipc", "dpm-solver++"):
        denoiser = model.denoiser(process)
        out = ddkit.create("sampler", name, steps=10).sample(denoiser, x_T)
        errors[name], nfe[name] = float((out - exact).square().mean().sqrt()), denoiser.nfe
    assert nfe == {"ddim": 10, "unipc": 10, "dpm-solver++": 10}
    assert errors["unipc"] < 0.25 * errors["ddim"], errors
    # A second-order solver like ddkit's own DPM-Solver++(2M) on its default log-SNR grid: the same
    # accuracy class (here 0.035 against 0.023), not ahead of it.
    assert errors["unipc"] < 2.0 * errors["dpm-solver++"], errors


@pytest.mark.parametrize(
    ("order", "variant", "final"),
    [(1, "bh2", "zero"), (2, "bh2", "zero"), (3, "bh2", "zero"), (2, "bh1", "min"), (3, "bh1", "min")],
)
@pytest.mark.parametrize("steps", [5, 12, 25])
@pytest.mark.parity
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy calls
def test_unipc_matches_diffusers_unipc_multistep_scheduler(
    example: ModuleType, order: int, variant: str, final: str, steps: int
) -> None:
    """diffusers' bh1 needs final_sigmas_type="sigma_min": at σ = 0 its B(h) = −h is infinite."""
    diffusers = pytest.importorskip("diffusers")
    betas = np.linspace(1e-4, 0.02, 1000)
    process = GaussianProcess(betas)
    model = _gaussian(process)
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(steps))
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=betas,
        solver_order=order,
        solver_type=variant,
        final_sigmas_type="zero" if final == "zero" else "sigma_min",
    )
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.reshape(1).expand(3)), t, x).prev_sample
    sampler = example.UniPC(steps=steps, spacing="linspace", order=order, variant=variant, final_sigma=final)
    ours = sampler.sample(model.denoiser(process), x_T)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=2e-5)


# -- the conformance kit has teeth: each broken sampler fails the check aimed at its fault -------


class _DDIMLike(SamplerBase):
    """Deterministic DDIM on the respaced chain, with hooks to break it."""

    name = "broken"

    def _plan(self, denoiser: Denoiser) -> Plan:
        return self._chain_plan(denoiser)

    def _step(self, x: Tensor, x0: Tensor, eps: Tensor, ab_prev: float, run: Run) -> Tensor:
        return math.sqrt(ab_prev) * x0 + math.sqrt(1.0 - ab_prev) * eps

    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        d = plan.denoiser
        n = d.process.num_timesteps
        for k in range(start, n):
            i = n - 1 - k
            pred = d(x, i)
            x_new = self._step(x, pred.x0, pred.eps, float(d.process.alphas_cumprod_prev[i]), run)
            yield SamplerState(step=k - start, t=plan.timesteps[k], x=x_new, x0=pred.x0, nfe=self._nfe(d.nfe))
            x = x_new

    def _nfe(self, nfe: int) -> int:
        return nfe


class _GlobalNoise(_DDIMLike):
    stochastic = True

    def _step(self, x: Tensor, x0: Tensor, eps: Tensor, ab_prev: float, run: Run) -> Tensor:
        return super()._step(x, x0, eps, ab_prev, run) + 0.01 * torch.randn_like(x)  # ignores the generator


class _MiscountedNFE(_DDIMLike):
    def _nfe(self, nfe: int) -> int:
        return nfe + 1


class _Shrinking(_DDIMLike):
    def _step(self, x: Tensor, x0: Tensor, eps: Tensor, ab_prev: float, run: Run) -> Tensor:
        return 0.9 * super()._step(x, x0, eps, ab_prev, run)


class _BatchCoupled(_DDIMLike):
    def _step(self, x: Tensor, x0: Tensor, eps: Tensor, ab_prev: float, run: Run) -> Tensor:
        return super()._step(x, x0, eps, ab_prev, run) + 1e-3 * x.mean(0, keepdim=True)


class _RawOutputAsNoise(_DDIMLike):
    def _run(self, plan: Plan, x: Tensor, start: int, run: Run) -> Iterator[SamplerState]:
        d = plan.denoiser
        n = d.process.num_timesteps
        for k in range(start, n):
            i = n - 1 - k
            eps = d.model_output(x, i)  # assumes an epsilon model, whatever the parameterization
            x0 = d.process.x0_from_eps(x, i, eps)
            x = self._step(x, x0, eps, float(d.process.alphas_cumprod_prev[i]), run)
            yield SamplerState(step=k - start, t=plan.timesteps[k], x=x, x0=x0, nfe=d.nfe)


@pytest.mark.parametrize(
    ("broken", "check", "complaint"),
    [
        (_GlobalNoise, "test_randomness_follows_the_generator", "the same seed gave different samples"),
        (_MiscountedNFE, "test_reports_nfe", "the last state reports nfe=9, the model ran 8 times"),
        (_Shrinking, "test_samples_land_on_the_data_distribution", "dim 0: the samples' mean is 0.0"),
        (
            _BatchCoupled,
            "test_per_sample_generators_make_each_sample_independent_of_the_batch",
            "sample 2 changed with the batch",
        ),
        (_RawOutputAsNoise, "test_every_parameterization_gives_the_same_samples", "the 'x0' model's samples"),
    ],
    ids=["global-rng", "nfe", "wrong-distribution", "batch-coupled", "ignores-parameterization"],
)
def test_the_conformance_kit_fails_a_broken_sampler(
    broken: type[SamplerBase], check: str, complaint: str
) -> None:
    class Kit(SamplerConformance):
        accuracy_steps = 100

        def make_sampler(self, **params: Any) -> Any:
            return broken(**params)

    class Sound(Kit):
        def make_sampler(self, **params: Any) -> Any:
            return _DDIMLike(**params)

    arguments: dict[str, Any] = {}
    if "parameterization" in check:
        arguments = {"prediction": "x0"}
    elif "per_sample" in check:
        arguments = {"noise": "default"}
    getattr(Sound(), check)(**arguments)  # the fault-free sampler passes the same check
    with pytest.raises(AssertionError, match=complaint):
        getattr(Kit(), check)(**arguments)


def test_a_kit_without_a_sampler_name_says_what_to_set() -> None:
    class Unset(SamplerConformance):
        pass

    with pytest.raises(
        TypeError, match="set 'sampler_name' to a registered sampler name, or override make_sampler"
    ):
        Unset().make_sampler()


class TestExampleUniPCThroughTheKit(SamplerConformance):
    """The kit run from here too, over the example registered in-process (no install needed)."""

    sampler_name = "unipc"
    sampler_params: ClassVar[dict[str, Any]] = {"order": 3, "variant": "bh1", "final_sigma": "min"}

    @pytest.fixture(autouse=True)
    def _registered(self, example: ModuleType) -> None:
        assert isinstance(ddkit.create("sampler", "unipc"), example.UniPC)
