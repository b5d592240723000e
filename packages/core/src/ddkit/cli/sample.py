"""``ddkit sample``: draw samples from a saved pipeline into a PNG grid and/or an ``.npz``.

The ``.npz`` follows guided-diffusion's sampling scripts: ``arr_0`` holds uint8 images
``[N, H, W, C]`` (raw float samples for non-image data) and ``arr_1`` the class labels
when the model is class-conditional. Sample i is drawn from its own generator seeded by
(seed, i), so it does not depend on the batch size or on how many ranks share the work (up to
floating-point rounding where ranks use other thread counts).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from ddkit.pipeline import Pipeline

__all__ = [
    "add_arguments",
    "class_labels",
    "draw",
    "find_pipeline",
    "grid_image",
    "run",
    "sample_generators",
    "to_uint8",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pipeline", metavar="PIPELINE_DIR", help="a directory written by `ddkit train` or pipe.save"
    )
    parser.add_argument(
        "--n",
        "--num-samples",
        dest="n",
        type=int,
        default=64,
        help="number of samples (default 64); under torchrun write --num-samples (torchrun takes --n)",
    )
    parser.add_argument("--out", metavar="GRID.png", help="write the samples as a PNG grid")
    parser.add_argument("--npz", metavar="OUT.npz", help="write arr_0 (uint8 NHWC images) and arr_1 (labels)")
    parser.add_argument(
        "--batch-size", type=int, default=64, metavar="B", help="samples per batch (default 64)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--class-label", type=int, metavar="K", help="draw every sample from class K")
    labels.add_argument(
        "--classes",
        choices=["all"],
        help="spread the samples over all classes, a grid row per class (class-conditional default)",
    )
    parser.add_argument("--sampler", metavar="NAME", help="use this sampler instead of the saved one")
    parser.add_argument("--steps", type=int, metavar="N", help="sampling steps for the sampler")
    parser.add_argument(
        "--guidance-scale",
        type=float,
        metavar="W",
        help="scale of every guidance (adds "
        "classifier-free guidance to a model with a null class when the pipeline has none)",
    )
    parser.add_argument(
        "--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda when available)"
    )
    parser.add_argument(
        "--no-ema", action="store_true", help="sample with the raw weights, not the EMA average"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


# -- pieces the demo shares ---------------------------------------------------------------


def find_pipeline(path: str | Path) -> Path:
    """The saved pipeline at ``path``: the directory, or its ``pipeline/`` (``ddkit train``'s --out)."""
    from ddkit.errors import ConfigError

    root = Path(path)
    for candidate in (root, root / "pipeline"):
        if (candidate / "pipeline.toml").is_file():
            return candidate
    raise ConfigError(
        f"no saved pipeline at {str(root)!r}: expected {root / 'pipeline.toml'} (a directory written by "
        "pipe.save) or a `ddkit train --out` directory holding pipeline/pipeline.toml"
    )


def class_labels(
    n: int, num_classes: int | None, class_label: int | None, all_classes: bool
) -> torch.Tensor | None:
    """Labels for ``n`` samples: all ``class_label``, or spread evenly over the classes in blocks."""
    import torch

    from ddkit.errors import ConfigError

    if num_classes is None:
        if class_label is not None or all_classes:
            raise ConfigError(
                "this pipeline's model is unconditional: it takes no class labels; "
                "drop --class-label/--classes"
            )
        return None
    if class_label is not None:
        if not 0 <= class_label < num_classes:
            raise ConfigError(f"--class-label must lie in 0..{num_classes - 1} (got {class_label})")
        return torch.full((n,), class_label, dtype=torch.long)
    return torch.arange(n, dtype=torch.long) * num_classes // n


def sample_generators(indices: Sequence[int], seed: int, device: torch.device) -> list[torch.Generator]:
    """One generator per sample, seeded by (``seed``, sample index)."""
    import torch

    gens = []
    for i in indices:
        g = torch.Generator(device=device)
        g.manual_seed((seed % 2**31) * 2**32 + int(i))
        gens.append(g)
    return gens


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Samples in [-1, 1] ``[N, C, H, W]`` as uint8 images ``[N, H, W, C]`` (as guided-diffusion does)."""
    import torch

    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid_image(
    images: np.ndarray, labels: np.ndarray | None = None, *, scale: int | None = None, pad: int = 2
) -> Image.Image:
    """A grid of uint8 images ``[N, H, W, C]``: one row per label when ``labels`` are given, else square."""
    import numpy as np
    from PIL import Image

    n, h, w, c = images.shape
    if labels is not None:
        rows = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    else:
        cols = math.ceil(math.sqrt(n))
        rows = [np.arange(i, min(i + cols, n)) for i in range(0, n, cols)]
    ncols = max(len(r) for r in rows)
    s = scale if scale is not None else max(1, 64 // max(h, w))
    ch, cw = h * s, w * s
    canvas = np.full((len(rows) * (ch + pad) + pad, ncols * (cw + pad) + pad, c), 24, dtype=np.uint8)
    for r, idx in enumerate(rows):
        for col, i in enumerate(idx):
            tile = images[i].repeat(s, axis=0).repeat(s, axis=1)
            y, x = pad + r * (ch + pad), pad + col * (cw + pad)
            canvas[y : y + ch, x : x + cw] = tile
    if c == 1:
        return Image.fromarray(canvas[..., 0], mode="L")
    return Image.fromarray(canvas, mode="RGBA" if c == 4 else "RGB")


def draw(
    pipe: Pipeline,
    indices: Sequence[int],
    *,
    labels: torch.Tensor | None,
    seed: int,
    batch_size: int,
    progress: bool,
    desc: str = "sampling",
) -> torch.Tensor:
    """Samples number ``indices`` of a draw seeded by ``seed``, in batches, with one progress bar."""
    import torch
    from tqdm.auto import tqdm

    from ddkit.errors import ConfigError

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive int (got {batch_size})")
    batches = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    out: list[torch.Tensor] = []
    bar = tqdm(desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for b, batch in enumerate(batches):
            gens = sample_generators(batch, seed, pipe.device)
            cond: dict[str, Any] = {}
            if labels is not None:
                cond["y"] = labels[batch]
            x = None
            count = 0
            for state in pipe.samples_iter(len(batch), generator=gens, **cond):
                x = state.x
                count += 1
                bar.update(1)
            if b == 0:
                bar.total = count * len(batches)
                bar.refresh()
            assert x is not None
            out.append(pipe.decode(x))  # a latent pipeline's states are latents
    finally:
        bar.close()
    if not out:
        return torch.empty((0, *(pipe.data_shape or ())))
    return torch.cat(out)


def _apply_overrides(pipe: Pipeline, args: argparse.Namespace) -> Pipeline:
    from ddkit.errors import ConfigError
    from ddkit.pipeline.config import is_object_marker

    if args.sampler is not None or args.steps is not None:
        current = dict(pipe.config.get("sampler", {}))
        if is_object_marker(current):
            raise ConfigError(
                "--sampler/--steps: the saved sampler was an object, it cannot be changed by name"
            )
        name = current.pop("name")
        if args.sampler is not None and args.sampler != name:
            name, current = args.sampler, {}
        if args.steps is not None:
            current["steps"] = args.steps
        pipe = pipe.with_sampler(name, **current)
    if args.guidance_scale is not None:
        guidance = list(pipe.config.get("guidance", []))
        if not guidance:
            if pipe.spec.null_class is None:
                raise ConfigError(
                    "--guidance-scale: the pipeline has no guidance, and its model has no null class, so "
                    "classifier-free guidance cannot be added; sample without --guidance-scale"
                )
            guidance = [{"name": "classifier-free"}]
        if any(is_object_marker(g) for g in guidance):
            raise ConfigError(
                "--guidance-scale: a saved guidance was an object; it cannot be rebuilt by name"
            )
        pipe = pipe.with_guidance([{**g, "scale": args.guidance_scale} for g in guidance])
    return pipe


def run(args: argparse.Namespace) -> int:
    """Draw samples from a saved pipeline into a PNG grid (--out) and/or an .npz (--npz).

    Class-conditional models get one grid row per class unless --class-label K picks one class.
    Under torchrun each rank draws its share of the samples and rank 0 gathers them and writes;
    sample i depends on the seed and i alone, not on the batch size or number of ranks.
    """
    import numpy as np
    import torch

    from ddkit.cli._checks import IMAGE_SUFFIXES, check_device, check_output_path, check_positive
    from ddkit.errors import ConfigError
    from ddkit.pipeline import Pipeline
    from ddkit.training import distributed

    # Everything the command line can get wrong, before loading, let alone sampling.
    if args.out is None and args.npz is None:
        raise ConfigError("nothing to write: give --out GRID.png and/or --npz OUT.npz")
    check_positive("--n", args.n)
    check_positive("--batch-size", args.batch_size)
    check_positive("--steps", args.steps)
    check_output_path("--out", args.out, IMAGE_SUFFIXES)
    check_output_path("--npz", args.npz, (".npz",))
    chosen_device = check_device(args.device)
    pipe = Pipeline.load(find_pipeline(args.pipeline))
    pipe = _apply_overrides(pipe, args)
    if args.no_ema:
        pipe.use_ema = False
    spec = pipe.spec
    labels = class_labels(args.n, spec.num_classes, args.class_label, args.classes == "all")
    shape = pipe.data_shape or ()
    is_image = len(shape) == 3 and shape[0] in (1, 3, 4)
    if args.out is not None and not is_image:
        raise ConfigError(
            f"samples of shape {list(shape)} are not images, so no PNG grid can be drawn; use --npz"
        )

    distributed.init_from_env()
    rank, world = distributed.rank(), distributed.world_size()
    device = chosen_device if chosen_device is not None else distributed.default_device()
    pipe.to(device)
    lo, hi = args.n * rank // world, args.n * (rank + 1) // world
    x = draw(
        pipe,
        range(lo, hi),
        labels=labels,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress and rank == 0,
    )
    arr = torch.from_numpy(to_uint8(x)).to(device) if is_image else x.float()
    arr = distributed.all_gather_tensor(arr)
    if rank == 0:
        data = arr.cpu().numpy()
        label_arr = labels.numpy() if labels is not None else None
        if args.npz is not None:
            arrays = {"arr_0": data} if label_arr is None else {"arr_0": data, "arr_1": label_arr}
            Path(args.npz).parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.npz, **arrays)  # type: ignore[arg-type]
            what = "uint8 images [N, H, W, C]" if is_image else "samples"
            extra = " and arr_1 (class labels)" if label_arr is not None else ""
            print(f"wrote {args.npz}: arr_0 ({what}, shape {list(data.shape)}){extra}")
        if args.out is not None:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            image = grid_image(data, label_arr if args.class_label is None else None)
            image.save(args.out)
            rows = "one row per class" if label_arr is not None and args.class_label is None else "a grid"
            print(f"wrote {args.out}: {args.n} samples, {rows} ({image.width}x{image.height} px)")
    distributed.barrier()
    return 0
