"""The ddkit plugin module of ddkit_samplers: the records it registers (importing no sampler code)."""

from __future__ import annotations

from ddkit import Record, hookimpl

DDKIT_PLUGIN_API = "1.0"


@hookimpl
def ddkit_samplers() -> list[Record]:
    return [
        Record(
            "ddpm",
            "ddkit_samplers.ddpm:DDPM",
            "Ancestral sampling over the full or a respaced chain (guided-diffusion's p_sample_loop).",
            paper="Ho et al. 2020, arXiv:2006.11239",
        ),
        Record(
            "ddim",
            "ddkit_samplers.ddim:DDIM",
            "DDIM with eta (0 = deterministic) and inversion x_0 -> x_T.",
            paper="Song et al. 2021, arXiv:2010.02502",
        ),
        Record(
            "plms",
            "ddkit_samplers.plms:PLMS",
            "Pseudo linear multistep, as latent-diffusion runs it.",
            paper="Liu et al. 2022, arXiv:2202.09778",
        ),
        Record(
            "dpm-solver++",
            "ddkit_samplers.dpm_solver:DPMSolverPP",
            "Multistep DPM-Solver++ (order 2 or 3), data prediction; sde=True for the 2M/3M SDE variant.",
            paper="Lu et al. 2022, arXiv:2211.01095",
        ),
        Record(
            "ipndm",
            "ddkit_samplers.ipndm:IPNDM",
            "Improved PNDM: Adams-Bashforth on the noise prediction, orders 1-4, lower-order warm start.",
            paper="Zhang & Chen 2023, arXiv:2204.13902 (App. B)",
        ),
        Record(
            "deis",
            "ddkit_samplers.deis:DEIS",
            "DEIS multistep exponential integrator: polynomial extrapolation of eps, orders 1-3.",
            paper="Zhang & Chen 2022, arXiv:2204.13902",
        ),
        Record(
            "euler",
            "ddkit_samplers.karras:Euler",
            "Euler on the Karras sigma formulation, with optional churn.",
            paper="Karras et al. 2022, arXiv:2206.00364",
        ),
        Record(
            "heun",
            "ddkit_samplers.karras:Heun",
            "Heun's 2nd-order method on the Karras sigma formulation (Alg. 2).",
            paper="Karras et al. 2022, arXiv:2206.00364",
        ),
        Record(
            "euler-ancestral",
            "ddkit_samplers.karras:EulerAncestral",
            "Euler steps plus fresh noise (k-diffusion's ancestral sampler).",
            paper="Karras et al. 2022, arXiv:2206.00364",
        ),
        Record(
            "flow-sde",
            "ddkit_samplers.flow_sde:FlowSDE",
            "Flow-GRPO's SDE for flow models: the flow ODE's marginals, Gaussian steps with log-probs.",
            paper="Liu et al. 2025, Flow-GRPO, arXiv:2505.05470",
        ),
    ]
