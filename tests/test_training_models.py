"""ddkit.Trainer on ddkit-models' networks: adm-unet on procedural shapes with condition dropout,
gradient checkpointing and channels-last passed through, bf16 autocast; the mlp on a named toy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

import ddkit

UNET = {
    "name": "adm-unet",
    "image_size": 8,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,1",
    "attention_resolutions": "4",
    "num_head_channels": 16,
    "num_classes": 3,
    "null_class": True,
    "learn_sigma": True,
}
DATA = {"name": "shapes", "image_size": 8, "n": 64, "num_classes": 3}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_unet(steps: int = 3, **options: Any) -> tuple[Any, ddkit.Trainer]:
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config(
        {
            "model": UNET,
            "parameterization": {"name": "epsilon", "variance": "learned-range"},
            "loss": "hybrid",
        }
    )
    trainer = ddkit.Trainer(pipe, DATA, batch_size=8, seed=0, cond_dropout=0.2, log_every=1, **options)
    trainer.train(steps)
    return pipe, trainer


def weights(pipe: Any) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in pipe.model.state_dict().items()}


@pytest.fixture(scope="module")
def plain() -> dict[str, Tensor]:
    pipe, trainer = train_unet()
    # The hybrid objective's terms are logged by timestep quartile, as guided-diffusion does.
    assert {"loss", "mse", "vb", "mse_q0", "vb_q3"} <= set().union(*trainer.history)
    return weights(pipe)


def test_gradient_checkpointing_reaches_the_unet_blocks(plain: dict[str, Tensor]) -> None:
    pipe, _ = train_unet(gradient_checkpointing=True)
    flags = [m.use_checkpoint for m in pipe.model.modules() if hasattr(m, "use_checkpoint")]
    assert len(flags) > 3
    assert all(flags)
    for key, value in weights(pipe).items():
        assert torch.allclose(value, plain[key], atol=1e-5), key  # recomputation changes no result


def test_channels_last_trains_the_same(plain: dict[str, Tensor]) -> None:
    pipe, _ = train_unet(channels_last=True)
    conv = next(m for m in pipe.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for key, value in weights(pipe).items():
        assert torch.allclose(value, plain[key], atol=1e-4), key


def test_bf16_autocast_trains_the_unet(plain: dict[str, Tensor]) -> None:
    pipe, trainer = train_unet(precision="bf16")
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.history)
    after = weights(pipe)
    assert all(v.dtype == plain[k].dtype for k, v in after.items())
    assert max((after[k] - plain[k]).abs().max().item() for k in after) < 0.05  # close to the fp32 run


def test_named_toy_with_the_mlp_and_class_labels() -> None:
    torch.manual_seed(0)
    pipe = ddkit.Pipeline.from_config({"model": {"name": "mlp", "dim": 2, "hidden": 32, "num_classes": 8}})
    trainer = ddkit.Trainer(
        pipe, {"name": "gaussians", "n": 256}, batch_size=32, lr=1e-3, seed=0, cond_dropout=0.1
    )
    trainer.train(20)
    assert pipe.use_ema
    assert list(pipe.ema) == ["0.9999"]
    samples = pipe.with_sampler("ddim", steps=5).sample(4, y=torch.tensor([0, 1, 2, 8]))
    assert samples.shape == (4, 2)
    assert torch.isfinite(samples).all()
