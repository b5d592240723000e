"""``ddkit train``: build the pipeline a TOML config describes, train it, and save it.

The config's ``[train]`` table holds the trainer's options (``steps``, ``batch_size``, ``lr``,
``ema_rates``, ``cond_dropout``, ``checkpoint_every``, ...) and ``[data]`` (or ``[train]``'s
``data``) the dataset. Checkpoints go to ``--out``; the trained pipeline to ``--out``/pipeline.
Under ``torchrun`` every rank trains and rank 0 alone writes.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
from pathlib import Path
from typing import Any

__all__ = ["PIPELINE_SUBDIR", "add_arguments", "run", "sample_command", "trainer_options"]

#: Where ``ddkit train`` saves the trained pipeline inside ``--out``.
PIPELINE_SUBDIR = "pipeline"
#: Names other trainers use for a [train] key, and ddkit's name for it (difflib alone would
#: suggest 'ema_rates' for 'learning_rate').
_ALIASES = {
    "learning_rate": "lr",
    "learning-rate": "lr",
    "lr_rate": "lr",
    "epochs": "steps",
    "max_steps": "steps",
    "num_steps": "steps",
    "train_steps": "steps",
    "iterations": "steps",
    "batch": "batch_size",
    "bs": "batch_size",
    "ema_rate": "ema_rates",
    "ema_decay": "ema_rates",
    "weight_decay_rate": "weight_decay",
}
#: Trainer keywords the command sets itself; a config may not.
_SET_BY_COMMAND = ("pipeline", "data", "out_dir", "resume", "device", "progress")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", metavar="CONFIG.toml", help="the pipeline config, with [train] and [data] tables"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="directory for checkpoints, logs and the pipeline"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument(
        "--steps", type=int, metavar="N", help="total training steps (overrides [train] steps)"
    )
    parser.add_argument(
        "--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda when available)"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    parser.add_argument(
        "--on-nonfinite",
        choices=("stop", "skip"),
        help="a NaN/inf loss or gradient: stop with an error naming the step (default), or skip the "
        "batch (overrides [train] on_nonfinite)",
    )


def trainer_options(cfg: dict[str, Any], steps: int | None) -> tuple[dict[str, Any], Any, int]:
    """Split a config's ``[train]`` and ``[data]`` into (Trainer keywords, data, steps), all checked.

    Raises :class:`~ddkit.ConfigError` for an unknown key (with the closest one), a missing
    ``steps`` or data, before any work starts.
    """
    from ddkit.errors import ConfigError
    from ddkit.training import Trainer

    train = dict(cfg.get("train") or {})
    data = cfg.get("data")
    if data is None:
        data = train.pop("data", None)
    else:
        train.pop("data", None)
    total = train.pop("steps", None)
    if steps is not None:
        total = steps
    accepted = [
        name
        for name, p in inspect.signature(Trainer.__init__).parameters.items()
        if name != "self" and name not in _SET_BY_COMMAND and p.kind is p.KEYWORD_ONLY
    ]
    problems = []
    for key in train:
        if key not in accepted:
            alias = _ALIASES.get(str(key).lower())
            close = (
                [alias] if alias in (*accepted, "steps") else difflib.get_close_matches(key, accepted, n=1)
            )
            hint = f"; did you mean {close[0]!r}?" if close else ""
            how = " (the command sets it)" if key in _SET_BY_COMMAND else ""
            problems.append(
                f"[train] has no key {key!r}{how}{hint} (keys: steps, data, {', '.join(accepted)})"
            )
    if total is None:
        problems.append("[train] has no 'steps': add steps = <total training steps> or pass --steps N")
    elif isinstance(total, bool) or not isinstance(total, int) or total < 0:
        problems.append(f"[train] 'steps' must be an int >= 0 (got {total!r})")
    if data is None:
        problems.append(
            'the config names no data: add a [data] table such as name = "shapes" (built-in datasets: '
            'see ddkit.data.names()) or name = "folder" with path = ...'
        )
    if "batch_size" not in train:
        problems.append("[train] has no 'batch_size': add batch_size = <global batch size>, e.g. 64")
    if problems:
        raise ConfigError(
            problems[0] if len(problems) == 1 else "\n".join(["the config has problems:", *problems])
        )
    assert isinstance(total, int)
    return train, data, total


def run(args: argparse.Namespace) -> int:
    """Train the pipeline a TOML config describes and save it to OUT/pipeline.

    The config's [train] table gives the trainer's options (steps, batch_size, lr, ema_rates,
    cond_dropout, checkpoint_every, ...), [data] the dataset. Checkpoints are written to OUT as
    training goes; --resume continues an interrupted run. Under torchrun (python -m torch.distributed.run
    --nproc_per_node=N -m ddkit train ...) each rank trains on its share and rank 0 writes.
    """
    from ddkit.cli._checks import check_device
    from ddkit.pipeline import Pipeline, read_config
    from ddkit.training import Trainer, distributed

    device = check_device(args.device)  # before reading data or building the model
    cfg = read_config(args.config)
    options, data, steps = trainer_options(cfg, args.steps)
    if getattr(args, "on_nonfinite", None) is not None:
        options["on_nonfinite"] = args.on_nonfinite
    import torch

    # Initial weights follow from the config: [train] seed (default 0) seeds torch before building.
    seed = options.get("seed")
    torch.manual_seed(0 if seed is None else int(seed))
    pipe = Pipeline.from_config(cfg)
    out = Path(args.out)
    trainer = Trainer(
        pipe,
        data,
        **options,
        out_dir=out,
        resume=args.resume,
        device=device,
        progress=not args.no_progress,
    )
    main = trainer.rank == 0
    try:
        trainer.train(steps)
        if main:  # still under the run directory's lock: no other trainer writes beside this save
            saved = pipe.save(out / PIPELINE_SUBDIR)
            print(f"trained {steps} steps; pipeline saved to {saved.parent}")
            print(f"sample from it with: {sample_command(saved.parent, pipe.data_shape)}")
    finally:
        trainer.close()
    distributed.barrier()
    return 0


def sample_command(saved: Path, sample_shape: tuple[int, ...] | None) -> str:
    """The ``ddkit sample`` line for a trained pipeline: a PNG grid for images, an .npz otherwise."""
    is_image = sample_shape is not None and len(sample_shape) == 3 and sample_shape[0] in (1, 3, 4)
    if is_image:
        return f"ddkit sample {saved} --n 64 --out grid.png"
    return f"ddkit sample {saved} --n 1000 --npz samples.npz"
