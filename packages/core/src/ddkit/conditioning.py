"""Learned null embeddings: the "no condition" value of a conditioning keyword, trained with the model.

Condition dropout (``Trainer(cond_dropout=p, null_cond={"encoder_hidden_states": "learned"})``)
replaces a dropped sample's conditioning by a parameter. That parameter lives on the model
itself, in a child ``nn.ParameterDict`` named :data:`NULL_MODULE` (``model.ddkit_null``), so
that the optimizer, the EMA copies, trainer checkpoints and ``model.safetensors`` carry it
with no extra file (its tensors are saved as ``ddkit_null.<keyword>``). A loaded pipeline
re-attaches it from the saved weights, and sampling passes it to classifier-free guidance as
the unconditional value of its keyword (see :data:`ddkit.protocols.UNCOND_KEYWORDS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["NULL_MODULE", "attach_null_embeddings", "attach_saved_null_embeddings", "null_embeddings"]

#: The attribute of a model that holds its learned null embeddings.
NULL_MODULE = "ddkit_null"


def null_embeddings(model: object) -> dict[str, Tensor]:
    """The learned null embedding of each conditioning keyword of ``model`` (empty if none)."""
    table = getattr(model, NULL_MODULE, None)
    if isinstance(table, nn.ParameterDict):
        return dict(table.items())
    return {}


def attach_null_embeddings(model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> nn.ParameterDict:
    """Give ``model`` a zero-initialised learned null embedding per keyword of ``shapes``.

    ``shapes`` gives one sample's shape of each keyword.

    Keywords it already has keep their values; a keyword with another shape is an error.
    """
    table = getattr(model, NULL_MODULE, None)
    if table is None:
        table = nn.ParameterDict()
        model.add_module(NULL_MODULE, table)
    elif not isinstance(table, nn.ParameterDict):
        raise TypeError(
            f"the model's attribute {NULL_MODULE!r} is a {type(table).__name__}, not an nn.ParameterDict"
        )
    ref = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    for key, shape in shapes.items():
        want = tuple(int(d) for d in shape)
        if key in table:
            if tuple(table[key].shape) != want:
                raise ValueError(
                    f"the model's learned null embedding for {key!r} has shape "
                    f"{tuple(table[key].shape)}, but the data's {key!r} has shape {want} per sample"
                )
            continue
        table[key] = nn.Parameter(torch.zeros(want, device=device, dtype=dtype))
    return table


def attach_saved_null_embeddings(model: nn.Module, path: str | Path) -> None:
    """Before loading ``path`` (safetensors weights) into ``model``, attach the null embeddings it holds."""
    from safetensors import safe_open

    prefix = f"{NULL_MODULE}."
    shapes: dict[str, list[int]] = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if name.startswith(prefix):
                shapes[name[len(prefix) :]] = list(f.get_slice(name).get_shape())
    if shapes:
        attach_null_embeddings(model, shapes)
