"""guided-diffusion's flags: parsing, defaults and translation to constructor arguments.

Flags come as guided-diffusion's scripts take them (``"--class_cond True --num_channels
256"`` or that string split into argv) or as keyword values (``class_cond=True``, or the
strings the scripts would see). Defaults are those of the scripts
(``model_and_diffusion_defaults``, ``classifier_defaults``,
``sr_model_and_diffusion_defaults``), so a flag string from guided-diffusion's README
builds the network its checkpoint was trained as.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CLASSIFIER_DEFAULTS",
    "DIFFUSION_FLAGS",
    "MODEL_DEFAULTS",
    "NUM_CLASSES",
    "SCRIPT_FLAGS",
    "SUPERRES_DEFAULTS",
    "classifier_config",
    "default_channel_mult",
    "kind_flags",
    "known_flags",
    "model_config",
    "parse_flags",
    "superres_config",
]

#: ImageNet: the class count of every class-conditional release.
NUM_CLASSES = 1000

MODEL_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
}

CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "classifier_use_fp16": False,
    "classifier_width": 128,
    "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True,
    "classifier_pool": "attention",
}

SUPERRES_DEFAULTS: dict[str, Any] = {
    "large_size": 256,
    "small_size": 64,
    **{k: v for k, v in MODEL_DEFAULTS.items() if k not in ("image_size",)},
}

#: ddkit's additions, accepted beside guided-diffusion's flags.
_MODEL_EXTRAS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": None,
    "num_classes": None,
    "null_class": False,
    "dims": 2,
    "conv_resample": True,
    "attention_backend": "auto",
    "memory_format": "auto",
}
_CLASSIFIER_EXTRAS: dict[str, Any] = {
    "in_channels": 3,
    "classifier_num_classes": NUM_CLASSES,
    "classifier_channel_mult": "",
    "classifier_num_head_channels": 64,
    "classifier_dropout": 0.0,
    "attention_backend": "auto",
    "memory_format": "auto",
}

#: Flags of the diffusion process: meaningful to guided-diffusion's scripts, not to a network.
DIFFUSION_FLAGS: frozenset[str] = frozenset(
    {
        "diffusion_steps",
        "noise_schedule",
        "timestep_respacing",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
        "sigma_small",
    }
)

#: Flags of guided-diffusion's sampling and training scripts (ignored when loading).
SCRIPT_FLAGS: frozenset[str] = frozenset(
    {
        "clip_denoised",
        "num_samples",
        "batch_size",
        "use_ddim",
        "model_path",
        "classifier_path",
        "classifier_scale",
        "base_samples",
        "data_dir",
        "val_data_dir",
        "schedule_sampler",
        "lr",
        "weight_decay",
        "lr_anneal_steps",
        "microbatch",
        "ema_rate",
        "log_interval",
        "save_interval",
        "eval_interval",
        "resume_checkpoint",
        "fp16_scale_growth",
        "iterations",
        "anneal_lr",
        "noised",
    }
)

_DEFAULT_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),  # ddkit addition (improved-diffusion's CIFAR-10 U-Net); guided-diffusion has none
}
_SUPERRES_MULT: dict[int, tuple[float, ...]] = {
    512: (1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    64: (1, 2, 3, 4),
}


# -- parsing ---------------------------------------------------------------------------------


def parse_flags(flags: str | Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Read flags in guided-diffusion's CLI syntax into a dict of (string) values.

    Accepts ``"--a 1 --b=2"``, ``["--a", "1", "--b=2"]`` or a mapping (returned as a dict).
    Values stay strings; :func:`model_config` and friends convert and validate them.
    """
    if flags is None:
        return {}
    if isinstance(flags, Mapping):
        return dict(flags)
    argv = shlex.split(flags) if isinstance(flags, str) else [str(a) for a in flags]
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"expected a flag like '--num_channels' at {token!r} in {' '.join(argv)!r}")
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ValueError(
                    f"flag '--{name}' has no value (guided-diffusion flags take one: '--{name} VALUE')"
                )
            value = argv[i + 1]
            i += 1
        if name in out and out[name] != value:
            raise ValueError(f"flag '--{name}' is given twice ({out[name]!r} and {value!r})")
        out[name] = value
        i += 1
    return out


# -- value conversion --------------------------------------------------------------------------


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("yes", "true", "t", "y", "1"):
            return True
        if low in ("no", "false", "f", "n", "0"):
            return False
    raise ValueError(f"'{name}' must be a boolean (True/False, or 'True'/'False' as a flag), got {v!r}")


def _int(name: str, v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise ValueError(f"'{name}' must be an integer, got {v!r}")


def _opt_int(name: str, v: Any) -> int | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none")):
        return None
    return _int(name, v)


def _float(name: str, v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            pass
    raise ValueError(f"'{name}' must be a number, got {v!r}")


def _str(choices: Sequence[str]) -> Callable[[str, Any], str]:
    def convert(name: str, v: Any) -> str:
        if isinstance(v, str) and v in choices:
            return v
        raise ValueError(f"'{name}' must be one of {', '.join(map(repr, choices))} (got {v!r})")

    return convert


def _numbers(name: str, v: Any, kind: str) -> tuple[float, ...]:
    """A comma-separated string or a sequence of positive numbers; ``""`` is the empty tuple."""
    items: Iterable[Any]
    if isinstance(v, str):
        items = [p for p in (s.strip() for s in v.split(",")) if p]
    elif isinstance(v, Sequence | set | frozenset):
        items = list(v)
    else:
        raise ValueError(f"'{name}' must be {kind} as a comma-separated string or a sequence, got {v!r}")
    out: list[float] = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"'{name}' must be {kind} (like '1,2,2'), got {v!r}") from None
        if isinstance(item, bool) or number <= 0:
            raise ValueError(f"'{name}' must be {kind} (all positive), got {v!r}")
        out.append(int(number) if number.is_integer() else number)
    return tuple(out)


def _mult(name: str, v: Any) -> tuple[float, ...]:
    return _numbers(name, v, "channel multipliers")


def _resolutions(name: str, v: Any) -> tuple[int, ...]:
    values = _numbers(name, v, "resolutions")
    if any(not float(r).is_integer() for r in values):
        raise ValueError(f"'{name}' must be integer resolutions like '32,16,8', got {v!r}")
    return tuple(int(r) for r in values)


def _backend(name: str, v: Any) -> str:
    from ddkit_models.attention import BACKENDS

    return _str(BACKENDS)(name, v)


def _pool(name: str, v: Any) -> str:
    from ddkit_models.classifier import POOLS

    return _str(POOLS)(name, v)


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "image_size": _int,
    "large_size": _int,
    "small_size": _int,
    "num_channels": _int,
    "num_res_blocks": _int,
    "num_heads": _int,
    "num_heads_upsample": _int,
    "num_head_channels": _int,
    "attention_resolutions": _resolutions,
    "channel_mult": _mult,
    "dropout": _float,
    "class_cond": _bool,
    "use_checkpoint": _bool,
    "use_scale_shift_norm": _bool,
    "resblock_updown": _bool,
    "use_fp16": _bool,
    "use_new_attention_order": _bool,
    "learn_sigma": _bool,
    "in_channels": _int,
    "out_channels": _opt_int,
    "num_classes": _opt_int,
    "null_class": _bool,
    "dims": _int,
    "conv_resample": _bool,
    "attention_backend": _backend,
    "memory_format": _str(("auto", "channels_last", "preserve")),
    "classifier_use_fp16": _bool,
    "classifier_width": _int,
    "classifier_depth": _int,
    "classifier_attention_resolutions": _resolutions,
    "classifier_use_scale_shift_norm": _bool,
    "classifier_resblock_updown": _bool,
    "classifier_pool": _pool,
    "classifier_num_classes": _int,
    "classifier_channel_mult": _mult,
    "classifier_num_head_channels": _int,
    "classifier_dropout": _float,
}


def _resolve(
    flags: Mapping[str, Any],
    defaults: Mapping[str, Any],
    *,
    what: str,
    aliases: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
) -> tuple[dict[str, Any], set[str]]:
    """Check names (suggesting close ones), apply aliases, convert values over the defaults.

    Returns the full configuration and the set of names the caller gave.
    """
    aliases = aliases or {}
    ignored = set(ignore)
    given: dict[str, Any] = {}
    for key, value in flags.items():
        name = aliases.get(key, key)
        if name not in defaults:
            if name in ignored:
                continue
            if name in DIFFUSION_FLAGS:
                raise ValueError(
                    f"'{key}' is a diffusion flag, not a {what} flag: "
                    "give it to the schedule or parameterization"
                )
            accepted = sorted({*defaults, *aliases})
            close = difflib.get_close_matches(key, accepted, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown {what} flag {key!r}{hint} (accepted: {', '.join(accepted)})")
        if name in given:
            raise ValueError(f"{key!r} is another name for {name!r}: give only one of them")
        given[name] = value
    # Converters are idempotent, so defaults (some of them strings, like the flags) go through too.
    cfg = {name: _CONVERTERS[name](name, value) for name, value in {**defaults, **given}.items()}
    return cfg, set(given)


def default_channel_mult(
    image_size: int, *, table: Mapping[int, tuple[float, ...]] | None = None
) -> tuple[float, ...]:
    """guided-diffusion's channel multipliers for ``image_size`` (plus ddkit's 32-pixel entry)."""
    table = _DEFAULT_MULT if table is None else table
    if image_size not in table:
        sizes = ", ".join(map(str, sorted(table)))
        raise ValueError(
            f"no default 'channel_mult' for image_size={image_size} (defaults exist for {sizes}); "
            "pass channel_mult explicitly, e.g. channel_mult='1,2,2'"
        )
    return table[image_size]


def _attention_ds(name: str, resolutions: Sequence[int], image_size: int) -> tuple[int, ...]:
    """Resolutions -> downsample factors, as the reference: ``image_size // res``."""
    for r in resolutions:
        if r > image_size or image_size % r:
            raise ValueError(
                f"{name!r} holds resolutions that divide image_size={image_size} (like '16,8'); got {r}"
            )
    return tuple(image_size // r for r in resolutions)


def _positive(cfg: Mapping[str, Any], *names: str) -> None:
    for name in names:
        if cfg[name] <= 0:
            raise ValueError(f"{name!r} must be positive (got {cfg[name]!r})")


# -- translation to constructor arguments ------------------------------------------------------

_MODEL_ALIASES = {"model_channels": "num_channels"}


def _unet_kwargs(
    cfg: dict[str, Any], given: set[str], image_size: int, table: Mapping[int, tuple[float, ...]]
) -> dict[str, Any]:
    _positive(cfg, "num_channels", "num_res_blocks", "in_channels")
    if cfg["num_classes"] is not None:
        if "class_cond" in given and not cfg["class_cond"]:
            raise ValueError("num_classes is set but class_cond=False: drop one of them")
        num_classes: int | None = cfg["num_classes"]
    else:
        num_classes = NUM_CLASSES if cfg["class_cond"] else None
    out_channels = cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1)
    if cfg["out_channels"] is not None:
        if "learn_sigma" in given and cfg["out_channels"] != out_channels:
            raise ValueError(
                f"out_channels={cfg['out_channels']} contradicts learn_sigma={cfg['learn_sigma']} "
                f"(which means {out_channels}); give one of them"
            )
        out_channels = cfg["out_channels"]
    mult = cfg["channel_mult"] or default_channel_mult(image_size, table=table)
    return {
        "image_size": image_size,
        "in_channels": cfg["in_channels"],
        "model_channels": cfg["num_channels"],
        "out_channels": out_channels,
        "num_res_blocks": cfg["num_res_blocks"],
        "attention_resolutions": _attention_ds(
            "attention_resolutions", cfg["attention_resolutions"], image_size
        ),
        "dropout": cfg["dropout"],
        "channel_mult": mult,
        "conv_resample": cfg["conv_resample"],
        "dims": cfg["dims"],
        "num_classes": num_classes,
        "use_checkpoint": cfg["use_checkpoint"],
        "use_fp16": cfg["use_fp16"],
        "num_heads": cfg["num_heads"],
        "num_head_channels": cfg["num_head_channels"],
        "num_heads_upsample": cfg["num_heads_upsample"],
        "use_scale_shift_norm": cfg["use_scale_shift_norm"],
        "resblock_updown": cfg["resblock_updown"],
        "use_new_attention_order": cfg["use_new_attention_order"],
        "null_class": cfg["null_class"],
        "attention_backend": cfg["attention_backend"],
        "memory_format": cfg["memory_format"],
    }


def model_config(flags: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """:class:`~ddkit_models.unet.ADMUNet` arguments from ``create_model``'s flags (+ ddkit's)."""
    cfg, given = _resolve(
        flags, {**MODEL_DEFAULTS, **_MODEL_EXTRAS}, what="model", aliases=_MODEL_ALIASES, ignore=ignore
    )
    _positive(cfg, "image_size")
    return _unet_kwargs(cfg, given, cfg["image_size"], _DEFAULT_MULT)


def superres_config(flags: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """:class:`~ddkit_models.unet.ADMSuperRes` arguments from ``sr_create_model``'s flags (+ ddkit's).

    ``image_size`` is accepted as another name for ``large_size``.
    """
    aliases = {**_MODEL_ALIASES, "image_size": "large_size"}
    cfg, given = _resolve(
        flags, {**SUPERRES_DEFAULTS, **_MODEL_EXTRAS}, what="super-resolution", aliases=aliases, ignore=ignore
    )
    _positive(cfg, "large_size", "small_size")
    # small_size does not shape the network (low_res is resized to x); it is only recorded.
    if "small_size" in given and cfg["large_size"] < cfg["small_size"]:
        raise ValueError(
            f"'large_size' ({cfg['large_size']}) must be at least 'small_size' ({cfg['small_size']})"
        )
    table = {**_DEFAULT_MULT, **_SUPERRES_MULT}
    kwargs = _unet_kwargs(cfg, given, cfg["large_size"], table)
    kwargs["small_size"] = cfg["small_size"] if "small_size" in given else None
    return kwargs


_CLASSIFIER_ALIASES = {
    "width": "classifier_width",
    "depth": "classifier_depth",
    "pool": "classifier_pool",
    "num_classes": "classifier_num_classes",
    "channel_mult": "classifier_channel_mult",
    "num_head_channels": "classifier_num_head_channels",
    "dropout": "classifier_dropout",
}


def classifier_config(
    flags: Mapping[str, Any], *, ignore: Iterable[str] = (), aliases: bool = True
) -> dict[str, Any]:
    """:class:`~ddkit_models.classifier.ADMClassifier` arguments from ``create_classifier``'s flags.

    With ``aliases`` the unprefixed names (``width``, ``depth``, ``pool``, ``num_classes``,
    ``channel_mult``, ``num_head_channels``, ``dropout``) are accepted too; the loader
    turns them off because there they belong to the diffusion model.
    """
    cfg, _ = _resolve(
        flags,
        {**CLASSIFIER_DEFAULTS, **_CLASSIFIER_EXTRAS},
        what="classifier",
        aliases=_CLASSIFIER_ALIASES if aliases else None,
        ignore=ignore,
    )
    _positive(
        cfg, "image_size", "classifier_width", "classifier_depth", "classifier_num_classes", "in_channels"
    )
    image_size = cfg["image_size"]
    mult = cfg["classifier_channel_mult"] or default_channel_mult(image_size)
    return {
        "image_size": image_size,
        "in_channels": cfg["in_channels"],
        "model_channels": cfg["classifier_width"],
        "out_channels": cfg["classifier_num_classes"],
        "num_res_blocks": cfg["classifier_depth"],
        "attention_resolutions": _attention_ds(
            "classifier_attention_resolutions", cfg["classifier_attention_resolutions"], image_size
        ),
        "dropout": cfg["classifier_dropout"],
        "channel_mult": mult,
        "use_fp16": cfg["classifier_use_fp16"],
        "num_head_channels": cfg["classifier_num_head_channels"],
        "use_scale_shift_norm": cfg["classifier_use_scale_shift_norm"],
        "resblock_updown": cfg["classifier_resblock_updown"],
        "pool": cfg["classifier_pool"],
        "attention_backend": cfg["attention_backend"],
        "memory_format": cfg["memory_format"],
    }


def kind_flags(kind: str) -> frozenset[str]:
    """The flag names that configure ``kind`` (``model``, ``superres`` or ``classifier``)."""
    if kind == "classifier":
        return frozenset({*CLASSIFIER_DEFAULTS, *_CLASSIFIER_EXTRAS})
    if kind == "superres":
        return frozenset({*SUPERRES_DEFAULTS, *_MODEL_EXTRAS, *_MODEL_ALIASES, "image_size"})
    if kind == "model":
        return frozenset({*MODEL_DEFAULTS, *_MODEL_EXTRAS, *_MODEL_ALIASES})
    raise ValueError(f"'kind' must be 'model', 'superres' or 'classifier' (got {kind!r})")


def known_flags() -> frozenset[str]:
    """All flag names of the three kinds, ddkit's additions and the ignored script flags."""
    return frozenset(
        {
            *MODEL_DEFAULTS,
            *_MODEL_EXTRAS,
            *_MODEL_ALIASES,
            *SUPERRES_DEFAULTS,
            *CLASSIFIER_DEFAULTS,
            *_CLASSIFIER_EXTRAS,
            *DIFFUSION_FLAGS,
            *SCRIPT_FLAGS,
        }
    )
