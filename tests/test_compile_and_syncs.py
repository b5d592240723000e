"""GPU-path behaviour that the CPU can check: ``[model] compile = true`` and a sampling loop without syncs.

Compilation uses torch.compile's ``aot_eager`` backend here (``compile_backend``): it traces
and partitions like Inductor but runs the traced ops eagerly, so the test checks ddkit's
wiring in seconds instead of waiting for Inductor's code generation on two cores.

Host-device synchronisations are counted with a ``TorchDispatchMode`` that records the ops
that copy a tensor's value to the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``
all reach ``aten._local_scalar_dense``) or whose output shape depends on the values
(``nonzero``, ``masked_select``): each is a blocking ``cudaStreamSynchronize`` on a GPU.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ddkit
from ddkit.errors import ConfigError
from ddkit.pipeline.compile import CompiledModel

# -- torch.compile -------------------------------------------------------------------------

_GRAPHS: list[int] = []


def _counting_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """A torch.compile backend that records each graph it is given and runs it as traced."""
    _GRAPHS.append(len(gm.graph.nodes))
    return gm.forward


def _register_counting_backend() -> str:
    from torch._dynamo import list_backends, register_backend

    name = "ddkit_test_counting"
    if name not in list_backends(exclude_tags=()):
        register_backend(_counting_backend, name=name)
    return name


def _config(**model: Any) -> dict[str, Any]:
    return {
        "model": {"name": "mlp", "dim": 2, "num_classes": 3, **model},
        "sampler": {"name": "ddim", "steps": 4},
        "guidance": [{"name": "classifier-free", "scale": 2.0}],
    }


def _draw(pipe: ddkit.Pipeline) -> torch.Tensor:
    return pipe.sample(6, generator=torch.Generator().manual_seed(0), y=torch.tensor([0, 1, 2, 0, 1, 2]))


def test_compile_true_samples_as_uncompiled_and_runs_the_compiled_graph() -> None:
    torch.manual_seed(0)
    plain = ddkit.Pipeline.from_config(_config())
    compiled = ddkit.Pipeline.from_config(_config(compile=True, compile_backend=_register_counting_backend()))
    compiled.model.load_state_dict(plain.model.state_dict())
    _GRAPHS.clear()
    expected, got = _draw(plain), _draw(compiled)
    assert _GRAPHS, "sampling with compile = true never reached torch.compile's backend"
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The pipeline's own model stays a plain module: its state_dict keys carry no _orig_mod prefix.
    assert type(compiled.model) is type(plain.model)
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())
    # One compiled wrapper per sampling model: a second call reuses it (no new graph).
    wrapper = compiled.__dict__["_compiled_models"][id(compiled.sampling_model)]
    assert isinstance(wrapper, CompiledModel)
    assert wrapper.original is compiled.sampling_model
    graphs = len(_GRAPHS)
    torch.testing.assert_close(_draw(compiled), expected, rtol=0, atol=1e-5)
    assert len(_GRAPHS) == graphs


def test_compile_aot_eager_matches_and_survives_save_and_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config(_config(compile=True, compile_backend="aot_eager"))
    before = _draw(pipe)
    plain = ddkit.Pipeline.from_config(_config())
    plain.model.load_state_dict(pipe.model.state_dict())
    torch.testing.assert_close(before, _draw(plain), rtol=0, atol=1e-5)
    pipe.save(tmp_path / "saved")
    toml = (tmp_path / "saved" / "pipeline.toml").read_text()
    assert "compile = true" in toml
    assert 'compile_backend = "aot_eager"' in toml
    loaded = ddkit.Pipeline.load(tmp_path / "saved")
    assert loaded.config["model"]["compile"] is True
    torch.testing.assert_close(_draw(loaded), before, rtol=0, atol=1e-5)


def test_cuda_graph_modes_keep_each_output_for_multistep_samplers() -> None:
    # reduce-overhead records CUDA graphs whose outputs the next replay overwrites; the wrapper
    # copies them, so DPM-Solver++(2M), which reuses the previous output, samples as uncompiled.
    torch.manual_seed(0)
    cfg = {**_config(), "sampler": {"name": "dpm-solver++", "steps": 5}}
    plain = ddkit.Pipeline.from_config(cfg)
    model = {
        **cfg["model"],
        "compile": True,
        "compile_mode": "reduce-overhead",
        "compile_backend": "aot_eager",
    }
    graphed = ddkit.Pipeline.from_config({**cfg, "model": model})
    graphed.model.load_state_dict(plain.model.state_dict())
    wrapper = CompiledModel(graphed.sampling_model, mode="reduce-overhead", backend="aot_eager")
    assert wrapper.graphed
    torch.testing.assert_close(_draw(graphed), _draw(plain), rtol=0, atol=1e-5)


def test_compiled_sampling_follows_weights_changed_in_place() -> None:
    # The Trainer updates the model and its EMA in place: the compiled graph must read the new values.
    torch.manual_seed(0)
    plain = ddkit.Pipeline.from_config(_config())
    compiled = ddkit.Pipeline.from_config(_config(compile=True, compile_backend="aot_eager"))
    compiled.model.load_state_dict(plain.model.state_dict())
    before = _draw(plain)
    torch.testing.assert_close(_draw(compiled), before, rtol=0, atol=1e-5)
    with torch.no_grad():
        for pipe in (plain, compiled):
            for p in pipe.model.parameters():
                p.mul_(0.5).add_(0.01)
    after = _draw(plain)
    assert not torch.allclose(after, before, atol=1e-3)  # the change shows in the samples
    torch.testing.assert_close(_draw(compiled), after, rtol=0, atol=1e-5)


def test_compile_off_builds_no_wrapper() -> None:
    pipe = ddkit.Pipeline.from_config(_config(compile=False))
    _draw(pipe)
    assert "compile" not in pipe.config["model"]
    assert not pipe.__dict__.get("_compiled_models")


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ({"compile": "yes"}, "'compile' must be true or false (got 'yes', a str)"),
        ({"compile": True, "compile_mode": "fast"}, "'compile_mode' must be one of default, reduce-overhead"),
        ({"compile": True, "compile_backend": ""}, "'compile_backend' must be the name of a torch.compile"),
        ({"compile_backend": "eager"}, "but not compile = true; add compile = true"),
    ],
)
def test_bad_compile_keys_are_config_errors(model: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match="\\[model\\]") as info:
        ddkit.Pipeline.from_config(_config(**model))
    assert needle in str(info.value)


def test_unknown_backend_is_named_when_the_pipeline_is_built() -> None:
    with pytest.raises(ConfigError, match=r"torch\.compile refused .*'no-such-backend'"):
        ddkit.Pipeline.from_config(_config(compile=True, compile_backend="no-such-backend"))


# -- host-device synchronisations ------------------------------------------------------------

_SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero")


class SyncRecorder(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Records every op that would block the host on a GPU, with the ddkit frames that issued it."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.calls: list[tuple[str, list[str]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func._overloadpacket.__name__ in _SYNC_OPS:
            where = [
                f"{Path(f.filename).name}:{f.lineno} {f.name}"
                for f in traceback.extract_stack()[:-1]
                if "ddkit" in f.filename
            ]
            self.calls.append((str(func), where[-3:]))
        return func(*args, **(kwargs or {}))


def _pipe(sampler: str, steps: int, network: str) -> ddkit.Pipeline:
    torch.manual_seed(0)
    if network == "adm-unet":
        model = {
            "name": "adm-unet",
            "image_size": 8,
            "num_channels": 32,
            "num_res_blocks": 1,
            "channel_mult": "1,2",
            "attention_resolutions": "4",
            "num_head_channels": 8,
            "learn_sigma": True,
        }
        param = {"name": "epsilon", "variance": "learned-range"}
        return ddkit.Pipeline.from_config(
            {"model": model, "parameterization": param, "sampler": {"name": sampler, "steps": steps}}
        )
    return ddkit.Pipeline.from_config(
        {
            "model": {"name": "mlp", "dim": 2, "num_classes": 3},
            "sampler": {"name": sampler, "steps": steps},
            "guidance": [{"name": "classifier-free", "scale": 2.0}],
        }
    )


def _sample_syncs(pipe: ddkit.Pipeline) -> list[tuple[str, list[str]]]:
    labels: dict[str, Any] = {"y": torch.tensor([0, 1, 2])} if pipe.guidances else {}
    rec: SyncRecorder
    with SyncRecorder() as rec:
        pipe.sample(3, generator=torch.Generator().manual_seed(1), **labels)
    return rec.calls


def _states(pipe: ddkit.Pipeline) -> Iterator[Any]:
    labels: dict[str, Any] = {"y": torch.tensor([0, 1, 2])} if pipe.guidances else {}
    return iter(pipe.samples_iter(3, generator=torch.Generator().manual_seed(1), **labels))


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++", "euler"])
@pytest.mark.parametrize("network", ["mlp", "adm-unet"])
def test_sampling_steps_do_not_synchronise(sampler: str, network: str) -> None:
    # Pipeline.sample: the syncs it makes (input checks before the loop, the final check after)
    # do not grow with the number of steps, so none is inside a step.
    short, long = _sample_syncs(_pipe(sampler, 2, network)), _sample_syncs(_pipe(sampler, 6, network))
    assert len(long) == len(short), f"syncs grow with the steps: {long}"
    assert len(long) <= 4, long
    # Between the first state and the last, nothing at all blocks the host.
    states = _states(_pipe(sampler, 6, network))
    next(states)
    with SyncRecorder() as rec:
        middle = [next(states) for _ in range(4)]
    assert len(middle) == 4
    assert rec.calls == [], f"{sampler} on {network} synchronises inside its steps: {rec.calls}"


def test_the_recorder_sees_an_item_call() -> None:
    """The check above could pass by seeing nothing: make sure ``.item()`` and ``bool()`` register."""
    x = torch.ones(3)
    with SyncRecorder() as rec:
        x.sum().item()
        bool((x > 0).all())
        (x > 0).nonzero()
    names = [name for name, _ in rec.calls]
    assert sum("_local_scalar_dense" in n for n in names) >= 2
    assert any("nonzero" in n for n in names), names
