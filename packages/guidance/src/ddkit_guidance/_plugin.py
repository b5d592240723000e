"""The ddkit plugin module of ddkit_guidance: the records it registers (nothing heavy is imported)."""

from __future__ import annotations

from ddkit import Record, hookimpl

DDKIT_PLUGIN_API = "1.0"


@hookimpl
def ddkit_guidances() -> list[Record]:
    return [
        Record(
            "classifier",
            "ddkit_guidance.classifier:ClassifierGuidance",
            "Classifier guidance: s·∇ log p(y | x_t) from a noisy-data classifier, mean or score form.",
            paper="Dhariwal & Nichol 2021, Diffusion Models Beat GANs on Image Synthesis (arXiv:2105.05233)",
        ),
        Record(
            "classifier-free",
            "ddkit_guidance.classifier_free:ClassifierFreeGuidance",
            "Classifier-free guidance: uncond + w·(cond − uncond) from one batched forward, with "
            "scale schedules, rescale and a guidance interval.",
            paper="Ho & Salimans 2022, Classifier-Free Diffusion Guidance (arXiv:2207.12598)",
        ),
    ]
