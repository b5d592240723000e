"""The ``diffusers-vae`` autoencoder: a saved AutoencoderKL or AutoencoderTiny for latent pipelines.

ddkit's autoencoder contract is deterministic and unscaled: ``encode(x)`` returns the
posterior mean, ``decode(z)`` the image, and the pipeline applies
``z = (encode(x) − shift_factor)·scaling_factor`` and ``x = decode(z / scaling_factor + shift_factor)``
itself, as diffusers' pipelines do with the same two numbers from the VAE's config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ddkit import ConfigError
from ddkit_diffusers._folders import component_folder, read_json, resolve_dtype
from ddkit_diffusers.model import load_options

__all__ = ["AUTOENCODER_CLASSES", "DiffusersVAE", "diffusers_vae"]

#: The diffusers autoencoder classes ``diffusers-vae`` loads.
AUTOENCODER_CLASSES: tuple[str, ...] = ("AutoencoderKL", "AutoencoderTiny")


class DiffusersVAE(nn.Module):
    """A diffusers AutoencoderKL or AutoencoderTiny as a ddkit autoencoder.

    ``scaling_factor`` and ``shift_factor`` come from the VAE's config (a missing or null
    ``shift_factor`` is 0). The wrapped module is ``net``.

    .. versionadded:: 0.1.0
    """

    def __init__(self, net: nn.Module, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net: Any = net  # diffusers' encode/decode are untyped
        cfg = dict(config if config is not None else getattr(net, "config", {}))
        self.class_name: str = str(cfg.get("_class_name", type(net).__name__))
        for key in ("latents_mean", "latents_std"):
            if cfg.get(key) is not None:
                raise ConfigError(
                    f"the {self.class_name} config sets {key!r}, a per-channel latent normalisation that "
                    "ddkit's autoencoder contract (one scaling_factor and shift_factor) cannot express"
                )
        self.scaling_factor: float = float(cfg.get("scaling_factor") or 1.0)
        self.shift_factor: float = float(cfg.get("shift_factor") or 0.0)
        self.latent_channels: int | None = cfg.get("latent_channels")
        self._tiny = self.class_name == "AutoencoderTiny"
        # AutoencoderKL halves the resolution in each encoder block but the last; the tiny one likewise.
        blocks = cfg.get("encoder_block_out_channels" if self._tiny else "block_out_channels") or ()
        self.downsampling: int = 2 ** max(len(blocks) - 1, 0)

    def latent_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        """``(C, H, W)`` of one image to ``(latent_channels, H/f, W/f)`` of its latent (f: downsampling)."""
        shape = tuple(int(d) for d in sample_shape)
        f = self.downsampling
        if len(shape) != 3 or shape[1] % f or shape[2] % f or self.latent_channels is None:
            raise ConfigError(
                f"the {self.class_name} (downsampling {f}) takes images (C, H, W) with H and W divisible "
                f"by {f} (got shape {list(shape)})"
            )
        return (int(self.latent_channels), shape[1] // f, shape[2] // f)

    def encode(self, x: Tensor) -> Tensor:
        """The unscaled latent of images ``x`` in [-1, 1]: the posterior mean (deterministic)."""
        out = self.net.encode(x, return_dict=False)[0]
        latent: Tensor = out if self._tiny else out.mean
        return latent

    def decode(self, z: Tensor) -> Tensor:
        """Images in about [-1, 1] from unscaled latents ``z``."""
        out: Tensor = self.net.decode(z, return_dict=False)[0]
        return out

    def extra_repr(self) -> str:
        return (
            f"class_name={self.class_name!r}, scaling_factor={self.scaling_factor}, "
            f"shift_factor={self.shift_factor}"
        )


def diffusers_vae(
    path: str, subfolder: str | None = None, dtype: str | None = None, variant: str | None = None
) -> DiffusersVAE:
    """The AutoencoderKL or AutoencoderTiny saved by diffusers at the local folder ``path``.

    ``subfolder`` picks a pipeline's component (left unset: ``path`` itself when it holds a
    ``config.json``, else its ``vae`` folder). Local safetensors files only; ``dtype`` casts the
    weights and ``variant`` reads ``diffusion_pytorch_model.<variant>.safetensors``.
    """
    import diffusers

    folder = component_folder(path, subfolder, ("vae",), "autoencoder")
    config = read_json(folder / "config.json")
    class_name = config.get("_class_name")
    if class_name not in AUTOENCODER_CLASSES:
        raise ConfigError(
            f"{str(folder)!r} holds a {class_name!r}, which 'diffusers-vae' does not load; it loads "
            f"{', '.join(AUTOENCODER_CLASSES)}"
        )
    options = load_options(resolve_dtype(dtype), variant)
    net = getattr(diffusers, class_name).from_pretrained(str(folder), **options)
    net.eval()
    return DiffusersVAE(net, config)
