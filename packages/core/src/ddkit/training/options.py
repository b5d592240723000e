"""The trainer's options, each checked before any work starts, with messages that say the fix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from ddkit.errors import ConfigError
from ddkit.training.ema import EMA_WARMUPS

__all__ = ["ON_NONFINITE", "PRECISIONS", "TrainOptions"]

#: ``fp32``; ``bf16`` autocast (CPU and GPU); ``fp16`` autocast with a gradient scaler (GPU only).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: What a step with a non-finite loss or gradient does: raise naming the step, or drop the batch.
ON_NONFINITE: tuple[str, ...] = ("stop", "skip")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ConfigError(f"'{attribute.name}' must be a positive int (got {value!r})")


def _non_negative_int(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_int(value) or value < 0:  # type: ignore[operator]
        raise ConfigError(f"'{attribute.name}' must be an int >= 0 (got {value!r})")


def _optional_positive_int(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _positive_int(_, attribute, value)


def _positive_number(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_number(value) or value <= 0:  # type: ignore[operator]
        raise ConfigError(f"'{attribute.name}' must be a positive number (got {value!r})")


def _non_negative_number(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_number(value) or value < 0:  # type: ignore[operator]
        raise ConfigError(f"'{attribute.name}' must be a number >= 0 (got {value!r})")


def _optional_positive_number(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _positive_number(_, attribute, value)


def _bool(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"'{attribute.name}' must be true or false (got {value!r})")


def _ema_rates(value: object) -> tuple[float, ...]:
    rates = (value,) if _is_number(value) else value
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence):
        raise ConfigError(f"'ema_rates' must be a list of rates in [0, 1), e.g. [0.9999] (got {value!r})")
    out: list[float] = []
    for r in rates:
        if not _is_number(r) or not 0.0 <= r < 1.0:
            raise ConfigError(
                f"each EMA rate must be a number in [0, 1), e.g. 0.9999 (got {r!r} in 'ema_rates')"
            )
        if float(r) in out:
            raise ConfigError(f"'ema_rates' lists {r!r} twice")
        out.append(float(r))
    return tuple(out)


def _ema_warmup(value: object) -> str:
    if value is True:
        return "fraction"
    if value is False:
        return "none"
    if value not in EMA_WARMUPS:
        raise ConfigError(
            f"'ema_warmup' must be true, false or one of {', '.join(EMA_WARMUPS)} (got {value!r})"
        )
    return str(value)


def _null_cond(value: object) -> dict[str, Any]:
    """Each conditioning keyword's null value for condition dropout: a tensor, a number or ``"learned"``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(
            "'null_cond' must map conditioning keywords to a null value or \"learned\", e.g. "
            f"{{'encoder_hidden_states': 'learned'}} (got {value!r})"
        )
    out: dict[str, Any] = {}
    for key, null in value.items():
        if isinstance(null, str):
            if null != "learned":
                raise ConfigError(
                    f"'null_cond'[{key!r}] must be a tensor, a number or \"learned\" (got {null!r})"
                )
            out[key] = null
            continue
        try:
            out[key] = torch.as_tensor(null)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(
                f"'null_cond'[{key!r}] must be a tensor, a number or \"learned\" (got {type(null).__name__})"
            ) from None
    return out


def _precision(value: object) -> str:
    aliases: dict[object, object] = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", None: "fp32"}
    value = aliases.get(value, value)
    if value not in PRECISIONS:
        raise ConfigError(f"'precision' must be one of {', '.join(PRECISIONS)} (got {value!r})")
    return str(value)


def _on_nonfinite(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ON_NONFINITE:
        raise ConfigError(
            f'\'on_nonfinite\' must be "stop" (raise, naming the step) or "skip" (drop the batch) '
            f"(got {value!r})"
        )


def _out_dir(value: object) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"'out_dir' must be a directory path (got {value!r})")
    return Path(value)


@attrs.frozen(kw_only=True)
class TrainOptions:
    """Everything :class:`~ddkit.Trainer` takes besides the pipeline and the data (see its docstring)."""

    batch_size: int = attrs.field(validator=_positive_int)
    lr: float = attrs.field(default=1e-4, validator=_positive_number)
    weight_decay: float = attrs.field(default=0.0, validator=_non_negative_number)
    lr_warmup_steps: int = attrs.field(default=0, validator=_non_negative_int)
    grad_clip: float | None = attrs.field(default=None, validator=_optional_positive_number)
    grad_accum: int = attrs.field(default=1, validator=_positive_int)
    ema_rates: tuple[float, ...] = attrs.field(default=(0.9999,), converter=_ema_rates)
    ema_warmup: str = attrs.field(default="fraction", converter=_ema_warmup)
    ema_power: float = attrs.field(default=2 / 3, validator=_positive_number)
    use_ema: bool = attrs.field(default=True, validator=_bool)
    cond_dropout: float = attrs.field(default=0.0)
    null_cond: dict[str, Any] = attrs.field(factory=dict, converter=_null_cond)
    precision: str = attrs.field(default="fp32", converter=_precision)
    gradient_checkpointing: bool = attrs.field(default=False, validator=_bool)
    channels_last: bool = attrs.field(default=False, validator=_bool)
    seed: int | None = attrs.field(default=None)
    out_dir: Path | None = attrs.field(default=None, converter=_out_dir)
    checkpoint_every: int | None = attrs.field(default=None, validator=_optional_positive_int)
    keep_checkpoints: int = attrs.field(default=3, validator=_positive_int)
    resume: bool = attrs.field(default=False, validator=_bool)
    log_every: int = attrs.field(default=100, validator=_positive_int)
    on_nonfinite: str = attrs.field(default="stop", validator=_on_nonfinite)
    progress: bool = attrs.field(default=False, validator=_bool)

    @cond_dropout.validator
    def _check_dropout(self, attribute: attrs.Attribute[float], value: object) -> None:
        if not _is_number(value) or not 0.0 <= value < 1.0:  # type: ignore[operator]
            raise ConfigError(f"'cond_dropout' must be a probability in [0, 1), e.g. 0.1 (got {value!r})")

    @seed.validator
    def _check_seed(self, attribute: attrs.Attribute[int | None], value: object) -> None:
        if value is not None and (not _is_int(value) or value < 0):  # type: ignore[operator]
            raise ConfigError(f"'seed' must be an int >= 0 or None for a random one (got {value!r})")

    def __attrs_post_init__(self) -> None:
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum} "
                "(each accumulation step trains on batch_size / grad_accum samples)"
            )
        if self.checkpoint_every is not None and self.out_dir is None:
            raise ConfigError("'checkpoint_every' needs 'out_dir': the directory to write checkpoints to")
        if self.resume and self.out_dir is None:
            raise ConfigError("'resume' needs 'out_dir': the directory of the run to continue")
        if self.null_cond and self.cond_dropout == 0:
            raise ConfigError(
                f"'null_cond' gives null values for {sorted(self.null_cond)}, but cond_dropout is 0, so "
                "nothing is ever dropped; set cond_dropout, e.g. 0.1"
            )
