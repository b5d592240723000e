"""``from_diffusers``: a diffusers pipeline folder as a :class:`ddkit.Pipeline`.

The folder's ``model_index.json`` names the components and ``scheduler/scheduler_config.json``
holds the training process. Each scheduler key is either mapped to a ddkit part, known to
have no effect at the value it has, or refused by name: every problem is reported at once,
before any weights are read. See :data:`SCHEDULERS` for the sampler each scheduler becomes.

Mapping (diffusers → ddkit):

====================================  =================================================
``beta_schedule`` linear              schedule ``linear`` (betas given for T = 1000)
``beta_schedule`` scaled_linear       schedule ``scaled-linear``
``beta_schedule`` squaredcos_cap_v2   schedule ``cosine`` (s = 0.008, max_beta = 0.999)
``trained_betas``                     schedule ``explicit``
``rescale_betas_zero_snr``            ``zero_terminal_snr``
``num_train_timesteps``               ``timesteps``
``prediction_type``                   parameterization ``epsilon`` / ``v`` / ``x0``
``variance_type`` (DDPM)              ``variance`` fixed-small / fixed-large / learned / learned-range
``clip_sample``                       parameterization ``clip_denoised``
``timestep_spacing``, ``steps_offset``  sampler ``spacing`` (leading + offset: explicit steps)
FlowMatchEulerDiscreteScheduler       schedule ``rectified-flow`` (``shift``), ``velocity``
====================================  =================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import ddkit
from ddkit import ConfigError
from ddkit_diffusers._folders import read_json
from ddkit_diffusers.model import MODEL_CLASSES, NETWORK_FOLDERS
from ddkit_diffusers.vae import AUTOENCODER_CLASSES

__all__ = ["SCHEDULERS", "from_diffusers", "pipeline_config", "scheduler_tables"]

#: The scheduler classes read, each with the ddkit sampler (and default steps) it becomes.
SCHEDULERS: dict[str, tuple[str, int | None]] = {
    "DDPMScheduler": ("ddpm", None),
    "DDIMScheduler": ("ddim", 50),
    "PNDMScheduler": ("plms", 50),
    "EulerDiscreteScheduler": ("euler", 50),
    "EulerAncestralDiscreteScheduler": ("euler-ancestral", 50),
    "DPMSolverMultistepScheduler": ("dpm-solver++", 20),
    "FlowMatchEulerDiscreteScheduler": ("euler", 28),
}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)

#: Components of a pipeline folder that produce conditioning or checks, not the diffusion: not loaded.
IGNORED_COMPONENTS: tuple[str, ...] = (
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "safety_checker",
    "feature_extractor",
    "image_encoder",
)

_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}
_VARIANCES = {
    "fixed_small": "fixed-small",
    "fixed_small_log": "fixed-small",
    "fixed_large": "fixed-large",
    "fixed_large_log": "fixed-large",
    "learned": "learned",
    "learned_range": "learned-range",
}
_META = ("_class_name", "_diffusers_version", "_use_default_values", "_name_or_path")
#: Keys read by the mapping itself.
_MAPPED = (
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "trained_betas",
    "rescale_betas_zero_snr",
    "prediction_type",
    "variance_type",
    "clip_sample",
    "timestep_spacing",
    "steps_offset",
    "shift",
    "solver_order",
    "lower_order_final",
    "lambda_min_clipped",
    "final_sigmas_type",
    "use_karras_sigmas",
    "set_alpha_to_one",
    "skip_prk_steps",
)
#: Keys that change nothing at these values (any other value is refused by name).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "thresholding": (False,),
    "use_dynamic_shifting": (False,),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,),
    "euler_at_final": (False,),
    "invert_sigmas": (False,),
    "stochastic_sampling": (False,),
    "shift_terminal": (None,),
    "sigma_min": (None,),
    "sigma_max": (None,),
    "interpolation_type": ("linear",),
    "timestep_type": ("discrete",),
    "algorithm_type": ("dpmsolver++",),
    "solver_type": ("midpoint",),
}
#: Keys that only act together with another key at a non-neutral value (refused there).
_DEPENDENT: dict[str, str] = {
    "dynamic_thresholding_ratio": "thresholding",
    "sample_max_value": "thresholding",
    "clip_sample_range": "clip_sample",
    "base_shift": "use_dynamic_shifting",
    "max_shift": "use_dynamic_shifting",
    "base_image_seq_len": "use_dynamic_shifting",
    "max_image_seq_len": "use_dynamic_shifting",
    "time_shift_type": "use_dynamic_shifting",
    "flow_shift": "use_flow_sigmas",
}


def _number(cfg: Mapping[str, Any], key: str, default: float, problems: list[str]) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"scheduler {key!r} must be a number (got {value!r})")
        return default
    return float(value)


def _schedule(cfg: Mapping[str, Any], timesteps: int, problems: list[str]) -> dict[str, Any]:
    zero_snr = cfg.get("rescale_betas_zero_snr", False)
    if not isinstance(zero_snr, bool):
        problems.append(f"scheduler 'rescale_betas_zero_snr' must be a bool (got {zero_snr!r})")
        zero_snr = False
    table: dict[str, Any]
    trained = cfg.get("trained_betas")
    if trained is not None:
        table = {"name": "explicit", "betas": [float(b) for b in np.asarray(trained, dtype=np.float64)]}
    else:
        kind = cfg.get("beta_schedule", "linear")
        start = _number(cfg, "beta_start", 0.0001, problems)
        end = _number(cfg, "beta_end", 0.02, problems)
        if kind == "linear":
            # ddkit's linear schedule scales its two ends by 1000/T (DDPM's convention); diffusers' does not.
            scale = timesteps / 1000
            table = {"name": "linear", "timesteps": timesteps, "beta_start": start * scale}
            table["beta_end"] = end * scale
        elif kind == "scaled_linear":
            table = {"name": "scaled-linear", "timesteps": timesteps, "beta_start": start, "beta_end": end}
        elif kind == "squaredcos_cap_v2":
            table = {"name": "cosine", "timesteps": timesteps, "s": 0.008, "max_beta": 0.999}
        else:
            problems.append(
                f"scheduler 'beta_schedule' {kind!r} has no ddkit schedule; ddkit_diffusers maps linear, "
                "scaled_linear and squaredcos_cap_v2 (or trained_betas)"
            )
            return {}
    if zero_snr:
        table["zero_terminal_snr"] = True
    return table


def _spacing(cfg: Mapping[str, Any], steps: int | None, timesteps: int, problems: list[str]) -> Any:
    """The sampler spacing for diffusers' ``timestep_spacing`` and ``steps_offset``."""
    spacing = cfg.get("timestep_spacing", "leading")
    offset = cfg.get("steps_offset", 0)
    if spacing not in ("linspace", "leading", "trailing"):
        problems.append(f"scheduler 'timestep_spacing' {spacing!r} is not one of linspace, leading, trailing")
        return None
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        problems.append(f"scheduler 'steps_offset' must be an int >= 0 (got {offset!r})")
        return None
    if offset and spacing == "leading" and steps is not None:
        # diffusers adds the offset to the leading grid; ddkit takes that grid as explicit steps.
        grid = [int(i * (timesteps // steps)) + offset for i in range(steps)]
        if grid[-1] >= timesteps:
            problems.append(f"scheduler 'steps_offset' {offset} puts a step past T = {timesteps}")
            return None
        return grid
    return spacing


def flow_times(cfg: Mapping[str, Any], steps: int) -> np.ndarray:
    """The path times FlowMatchEulerDiscreteScheduler.set_timesteps(steps) visits (its sigmas, before 0).

    diffusers spaces the times linearly between the shifted ends of its training grid, 1 and
    shift(1/T), then shifts them again: t_i = shift(linspace(1, shift(1/T), steps)_i).
    """
    timesteps = int(cfg.get("num_train_timesteps", 1000))
    shift = float(cfg.get("shift", 1.0))

    def shifted(t: np.ndarray) -> np.ndarray:
        return np.asarray(shift * t / (1.0 + (shift - 1.0) * t), dtype=np.float64)

    lowest = float(shifted(np.array(1.0 / timesteps)))
    return shifted(np.linspace(1.0, lowest, steps, dtype=np.float64))


def sampler_table(cfg: Mapping[str, Any], steps: int | None, problems: list[str]) -> dict[str, Any]:
    """The ddkit sampler (name and parameters) for the scheduler config ``cfg`` taking ``steps`` steps."""
    class_name = str(cfg.get("_class_name"))
    name = SCHEDULERS[class_name][0]
    timesteps = int(cfg.get("num_train_timesteps", 1000))
    table: dict[str, Any] = {"name": name}
    if class_name in FLOW_SCHEDULERS:
        if cfg.get("use_karras_sigmas", False):
            problems.append(f"scheduler 'use_karras_sigmas' = True is not mapped for {class_name}")
        if steps is None or steps < 1:
            problems.append(f"{class_name} needs a positive number of steps (got {steps!r})")
            return table
        table["spacing"] = flow_times(cfg, steps).tolist()
        table["lambda_min"] = None
        return table
    spacing = _spacing(cfg, steps, timesteps, problems)
    if isinstance(spacing, list):
        table["spacing"] = spacing
    else:
        table["steps"] = steps
        if spacing is not None:
            table["spacing"] = spacing
    if name == "ddim":
        table["eta"] = 0.0
    if "lambda_min" in ddkit.describe("sampler", name).parameters:
        # diffusers walks the whole chain unless DPM-Solver's lambda_min_clipped says otherwise;
        # ddkit samplers may default to starting lower, so the start is always written down.
        lam = cfg.get("lambda_min_clipped", -math.inf)
        finite = isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam)
        table["lambda_min"] = float(lam) if finite and name == "dpm-solver++" else None
    if cfg.get("use_karras_sigmas", False):
        if name not in ("euler", "euler-ancestral", "heun", "dpm-solver++"):
            problems.append(f"scheduler 'use_karras_sigmas' has no meaning for ddkit's {name!r} sampler")
        table["steps"], table["spacing"] = steps, "karras"
    if name == "dpm-solver++":
        order = cfg.get("solver_order", 2)
        if order not in (2, 3):
            problems.append(f"scheduler 'solver_order' must be 2 or 3 for dpm-solver++ (got {order!r})")
        table["order"] = order
        table["lower_order_final"] = bool(cfg.get("lower_order_final", True))
        final = cfg.get("final_sigmas_type", "zero")
        if final not in ("zero", "sigma_min"):
            problems.append(f"scheduler 'final_sigmas_type' {final!r} is not zero or sigma_min")
        table["final_sigma"] = "min" if final == "sigma_min" else "zero"
    elif cfg.get("final_sigmas_type", "zero") != "zero":
        problems.append(
            f"scheduler 'final_sigmas_type' {cfg['final_sigmas_type']!r}: ddkit's {name!r} ends at σ = 0 "
            "(final_sigmas_type 'zero')"
        )
    return table


def _check_keys(cfg: Mapping[str, Any], class_name: str, problems: list[str]) -> None:
    for key, value in cfg.items():
        if key in _META or key in _MAPPED:
            continue
        if key in _NEUTRAL:
            if value not in _NEUTRAL[key]:
                allowed = " or ".join(repr(v) for v in _NEUTRAL[key])
                problems.append(
                    f"scheduler {key!r} = {value!r} changes the numbers in a way ddkit cannot reproduce; "
                    f"only {allowed} is mapped"
                )
            continue
        if key in _DEPENDENT:
            continue  # refused through the key it depends on, when that one is set
        problems.append(
            f"scheduler key {key!r} (= {value!r}) of {class_name} is not understood by ddkit_diffusers; "
            "it may change the numbers, so it is refused rather than ignored"
        )
    if cfg.get("clip_sample", False) and cfg.get("clip_sample_range", 1.0) != 1.0:
        problems.append(
            f"scheduler 'clip_sample_range' {cfg['clip_sample_range']!r}: ddkit clips x̂_0 to [-1, 1] only"
        )


def scheduler_tables(cfg: Mapping[str, Any], steps: int | None = None) -> dict[str, dict[str, Any]]:
    """The ``schedule``, ``parameterization`` and ``sampler`` tables for a diffusers scheduler config.

    ``steps`` overrides the sampler's default for the scheduler class. Raises
    :class:`ddkit.ConfigError` listing every key that cannot be mapped.
    """
    problems: list[str] = []
    class_name = cfg.get("_class_name")
    if class_name not in SCHEDULERS:
        raise ConfigError(
            f"scheduler class {class_name!r} is not mapped by ddkit_diffusers; it maps "
            f"{', '.join(SCHEDULERS)}"
        )
    _check_keys(cfg, class_name, problems)
    timesteps = cfg.get("num_train_timesteps", 1000)
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ConfigError(f"scheduler 'num_train_timesteps' must be a positive int (got {timesteps!r})")
    if steps is None:
        steps = SCHEDULERS[class_name][1]
    tables: dict[str, dict[str, Any]] = {}
    if class_name in FLOW_SCHEDULERS:
        if "rectified-flow" not in ddkit.names("schedule"):
            problems.append(
                f"{class_name} needs ddkit's 'rectified-flow' schedule, which this ddkit-core does not "
                "provide; upgrade ddkit-core"
            )
        shift = _number(cfg, "shift", 1.0, problems)
        tables["schedule"] = {"name": "rectified-flow", "shift": shift, "timesteps": timesteps}
        tables["parameterization"] = {"name": "velocity"}
    else:
        tables["schedule"] = _schedule(cfg, timesteps, problems)
        prediction = cfg.get("prediction_type", "epsilon")
        if prediction not in _PREDICTIONS:
            problems.append(
                f"scheduler 'prediction_type' {prediction!r} is not one of {', '.join(_PREDICTIONS)}"
            )
        variance = cfg.get("variance_type") or "fixed_small"
        if variance not in _VARIANCES:
            problems.append(f"scheduler 'variance_type' {variance!r} is not one of {', '.join(_VARIANCES)}")
        clip = cfg.get("clip_sample", False)
        if not isinstance(clip, bool):
            problems.append(f"scheduler 'clip_sample' must be a bool (got {clip!r})")
        tables["parameterization"] = {
            "name": _PREDICTIONS.get(prediction, "epsilon"),
            "variance": _VARIANCES.get(variance, "fixed-small"),
            "clip_denoised": bool(clip),
        }
    tables["sampler"] = sampler_table(cfg, steps, problems)
    if problems:
        raise ConfigError(
            f"cannot map the {class_name} config to ddkit ({len(problems)} problem"
            f"{'s' if len(problems) > 1 else ''}):\n  - " + "\n  - ".join(problems)
        )
    return tables


def _component(index: Mapping[str, Any], name: str) -> str | None:
    """The class name model_index.json gives a component (None when absent or null)."""
    entry = index.get(name)
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None:
        return str(entry[1])
    return None


def pipeline_config(path: str | Path, *, steps: int | None = None) -> dict[str, Any]:
    """The ddkit pipeline config for the diffusers pipeline folder ``path`` (nothing is loaded).

    Refuses, naming each, components and scheduler keys it cannot map.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"no folder at {str(root)!r}: from_diffusers takes a local pipeline folder saved by diffusers' "
            "save_pretrained (it never downloads)"
        )
    if not (root / "model_index.json").is_file():
        raise ConfigError(
            f"{str(root)!r} has no model_index.json, so it is not a diffusers pipeline folder; for a single "
            "saved network use the 'diffusers' model with a schedule of your own"
        )
    index = read_json(root / "model_index.json")
    problems: list[str] = []
    networks = [name for name in NETWORK_FOLDERS if _component(index, name) is not None]
    if len(networks) != 1:
        problems.append(
            f"model_index.json must list exactly one of {', '.join(NETWORK_FOLDERS)} (got "
            f"{', '.join(networks) or 'none'})"
        )
    for name, entry in index.items():
        cls = _component(index, name)
        if name.startswith("_") or cls is None or name in IGNORED_COMPONENTS or name == "scheduler":
            continue
        if name in NETWORK_FOLDERS:
            if cls not in MODEL_CLASSES:
                loads = ", ".join(MODEL_CLASSES)
                problems.append(f"component {name!r} is a {cls}; the 'diffusers' model loads {loads}")
        elif name == "vae":
            if cls not in AUTOENCODER_CLASSES:
                loads = ", ".join(AUTOENCODER_CLASSES)
                problems.append(f"component 'vae' is a {cls}; 'diffusers-vae' loads {loads}")
            elif "autoencoder" not in ddkit.KINDS:
                problems.append(
                    "component 'vae' needs latent pipelines (the 'autoencoder' kind), which this ddkit-core "
                    "does not have; upgrade ddkit-core"
                )
        else:
            problems.append(f"component {name!r} ({entry!r}) is not mapped by from_diffusers")
    if _component(index, "scheduler") is None:
        problems.append("model_index.json lists no scheduler")
    if problems:
        raise ConfigError(f"cannot map {str(root)!r} to a ddkit pipeline:\n  - " + "\n  - ".join(problems))
    scheduler = read_json(root / "scheduler" / "scheduler_config.json")
    config: dict[str, Any] = dict(scheduler_tables(scheduler, steps))
    config["model"] = {"name": "diffusers", "path": str(root), "subfolder": networks[0]}
    if _component(index, "vae") is not None:
        config["autoencoder"] = {"name": "diffusers-vae", "path": str(root), "subfolder": "vae"}
    return config


def _merge(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides applied section by section: a table naming the same part (or none) updates it."""
    out = dict(config)
    for section, value in overrides.items():
        current = out.get(section)
        if (
            isinstance(value, Mapping)
            and isinstance(current, Mapping)
            and value.get("name", current.get("name")) == current.get("name")
        ):
            out[section] = {**current, **value}
        else:
            out[section] = value
    return out


def from_diffusers(path: str | Path, **overrides: Any) -> ddkit.Pipeline:
    """A :class:`ddkit.Pipeline` for the diffusers pipeline folder ``path`` (local, never downloaded).

    The schedule, parameterization and sampler come from ``scheduler/scheduler_config.json``,
    the model from the ``unet`` or ``transformer`` folder (model ``diffusers``) and the
    autoencoder from ``vae`` (``diffusers-vae``). ``overrides`` are pipeline config sections:
    a table naming the same part as the folder (or no name) updates it, e.g.
    ``sampler={"steps": 25}`` or ``model={"dtype": "float16"}``; anything else replaces it,
    e.g. ``sampler="dpm-solver++"`` or ``guidance=[{"name": "classifier-free", ...}]``.

    Everything the folder sets that ddkit cannot reproduce is refused by name, before any
    weights are read.

    .. versionadded:: 0.1.0
    """
    steps = None
    sampler = overrides.get("sampler")
    if isinstance(sampler, Mapping) and isinstance(sampler.get("steps"), int):
        steps = sampler["steps"]  # the explicit grid of a leading spacing with steps_offset depends on it
    config = _merge(pipeline_config(path, steps=steps), overrides)
    return ddkit.Pipeline.from_config(config)
