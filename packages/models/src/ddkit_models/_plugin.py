"""The ddkit plugin module of ddkit_models: the records it registers.

Factories are ``"module:function"`` strings, so listing plugins imports no network code.
"""

from __future__ import annotations

from ddkit import Record, hookimpl

DDKIT_PLUGIN_API = "1.0"

_ADM = "https://arxiv.org/abs/2105.05233"


@hookimpl
def ddkit_models() -> list[Record]:
    return [
        Record(
            "adm-unet",
            "ddkit_models.factories:adm_unet",
            "ADM U-Net (guided-diffusion UNetModel; its flags, its checkpoints)",
            paper=_ADM,
        ),
        Record(
            "adm-superres",
            "ddkit_models.factories:adm_superres",
            "ADM upsampler conditioned on low_res= (guided-diffusion SuperResModel)",
            paper=_ADM,
        ),
        Record(
            "adm-classifier",
            "ddkit_models.factories:adm_classifier",
            "ADM noisy-image classifier for classifier guidance (guided-diffusion EncoderUNetModel)",
            paper=_ADM,
        ),
        Record(
            "mlp",
            "ddkit_models.factories:mlp",
            "Time-conditioned residual MLP for vector data (2-D toys, tests), optionally class-conditional",
        ),
    ]
