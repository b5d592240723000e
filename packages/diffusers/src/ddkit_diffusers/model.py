"""The ``diffusers`` model: a network saved by diffusers, called through ddkit's model contract.

ddkit calls every network as ``model(x_t, t, **conditioning)`` with the training timestep of
each sample; diffusers' UNets and transformers take the same three things under their own
names (``sample``/``hidden_states``, ``timestep``, ``encoder_hidden_states``, ``class_labels``)
and return an output object. :class:`DiffusersModel` renames the first, maps ddkit's class
labels ``y`` to ``class_labels``, passes every other keyword through and returns the tensor.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddkit import CompositionError, ConfigError, ModelSpec
from ddkit_diffusers._folders import component_folder, read_json, resolve_dtype

__all__ = ["MODEL_CLASSES", "DiffusersModel", "diffusers_model", "spec_from_config"]

#: The diffusers network classes this model loads, with the conditioning each one cannot run without.
MODEL_CLASSES: dict[str, tuple[str, ...]] = {
    "UNet2DModel": (),
    "UNet2DConditionModel": ("encoder_hidden_states",),
    "DiTTransformer2DModel": (),
    "PixArtTransformer2DModel": ("encoder_hidden_states",),
    "SD3Transformer2DModel": ("encoder_hidden_states", "pooled_projections"),
    "Transformer2DModel": (),
}
#: Where a pipeline folder keeps its denoising network.
NETWORK_FOLDERS: tuple[str, ...] = ("unet", "transformer")


def _sample_shape(config: dict[str, Any], channels: int | None) -> tuple[int, ...] | None:
    size = config.get("sample_size")
    if channels is None or size is None:
        return None
    if isinstance(size, int):
        return (channels, size, size)
    if isinstance(size, (list, tuple)) and all(isinstance(s, int) for s in size):
        return (channels, *size)
    return None


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    """What a diffusers network promises, read from its config.

    Class labels: a UNet's ``num_class_embeds`` table (no null class); a DiT-style transformer's
    ``num_embeds_ada_norm`` classes plus the null class at that index, which its label
    embedding keeps for classifier-free guidance when ``class_dropout_prob`` > 0.
    """
    class_name = config.get("_class_name")
    in_channels = config.get("in_channels")
    # Transformers leave out_channels null to mean "as many as in_channels".
    out_channels = config.get("out_channels") or in_channels
    num_classes: int | None = None
    null_class: int | None = None
    if class_name in ("UNet2DModel", "UNet2DConditionModel"):
        if config.get("class_embed_type") is None and config.get("num_class_embeds") is not None:
            num_classes = int(config["num_class_embeds"])
    elif config.get("num_embeds_ada_norm") is not None and config.get("norm_type") == "ada_norm_zero":
        num_classes = int(config["num_embeds_ada_norm"])
        if float(config.get("class_dropout_prob", 0.1) or 0.0) > 0.0:
            null_class = num_classes
    return ModelSpec(
        in_channels=in_channels,
        out_channels=out_channels,
        sample_shape=_sample_shape(config, in_channels),
        num_classes=num_classes,
        null_class=null_class,
    )


class DiffusersModel(nn.Module):
    """A diffusers UNet or transformer behind ``model(x, t, **conditioning) -> Tensor``.

    ``y`` (ddkit's class labels) is passed as ``class_labels``; other keywords
    (``encoder_hidden_states``, ``pooled_projections``, ``added_cond_kwargs``, ...) go to the
    network unchanged (a continuous ``class_labels``, e.g. an upscaler's noise level, is passed
    as ``class_labels=`` itself). ``net`` is the diffusers module itself; ``config`` its saved config.

    .. versionadded:: 0.1.0
    """

    def __init__(self, net: nn.Module, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        self.config: dict[str, Any] = dict(config if config is not None else getattr(net, "config", {}))
        self.class_name: str = str(self.config.get("_class_name", type(net).__name__))
        params = inspect.signature(net.forward).parameters
        first = next(iter(params))
        self._input = first
        self._accepted = frozenset(p for p in params if p not in (first, "timestep", "return_dict"))
        self._required = MODEL_CLASSES.get(self.class_name, ())
        # The keywords besides y the network takes: its forward's, class_labels being y, except for a
        # UNet whose class embedding is continuous (class_embed_type "timestep", "projection", ...).
        labels = set() if self.config.get("class_embed_type") is not None else {"class_labels"}
        keywords = tuple(sorted(self._accepted - labels))
        self.spec = dataclasses.replace(spec_from_config(self.config), conditioning=keywords)

    def _check(self, conditioning: dict[str, Any]) -> None:
        unknown = sorted(set(conditioning) - self._accepted)
        if unknown:
            raise CompositionError(
                f"{self.class_name} takes no conditioning {', '.join(map(repr, unknown))}; it takes "
                f"{', '.join(sorted(self._accepted))} ('y' is passed as 'class_labels')"
            )
        missing = [key for key in self._required if conditioning.get(key) is None]
        if missing:
            raise CompositionError(
                f"{self.class_name} needs {', '.join(missing)}; pass {missing[0]}=<tensor> when sampling "
                "(e.g. a text encoder's output for each sample)"
            )

    def forward(self, x: Tensor, t: Tensor, **conditioning: Any) -> Tensor:
        """The network's prediction for ``x`` at training timesteps ``t`` (the output's ``.sample``)."""
        if "y" in conditioning:
            conditioning["class_labels"] = conditioning.pop("y")
        if not self._accepted.issuperset(conditioning) or self._required:
            self._check(conditioning)
        conditioning[self._input] = x
        out = self.net(timestep=t, return_dict=False, **conditioning)
        result: Tensor = out[0] if isinstance(out, tuple) else out.sample
        return result

    def extra_repr(self) -> str:
        return f"class_name={self.class_name!r}"


def load_options(dtype: torch.dtype | None, variant: str | None) -> dict[str, Any]:
    """``from_pretrained`` options: local safetensors files only; ``dtype`` and ``variant`` when given."""
    import importlib.util

    if variant is not None and (not isinstance(variant, str) or not variant):
        raise ConfigError(f"'variant' must be a non-empty str such as 'fp16', or None (got {variant!r})")
    options: dict[str, Any] = {"use_safetensors": True, "local_files_only": True, "variant": variant}
    if importlib.util.find_spec("accelerate") is None:
        options["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, without a warning
    if dtype is not None:
        options["torch_dtype"] = dtype
    return options


def load_network(
    folder: Path, dtype: torch.dtype | None, variant: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The diffusers network saved in ``folder`` (local files, safetensors only) and its config."""
    import diffusers

    config = read_json(folder / "config.json")
    class_name = config.get("_class_name")
    if class_name not in MODEL_CLASSES:
        raise ConfigError(
            f"{str(folder)!r} holds a {class_name!r}, which the 'diffusers' model does not load; it loads "
            f"{', '.join(MODEL_CLASSES)}"
        )
    cls = getattr(diffusers, class_name)
    net = cls.from_pretrained(str(folder), **load_options(dtype, variant))
    net.eval()
    return net, config


def diffusers_model(
    path: str, subfolder: str | None = None, dtype: str | None = None, variant: str | None = None
) -> DiffusersModel:
    """A UNet or transformer saved by diffusers' ``save_pretrained`` at the local folder ``path``.

    ``subfolder`` picks a component of a pipeline folder (``unet``, ``transformer``); left
    unset, ``path`` itself is used when it holds a ``config.json``, else its ``unet`` or
    ``transformer`` folder. Weights load through safetensors only, from local files only.
    ``dtype`` (``float32``, ``float16``, ``bfloat16``, ``float64``) casts the weights;
    ``variant`` reads ``diffusion_pytorch_model.<variant>.safetensors`` (e.g. ``fp16``).
    """
    folder = component_folder(path, subfolder, NETWORK_FOLDERS, "UNet or transformer")
    net, config = load_network(folder, resolve_dtype(dtype), variant)
    # In the network's mode (eval, as diffusers loads it): sampling then switches no modes, and
    # leaves none switched (restoring a wrapper left in training mode would put the network in it).
    return DiffusersModel(net, config).train(net.training)
