"""Loading guided-diffusion checkpoints (and ddkit's own) safely.

``.pt`` files are read with ``torch.load(weights_only=True)``: tensors and plain
containers only, never pickled code. ``.safetensors`` files are read with safetensors;
:func:`convert_to_safetensors` writes one, optionally recording the flags in its metadata
so that it later loads without them.

The network is built from guided-diffusion's flags (see :mod:`ddkit_models.flags`); which
network (diffusion model, upsampler or classifier) is read off the checkpoint itself. A
state dict that does not fit raises :class:`CheckpointMismatchError` naming the missing,
unexpected and mis-shaped keys, with the flag that most likely explains them.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ddkit import IntegrityError
from ddkit_models.flags import (
    classifier_config,
    kind_flags,
    known_flags,
    model_config,
    parse_flags,
    superres_config,
)

__all__ = [
    "CheckpointMismatchError",
    "Kind",
    "check_state_dict",
    "convert_to_safetensors",
    "detect_kind",
    "from_guided_diffusion",
    "load_checkpoint",
    "read_state_dict",
]

Kind = Literal["model", "superres", "classifier"]
Flags = str | Sequence[str] | Mapping[str, Any] | None

_FLAGS_KEY = "ddkit_flags"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "ema")


class CheckpointMismatchError(IntegrityError):
    """A state dict whose keys or shapes do not fit the network the flags describe."""

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


# -- reading ----------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a ``.pt``/``.pth`` or ``.safetensors`` file: ``(state_dict, metadata)`` on the CPU.

    A ``.pt`` may hold the state dict itself or wrap it under ``state_dict``/``model``/
    ``model_state_dict``/``ema``; a ``module.`` prefix (DistributedDataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        return state, metadata
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise IntegrityError(
            f"{str(path)!r} holds Python objects other than tensors, and ddkit loads checkpoints with "
            "weights_only=True, never running pickled code. Re-save just the state dict "
            "(torch.save(model.state_dict(), path)) where you trust the file. Details: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise IntegrityError(
            f"{str(path)!r} is not a readable PyTorch checkpoint (truncated?): {exc}"
        ) from None
    return _unwrap(obj, path), metadata


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise IntegrityError(
            f"{str(path)!r} is not a state dict (a mapping of names to tensors, possibly under "
            f"one of the keys {', '.join(_WRAPPER_KEYS)})"
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def convert_to_safetensors(pt_path: str | Path, out_path: str | Path, *, flags: Flags = None) -> Path:
    """Rewrite a ``.pt`` checkpoint as ``.safetensors`` (read with ``weights_only=True``).

    ``flags`` (guided-diffusion syntax or a mapping) are stored in the file's metadata and
    used by :func:`load_checkpoint` when none are given. Returns ``out_path``.
    """
    from safetensors.torch import save_file

    state, metadata = read_state_dict(pt_path)
    seen: set[int] = set()
    tensors: dict[str, Tensor] = {}
    for key, value in state.items():
        t = value.detach().contiguous()
        if t.data_ptr() in seen:  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[key] = t
    if flags is not None:
        parsed = parse_flags(flags)
        metadata[_FLAGS_KEY] = " ".join(f"--{k} {_flag_text(v)}" for k, v in parsed.items())
    out = Path(out_path)
    save_file(tensors, str(out), metadata={"format": "pt", **metadata})
    return out


def _flag_text(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


# -- which network ---------------------------------------------------------------------------


def detect_kind(state: Mapping[str, Tensor], flags: Mapping[str, Any]) -> Kind:
    """Classifier when there is no up path; upsampler when the super-resolution flags are given
    or the first convolution takes twice the image channels; otherwise the diffusion model."""
    if not any(k.startswith("output_blocks.") for k in state):
        return "classifier"
    if "large_size" in flags or "small_size" in flags:
        return "superres"
    first = state.get("input_blocks.0.0.weight")
    try:
        in_channels = int(flags.get("in_channels", 3))
    except (TypeError, ValueError):
        in_channels = 3
    if first is not None and first.dim() >= 2 and first.shape[1] == 2 * in_channels:
        return "superres"
    return "model"


def _build(kind: Kind, flags: Mapping[str, Any]) -> nn.Module:
    from ddkit_models.classifier import ADMClassifier
    from ddkit_models.unet import ADMSuperRes, ADMUNet

    # Flags of the other kinds and of the scripts are skipped; unknown ones still raise.
    ignore = known_flags() - kind_flags(kind)
    if kind == "classifier":
        return ADMClassifier(**classifier_config(flags, ignore=ignore, aliases=False))
    if kind == "superres":
        return ADMSuperRes(**superres_config(flags, ignore=ignore))
    return ADMUNet(**model_config(flags, ignore=ignore))


# -- checking --------------------------------------------------------------------------------


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` fits ``model`` key for key and shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(given), key=_natural)
    unexpected = sorted(set(given) - set(expected), key=_natural)
    mismatched = [
        (k, given[k], expected[k])
        for k in sorted(set(given) & set(expected), key=_natural)
        if given[k] != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = ["the checkpoint does not fit the network its flags describe:"]
    for title, items in (("missing", missing), ("unexpected", unexpected)):
        if items:
            shown = ", ".join(items[:6]) + (f", … ({len(items)} in all)" if len(items) > 6 else "")
            lines.append(f"  {title} keys: {shown}")
    if mismatched:
        shown = ", ".join(f"{k} {list(g)} (network: {list(e)})" for k, g, e in mismatched[:4])
        more = f", … ({len(mismatched)} in all)" if len(mismatched) > 4 else ""
        lines.append(f"  shape mismatches (checkpoint vs network): {shown}{more}")
    hints = _hints(model, given, expected)
    lines.append("  likely fix: " + ("; ".join(hints) if hints else _GENERIC_HINT))
    raise CheckpointMismatchError("\n".join(lines), missing, unexpected, mismatched)


_GENERIC_HINT = (
    "check image_size, num_channels, num_res_blocks, channel_mult and attention_resolutions "
    "against the flags the checkpoint was released with"
)


def _natural(key: str) -> tuple[Any, ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))


def _hints(
    model: nn.Module, given: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """Guess the flag behind a mismatch from the tell-tale keys and shapes."""
    is_classifier = not any(k.startswith("output_blocks.") for k in expected)
    prefix = "classifier_" if is_classifier else ""
    hints: list[str] = []

    label_g, label_e = given.get("label_emb.weight"), expected.get("label_emb.weight")
    if label_g and not label_e:
        hints.append(f"the checkpoint is class-conditional ({label_g[0]} classes): pass --class_cond True")
    elif label_e and not label_g:
        hints.append("the checkpoint is unconditional: pass --class_cond False")
    elif label_g and label_e and label_g[0] != label_e[0]:
        if label_g[0] == label_e[0] + 1:
            hints.append("the checkpoint has a null-class row: pass null_class=True")
        elif label_e[0] == label_g[0] + 1:
            hints.append("the checkpoint has no null-class row: pass null_class=False")
        else:
            hints.append(f"the checkpoint has {label_g[0]} label rows: pass num_classes={label_g[0]}")

    first_g, first_e = given.get("input_blocks.0.0.weight"), expected.get("input_blocks.0.0.weight")
    in_channels = int(getattr(model, "in_channels", 3))
    if first_g and first_e:
        if first_g[0] != first_e[0]:
            mult0 = float(getattr(model, "channel_mult", (1,))[0])
            width = int(first_g[0] / mult0)
            hints.append(
                f"the first convolution has {first_g[0]} channels: pass --{prefix or 'num_'}"
                f"{'width' if prefix else 'channels'} {width}"
            )
        if first_g[1] != first_e[1]:
            if not is_classifier and first_g[1] == 2 * in_channels:
                hints.append(
                    "the checkpoint is an upsampler: pass --large_size and --small_size (or kind='superres')"
                )
            else:
                hints.append(
                    f"the first convolution takes {first_g[1]} channels: pass in_channels={first_g[1]}"
                )

    out_g, out_e = given.get("out.2.weight"), expected.get("out.2.weight")
    if not is_classifier and out_g and out_e and out_g[0] != out_e[0]:
        if out_g[0] == 2 * in_channels:
            hints.append("the checkpoint learns the variance (2× output channels): pass --learn_sigma True")
        elif out_g[0] == in_channels:
            hints.append("the checkpoint does not learn the variance: pass --learn_sigma False")

    def film(keys: Mapping[str, tuple[int, ...]]) -> bool | None:
        """Whether a block's embedding projection has twice its output channels (scale and shift)."""
        for k in keys:
            out = keys.get(k.replace("emb_layers.1.weight", "out_layers.3.weight"))
            if k.endswith("emb_layers.1.weight") and out:
                return keys[k][0] == 2 * out[0]
        return None

    film_g, film_e = film(given), film(expected)
    if film_g is not None and film_e is not None and film_g != film_e:
        hints.append(f"pass --{prefix}use_scale_shift_norm {film_g}")

    blocks_g = {k.split(".")[1] for k in given if k.startswith("input_blocks.")}
    blocks_e = {k.split(".")[1] for k in expected if k.startswith("input_blocks.")}
    if len(blocks_g) != len(blocks_e):
        hints.append(
            f"the checkpoint has {len(blocks_g)} input blocks, the network {len(blocks_e)}: "
            f"check --{prefix}{'depth' if prefix else 'num_res_blocks'}, --image_size and channel_mult"
        )

    def count(keys: Mapping[str, Any], part: str) -> int:
        return sum(1 for k in keys if k.endswith(part))

    if count(given, ".qkv.weight") != count(expected, ".qkv.weight") or {
        k for k in given if k.endswith(".qkv.weight")
    } != {k for k in expected if k.endswith(".qkv.weight")}:
        hints.append(
            f"attention layers sit elsewhere: check --{prefix}attention_resolutions "
            f"({count(given, '.qkv.weight')} attention layers in the checkpoint, "
            f"{count(expected, '.qkv.weight')} in the network)"
        )

    def resamplers(keys: Mapping[str, Any]) -> int:
        return sum(
            1
            for k in keys
            if k.endswith(".op.weight") or (k.endswith(".conv.weight") and "output_blocks" in k)
        )

    if resamplers(given) != resamplers(expected):
        on = resamplers(given) < resamplers(expected)
        hints.append(f"pass --{prefix}resblock_updown {on}")

    if is_classifier:
        pool = _pool_of(given)
        if pool and pool != _pool_of(expected):
            hints.append(f"the checkpoint pools with {pool!r}: pass --classifier_pool {pool}")
        pos_g, pos_e = given.get("out.2.positional_embedding"), expected.get("out.2.positional_embedding")
        if pos_g and pos_e and pos_g != pos_e:
            hints.append("the attention pool was trained at another size: check --image_size")

    return hints


def _pool_of(keys: Mapping[str, tuple[int, ...]]) -> str | None:
    if "out.2.positional_embedding" in keys:
        return "attention"
    if (
        "out.1.weight" in keys
        and len(keys["out.1.weight"]) == 1
        and "out.3.weight" in keys
        and len(keys["out.3.weight"]) == 2
    ):
        return "spatial_v2"
    if "out.3.weight" in keys:
        return "adaptive"
    if "out.2.weight" in keys and len(keys["out.2.weight"]) == 2:
        return "spatial"
    return None


# -- loading ---------------------------------------------------------------------------------


def load_checkpoint(
    path: str | Path,
    flags: Flags = None,
    *,
    kind: Kind | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    **flag_values: Any,
) -> nn.Module:
    """Build the network a checkpoint was trained as and load its weights.

    ``flags``: guided-diffusion's command-line flags (``"--class_cond True --num_channels
    256 ..."`` or an argv list) and/or keyword values (``class_cond=True``); keywords win.
    Flags of the diffusion and of guided-diffusion's scripts (``--diffusion_steps``,
    ``--batch_size``, ...) are accepted and ignored; flags of another network kind (the
    classifier's, when loading a model) too. ``kind`` overrides the detection of model,
    upsampler or classifier. With ``strict`` a mismatch raises
    :class:`CheckpointMismatchError`; otherwise it warns and loads what fits.

    ``use_fp16=True`` (as in guided-diffusion's released flags) makes the torso float16,
    which on a CPU is slow: pass ``use_fp16=False`` there and use autocast if at all.
    """
    state, metadata = read_state_dict(path)
    merged = parse_flags(metadata.get(_FLAGS_KEY))
    merged.update(parse_flags(flags))
    merged.update(flag_values)
    if kind is not None and kind not in ("model", "superres", "classifier"):
        raise ValueError(f"'kind' must be 'model', 'superres' or 'classifier' (got {kind!r})")
    model = _build(kind or detect_kind(state, merged), merged)
    if strict:
        check_state_dict(model, state)
        model.load_state_dict(state, strict=True)
    else:
        try:
            check_state_dict(model, state)
        except CheckpointMismatchError as exc:
            warnings.warn(str(exc), stacklevel=2)
        expected = model.state_dict()
        fitting = {k: v for k, v in state.items() if k in expected and expected[k].shape == v.shape}
        model.load_state_dict(fitting, strict=False)
    return model.to(device).eval()


def from_guided_diffusion(path: str | Path, flags: Flags = "", **kwargs: Any) -> nn.Module:
    """Load a released guided-diffusion checkpoint given the flags of its README entry.

    Same as :func:`load_checkpoint`; e.g. ``from_guided_diffusion("64x64_diffusion.pt",
    "--attention_resolutions 32,16,8 --class_cond True --learn_sigma True --num_channels 192
    --num_head_channels 64 --num_res_blocks 3 --resblock_updown True
    --use_new_attention_order True --use_scale_shift_norm True --image_size 64")``.
    """
    return load_checkpoint(path, flags, **kwargs)
