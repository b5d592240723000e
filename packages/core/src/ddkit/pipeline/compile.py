"""``[model] compile = true``: sampling through ``torch.compile``, switched on in the config.

A pipeline config may ask for its network to be compiled for sampling::

    [model]
    name = "adm-unet"
    compile = true                 # sample through torch.compile(model)
    compile_mode = "max-autotune"  # optional: torch.compile's mode ("reduce-overhead": CUDA graphs)
    compile_backend = "inductor"   # optional: torch.compile's backend ("eager"/"aot_eager" in tests)

These keys belong to the pipeline, not to the model's factory: :func:`take_options` moves
them out of the ``[model]`` table's parameters before the factory is checked or called, and
back into the normalized config, so a saved ``pipeline.toml`` records them and
:meth:`~ddkit.Pipeline.load` compiles again. The pipeline compiles only what sampling runs
(:func:`sampling_model`): ``pipe.model`` and its EMA averages stay plain modules, so saving,
the EMA update, the Trainer and ``state_dict`` keys are unchanged. The compiled wrapper is
built once per pipeline and sampling model; torch compiles on the first call (minutes for
Inductor on a large U-Net, then cached on disk by Inductor).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ddkit.errors import ConfigError
from ddkit.protocols import ModelSpec, model_spec

__all__ = [
    "COMPILE_KEYS",
    "GRAPHED_MODES",
    "MODES",
    "CompiledModel",
    "compile_options",
    "sampling_model",
    "take_options",
]

#: The ``[model]`` keys that configure compilation (read by the pipeline, never passed to the factory).
COMPILE_KEYS: tuple[str, ...] = ("compile", "compile_mode", "compile_backend")
#: ``torch.compile`` modes (``None`` is its default mode).
MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Modes in which Inductor records CUDA graphs (their outputs are overwritten by the next replay).
GRAPHED_MODES: tuple[str, ...] = ("reduce-overhead", "max-autotune")


def _check(options: Mapping[str, Any], label: str) -> list[str]:
    """Problems with the compile keys of a ``[model]`` table, each naming the value and the fix."""
    problems: list[str] = []
    on = options.get("compile", False)
    if not isinstance(on, bool):
        problems.append(f"{label} 'compile' must be true or false (got {on!r}, a {type(on).__name__})")
    mode = options.get("compile_mode")
    if mode is not None and mode not in MODES:
        problems.append(f"{label} 'compile_mode' must be one of {', '.join(MODES)} (got {mode!r})")
    backend = options.get("compile_backend")
    if backend is not None and (not isinstance(backend, str) or not backend.strip()):
        problems.append(
            f"{label} 'compile_backend' must be the name of a torch.compile backend such as "
            f'"inductor" or "eager" (got {backend!r})'
        )
    if on is False and (mode is not None or backend is not None):
        problems.append(
            f"{label} sets 'compile_mode'/'compile_backend' but not compile = true; add compile = true "
            "or drop them"
        )
    return problems


def take_options(part: Any, problems: list[str]) -> None:
    """Move the compile keys out of a ``[model]`` part's factory parameters into ``part.options``.

    ``part`` is a :class:`~ddkit.pipeline.config.Part`; problems are appended to ``problems``
    (so the config's one :class:`~ddkit.ConfigError` lists them with the rest).
    """
    options = {key: part.params.pop(key) for key in COMPILE_KEYS if key in part.params}
    if not options:
        return
    found = _check(options, part.label)
    problems.extend(found)
    if not found and options.get("compile"):
        part.options.update(options)


def compile_options(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from a normalized config, or None when compiling is off."""
    table = config.get("model")
    if not isinstance(table, Mapping) or table.get("compile") is not True:
        return None
    kwargs: dict[str, Any] = {}
    if table.get("compile_mode") not in (None, "default"):
        kwargs["mode"] = table["compile_mode"]
    if table.get("compile_backend") is not None:
        kwargs["backend"] = table["compile_backend"]
    return kwargs


class CompiledModel(nn.Module):
    """``torch.compile(module)`` for sampling, declaring the original module's spec.

    The original is held but not registered as a submodule, so this wrapper owns no
    parameters and nothing saves it; train/eval modes are the original's (the compiled
    graph guards on them). Attributes it lacks are read from the original.
    """

    def __init__(self, module: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        spec: ModelSpec = model_spec(module)  # read before compiling: the wrapper hides forward's signature
        object.__setattr__(self, "original", module)
        try:
            compiled = torch.compile(module, **kwargs)
        except Exception as exc:  # an unknown backend or mode is found only here, by torch itself
            raise ConfigError(
                f"[model] torch.compile refused {kwargs!r} ({str(exc).rstrip('.')}); set "
                "'compile_backend' to a name torch._dynamo.list_backends() gives and 'compile_mode' to "
                f"one of {', '.join(MODES)}"
            ) from exc
        object.__setattr__(self, "compiled", compiled)
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "compile_kwargs", dict(kwargs))
        object.__setattr__(self, "graphed", kwargs.get("mode") in GRAPHED_MODES)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.graphed:
            return self.compiled(*args, **kwargs)
        # CUDA graphs replay into the same output memory: mark each call a new step and hand back
        # copies, so multistep samplers may keep earlier outputs (DPM-Solver++'s history).
        torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        out = self.compiled(*args, **kwargs)
        return tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, out)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["original"], name)


def sampling_model(pipe: Any) -> nn.Module:
    """What the pipeline's denoiser calls: ``pipe.sampling_model``, compiled when its config asks.

    The wrapper is cached on the pipeline per sampling module (the EMA average or the model)
    and compile arguments, so repeated ``sample()`` calls reuse one compiled graph.
    """
    module: nn.Module = pipe.sampling_model
    kwargs = compile_options(pipe.config)
    if kwargs is None:
        return module
    cache: dict[int, CompiledModel] = pipe.__dict__.setdefault("_compiled_models", {})
    found = cache.get(id(module))
    if found is None or found.original is not module or found.compile_kwargs != kwargs:
        found = cache[id(module)] = CompiledModel(module, **kwargs)
    return found
