"""The module the ``ddkit`` entry point names: it declares the plugin API and lists the records.

Factories are ``"module:attribute"`` strings, imported only when a component is built, so
``ddkit plugins`` lists these names without importing the sampler or the schedule.
"""

from __future__ import annotations

from ddkit import Record, hookimpl

#: The ddkit plugin API this plugin is written for; ddkit refuses (and reports) another major version.
DDKIT_PLUGIN_API = "1.0"


@hookimpl
def ddkit_samplers() -> list[Record]:
    return [
        Record(
            "unipc",
            "ddkit_sampler_example.unipc:UniPC",
            "UniPC multistep predictor-corrector (bh2/bh1, order 1-3), data prediction.",
            paper="Zhao et al. 2023, UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of "
            "Diffusion Models, arXiv:2302.04867",
        )
    ]


@hookimpl
def ddkit_schedules() -> list[Record]:
    return [
        Record(
            "laplace",
            "ddkit_sampler_example.laplace:LaplaceSchedule",
            "Log-SNR λ(t) = mu − b·sgn(0.5 − t)·log(1 − 2|t − 0.5|), ᾱ = sigmoid(λ).",
            paper="Hang et al. 2024, Improved Noise Schedule for Diffusion Training, arXiv:2407.03297",
        )
    ]
