"""``ddkit demo``: train a small class-conditional model on built-in shapes, then sample it.

Needs no download and no GPU: the data are ddkit's procedural ``shapes`` (a red circle, a
green square, a blue triangle, a yellow cross), the model a small ADM U-Net trained with
condition dropout, and the samples are drawn with DDIM and classifier-free guidance. The
full run takes about ten minutes on two CPU cores; ``--fast`` (or ``DDKIT_DEMO_FAST=1``)
about a minute, enough to check that everything works but not to learn the shapes.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["DEMO", "FAST", "add_arguments", "config", "run"]

FAST_ENV = "DDKIT_DEMO_FAST"
_CLASSES = 4
_SIZE = 16

#: The full demo: about ten minutes of training on two CPU cores.
DEMO: dict[str, Any] = {
    "schedule": {"name": "cosine", "timesteps": 1000},
    "parameterization": {"name": "v", "variance": "fixed-small"},
    "model": {
        "name": "adm-unet",
        "image_size": _SIZE,
        "num_channels": 32,
        "channel_mult": "1,2,2",
        "num_res_blocks": 1,
        "attention_resolutions": "8",
        "num_head_channels": 32,
        "class_cond": True,
        "num_classes": _CLASSES,
        "null_class": True,
    },
    "sampler": {"name": "ddim", "steps": 50, "eta": 0.0},
    "guidance": [{"name": "classifier-free", "scale": 2.0}],
    "train": {
        "steps": 1500,
        "batch_size": 64,
        "lr": 2e-3,
        "lr_warmup_steps": 100,
        "ema_rates": [0.995],
        "cond_dropout": 0.1,
        "checkpoint_every": 500,
        "log_every": 100,
        "seed": 0,
    },
    "data": {"name": "shapes", "image_size": _SIZE, "num_classes": _CLASSES, "n": 8192, "seed": 0},
}


def _fast() -> dict[str, Any]:
    cfg = copy.deepcopy(DEMO)
    cfg["model"].update(channel_mult="1,2", attention_resolutions="", num_head_channels=-1)
    cfg["sampler"]["steps"] = 10
    cfg["train"].update(steps=40, batch_size=16, lr_warmup_steps=0, checkpoint_every=40, log_every=20)
    cfg["data"]["n"] = 512
    return cfg


#: The fast demo (``--fast``): the same pipeline, much smaller, for CI; it does not learn the shapes.
FAST: dict[str, Any] = _fast()


def config(fast: bool) -> dict[str, Any]:
    """A copy of the demo's config (the fast one with ``fast=True``)."""
    return copy.deepcopy(FAST if fast else DEMO)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"a one-minute run that checks everything works (also {FAST_ENV}=1)",
    )
    parser.add_argument(
        "--out", default="ddkit-demo", metavar="DIR", help="output directory (default ./ddkit-demo)"
    )
    parser.add_argument("--per-class", type=int, default=8, metavar="N", help="samples per class (default 8)")
    parser.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cpu)")


def _env_fast() -> bool:
    return os.environ.get(FAST_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def run(args: argparse.Namespace) -> int:
    """Train a small class-conditional diffusion model on built-in shapes and draw a grid, a row per class.

    No download and no GPU needed: about ten minutes on two CPU cores (--fast: about one). Writes
    OUT/grid.png, the trained pipeline in OUT/pipeline (sample more with `ddkit sample OUT/pipeline`)
    and the training checkpoints and log in OUT/train; a second run in the same OUT reuses them.
    """
    import torch

    from ddkit.cli._checks import check_device, check_positive
    from ddkit.cli.sample import class_labels, draw, grid_image, to_uint8
    from ddkit.data import SHAPES
    from ddkit.pipeline import Pipeline
    from ddkit.training import Trainer

    check_positive("--per-class", args.per_class)
    device = check_device(args.device) or torch.device("cpu")
    fast = bool(args.fast) or _env_fast()
    cfg = config(fast)
    out = Path(args.out)
    train_dir = out / ("train-fast" if fast else "train")
    started = time.perf_counter()
    mode = "fast demo (checks that everything runs; too short to learn the shapes)" if fast else "demo"
    print(f"ddkit {mode}: {_CLASSES} classes of {_SIZE}x{_SIZE} shapes ({', '.join(SHAPES[:_CLASSES])})")
    options = dict(cfg["train"])
    steps = options.pop("steps")
    print(
        f"1/3 training a class-conditional ADM U-Net for {steps} steps on {device} "
        f"(checkpoints in {train_dir})"
    )
    pipe = Pipeline.from_config(cfg)
    trainer = Trainer(
        pipe, cfg["data"], **options, out_dir=train_dir, resume=True, device=device, progress=True
    )
    trainer.train(steps)
    saved = pipe.save(out / "pipeline").parent
    trained = time.perf_counter() - started

    per_class = int(args.per_class)
    n = per_class * _CLASSES
    scale = cfg["guidance"][0]["scale"]
    print(
        f"2/3 sampling {n} images ({per_class} per class) with DDIM and classifier-free guidance "
        f"(scale {scale})"
    )
    labels = class_labels(n, _CLASSES, None, True)
    x = draw(pipe, range(n), labels=labels, seed=0, batch_size=n, progress=True)
    assert labels is not None
    grid = grid_image(to_uint8(x), labels.numpy())
    grid_path = out / "grid.png"
    grid.save(grid_path)
    total = time.perf_counter() - started

    print(f"3/3 done in {total:.0f} s (training {trained:.0f} s)")
    print(f"  {grid_path}: {n} generated images, one row per class, top to bottom:")
    for k in range(_CLASSES):
        print(f"    row {k + 1}: class {k}, {SHAPES[k]}")
    print(f"  {saved}: the trained pipeline; draw more with `ddkit sample {saved} --n 64 --out more.png`")
    print(f"  {train_dir}: checkpoints and log.jsonl (loss by timestep quartile)")
    if fast:
        print(
            "  (fast mode trains only a few steps: expect blobs of the right colours, not shapes; "
            "run `ddkit demo` for the real thing)"
        )
    return 0
