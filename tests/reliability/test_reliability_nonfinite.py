"""A NaN row in the data: ``on_nonfinite="stop"`` names the step and keeps the good checkpoints;
``"skip"`` drops that batch, counts it in the log, and trains on with finite weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from _faults import cli_args, tiny_pipeline, write_config
from torch.utils._python_dispatch import TorchDispatchMode

import ddkit
from ddkit.cli import main
from ddkit.cli.train import trainer_options
from ddkit.training import checkpoint as ckpt
from ddkit.training.guard import NonFiniteTrainingError

POISONED = 17


def data(poison: bool = True) -> torch.Tensor:
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    if poison:
        x[POISONED] = math.nan
    return x


def finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def test_stop_names_the_step_and_keeps_the_good_checkpoints(tmp_path: Path) -> None:
    trainer = ddkit.Trainer(
        tiny_pipeline(),
        data(),
        batch_size=16,
        out_dir=tmp_path,
        checkpoint_every=1,
        keep_checkpoints=2,
        seed=4,
    )
    with pytest.raises(NonFiniteTrainingError) as info:
        trainer.train(100)
    bad = info.value.step
    message = str(info.value)
    assert f"training stopped at step {bad}: the loss is nan" in message
    assert 'on_nonfinite="skip"' in message
    assert bad <= 4  # the poisoned row is in one of the first epoch's four batches
    assert trainer.step == bad - 1
    assert finite(trainer.model)
    assert all(finite(ema) for ema in trainer.ema.values())
    # Nothing non-finite was checkpointed and the last good checkpoints were not pruned.
    listed = ckpt.list_checkpoints(tmp_path)
    assert [s for s, _ in listed] == [s for s in (bad - 1, bad - 2) if s > 0]
    for _, path in listed:
        ckpt.verify_checkpoint(path)
        assert all(
            bool(torch.isfinite(t).all()) for t in ckpt.load_tensors(path / "model.safetensors").values()
        )
    if listed:
        assert f"the newest checkpoint, {listed[0][1].name}, is intact" in message


def test_skip_drops_the_batch_and_counts_it(tmp_path: Path) -> None:
    trainer = ddkit.Trainer(
        tiny_pipeline(), data(), batch_size=16, out_dir=tmp_path, on_nonfinite="skip", log_every=4, seed=4
    )
    trainer.train(12)  # three epochs of four batches: the poisoned row is in three of them
    assert trainer.nonfinite_skips == 3
    assert finite(trainer.model)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["nonfinite_skips"] == 3
    assert all(math.isfinite(r["loss"]) for r in log)
    # The count is part of the run's state: a resumed run carries it on.
    trainer.close()
    resumed = ddkit.Trainer(
        tiny_pipeline(), data(), batch_size=16, out_dir=tmp_path, resume=True, on_nonfinite="skip"
    )
    assert resumed.nonfinite_skips == 3


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path: Path) -> None:
    trainer = ddkit.Trainer(tiny_pipeline(), data(poison=False), batch_size=16, out_dir=tmp_path, seed=4)
    trainer.train(2)
    with torch.no_grad():
        next(trainer.model.parameters()).view(-1)[0] = math.inf
    with pytest.raises(NonFiniteTrainingError, match="the weights after step 2 are not finite"):
        trainer.save_checkpoint()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2]
    ckpt.verify_checkpoint(tmp_path / "ckpt-000002")


def test_on_nonfinite_in_the_config_and_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, steps=6, every=3)
    text = config.read_text().replace("[train]\n", '[train]\non_nonfinite = "skip"\n')
    config.write_text(text)
    options, _, _ = trainer_options(ddkit.pipeline.read_config(config), None)
    assert options["on_nonfinite"] == "skip"
    with pytest.raises(
        ddkit.ConfigError, match=r"'on_nonfinite' must be \"stop\" .* or \"skip\" .*\(got 'ignore'\)"
    ):
        ddkit.Trainer(tiny_pipeline(), data(), batch_size=16, on_nonfinite="ignore")
    assert main(cli_args(config, tmp_path / "run", "--on-nonfinite", "stop")) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(cli_args(config, tmp_path / "bad", "--on-nonfinite", "maybe"))
    assert info.value.code == 2
    assert "invalid choice: 'maybe'" in capsys.readouterr().err


# Two ranks (torchrun, gloo): the poisoned row is in one rank's half of a batch only.
TORCHRUN_SCRIPT = """
import json, math, os, sys
import torch

torch.set_num_threads(1)
import ddkit

torch.manual_seed(0)
model = {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1}
pipe = ddkit.Pipeline.from_config({"model": model, "schedule": {"name": "linear", "timesteps": 50}})
x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
x[17] = math.nan
trainer = ddkit.Trainer(pipe, x, batch_size=16, seed=4, device="cpu", on_nonfinite=sys.argv[1])
try:
    trainer.train(8)
    result = {"skips": trainer.nonfinite_skips, "step": trainer.step}
except ddkit.training.guard.NonFiniteTrainingError as exc:
    result = {"stopped_at": exc.step}
with open(os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(result, f)
# Tear the gloo group down before exit: left to the interpreter, a rank may abort at exit.
import torch.distributed as dist

if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
"""


@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_every_rank_takes_the_same_decision(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "nan_ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        mode,
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(command, env=env, capture_output=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    if mode == "skip":
        assert ranks[0] == {"skips": 2, "step": 8}
    else:
        assert 1 <= ranks[0]["stopped_at"] <= 4


class _BlockingOps(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Records the ops that would make the host wait for a GPU, with the ddkit functions issuing them."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.calls: list[list[str]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func._overloadpacket.__name__ in ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero"):
            self.calls.append([f.name for f in traceback.extract_stack()[:-1] if "ddkit" in f.filename])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("resampler", ["uniform", "loss-second-moment"])
def test_the_check_is_the_steps_only_host_read(resampler: str) -> None:
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config(
        {
            "model": {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1},
            "schedule": {"name": "linear", "timesteps": 50},
            "resampler": {"name": resampler},
        }
    )
    trainer = ddkit.Trainer(pipe, data(poison=False), batch_size=16, seed=0, grad_clip=1.0, log_every=1000)
    trainer.train(2)
    with _BlockingOps() as ops:
        trainer.train(5)  # three steps and the log line at the end
    # Pipeline.loss range-checks a CPU ``t`` (never one on an accelerator); the log line reads its
    # sums once per line. What is left is the trainer's per step: the one non-finite check.
    per_step = [f for f in ops.calls if "check_loss_inputs" not in f and "_flush_log" not in f]
    assert [f[-1] for f in per_step] == ["_step_is_finite"] * 3, per_step
