"""The ddkit plugin module of ddkit_diffusers: the records it registers (importing no diffusers code)."""

from __future__ import annotations

from ddkit import Record, hookimpl

DDKIT_PLUGIN_API = "1.0"


@hookimpl
def ddkit_models() -> list[Record]:
    return [
        Record(
            "diffusers",
            "ddkit_diffusers.model:diffusers_model",
            "A UNet or transformer saved by diffusers' save_pretrained (local folder, safetensors).",
        ),
    ]


@hookimpl
def ddkit_autoencoders() -> list[Record]:
    return [
        Record(
            "diffusers-vae",
            "ddkit_diffusers.vae:diffusers_vae",
            "A diffusers AutoencoderKL or AutoencoderTiny (local folder, safetensors) for latent pipelines.",
            paper="Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models, "
            "arXiv:2112.10752",
        ),
    ]
