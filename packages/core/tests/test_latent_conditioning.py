"""Condition dropout for any conditioning keyword: a given null value, or a learned null embedding.

Data items are ``(x, {"context": embedding})``; the Trainer drops ``context`` with probability
p (the same samples the label dropout would drop), replacing it by ``null_cond["context"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

import ddkit
from ddkit import ConfigError, ModelSpec, Record
from ddkit.conditioning import NULL_MODULE, attach_null_embeddings, null_embeddings
from ddkit.registry import Registry
from ddkit.testing import fake_plugin, fresh_registry

torch.set_num_threads(1)

D, E = 4, 3  # data features, embedding width


class ContextNet(nn.Module):
    """An eps MLP conditioned on a context embedding [B, E]; records every context it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(D + 1 + E, 32)
        self.out = nn.Linear(32, D)
        self.spec = ModelSpec(D, D, (D,))
        self.contexts: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        self.contexts.append(context.detach().clone())
        return self.out(torch.tanh(self.inp(torch.cat([x, t.float()[:, None] / 100, context], dim=1))))


class NoSampler:
    """Training needs no sampler; this one only satisfies the pipeline's composition check."""

    guidance_forms = ("model",)
    stochastic = False

    def check(self, denoiser: Any) -> None:
        pass


class ContextData(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """Points whose mean is set by a random context: items ``(x, {"context": c})``."""

    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.context = torch.randn(n, E, generator=g)
        self.x = self.context[:, :1].repeat(1, D) + 0.1 * torch.randn(n, D, generator=g)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.x[i], {"context": self.context[i]}


TOYS = fake_plugin(
    "context_toys",
    model=[Record("context-net", ContextNet, "An MLP on a context embedding.")],
    sampler=[Record("none", NoSampler, "No sampling.")],
)


@pytest.fixture
def registry() -> Iterator[Registry]:
    with fresh_registry() as reg:
        reg.register(TOYS, distribution="ddkit-context-toys", version="0.0.1")
        yield reg


def make_pipeline() -> Any:
    torch.manual_seed(0)
    return ddkit.Pipeline.from_config(
        {"schedule": {"name": "cosine", "timesteps": 100}, "model": "context-net", "sampler": "none"}
    )


def dropped_rows(contexts: list[Tensor], null: Tensor) -> tuple[int, int]:
    """How many rows of the recorded contexts equal ``null``, out of all rows."""
    rows = torch.cat(contexts)
    return int((rows == null).all(dim=1).sum()), rows.shape[0]


def test_a_given_null_value_replaces_dropped_conditioning(registry: Registry) -> None:
    pipe = make_pipeline()
    null = torch.full((E,), -5.0)
    trainer = ddkit.Trainer(
        pipe,
        ContextData(),
        batch_size=16,
        seed=0,
        ema_rates=[],
        cond_dropout=0.25,
        null_cond={"context": null},
    )
    trainer.train(20)
    dropped, total = dropped_rows(pipe.model.contexts, null)
    assert total == 20 * 16
    # Binomial(320, 0.25): mean 80, std 7.7; the draw is seeded, the bounds are 4 std wide.
    assert 50 < dropped < 110
    assert not hasattr(pipe.model, NULL_MODULE)  # nothing is learned for a given value
    # A number is a null value too: every element of the dropped rows.
    pipe2 = make_pipeline()
    ddkit.Trainer(
        pipe2,
        ContextData(),
        batch_size=16,
        seed=0,
        ema_rates=[],
        cond_dropout=0.25,
        null_cond={"context": 0.0},
    ).train(5)
    assert dropped_rows(pipe2.model.contexts, torch.zeros(E))[0] > 0


def test_a_learned_null_embedding_trains_is_averaged_and_is_saved(registry: Registry, tmp_path: Path) -> None:
    pipe = make_pipeline()
    trainer = ddkit.Trainer(
        pipe,
        ContextData(),
        batch_size=16,
        lr=1e-2,
        seed=0,
        ema_rates=[0.9],
        cond_dropout=0.3,
        null_cond={"context": "learned"},
    )
    learned = null_embeddings(pipe.model)
    assert set(learned) == {"context"}
    assert learned["context"].shape == (E,)
    assert torch.equal(learned["context"], torch.zeros(E))  # starts at zero
    trainer.train(30)
    value = null_embeddings(pipe.model)["context"].detach().clone()
    assert value.abs().sum() > 0  # it was trained by the optimizer
    # At the first step the model saw the learned value, still zero, in place of dropped contexts.
    first = pipe.model.contexts[0]
    assert 0 < int((first == 0).all(dim=1).sum()) < first.shape[0]
    ema = pipe.ema["0.9"]
    averaged = null_embeddings(ema)["context"]
    assert not torch.equal(averaged, torch.zeros(E))  # averaged too
    assert not torch.equal(averaged, value)

    pipe.save(tmp_path / "p")
    loaded = ddkit.Pipeline.load(tmp_path / "p")
    assert torch.equal(null_embeddings(loaded.model)["context"], value)
    assert torch.equal(null_embeddings(loaded.sampling_model)["context"], null_embeddings(ema)["context"])


def test_learned_null_embeddings_resume_from_checkpoints(registry: Registry, tmp_path: Path) -> None:
    def run(steps: int, resume: bool) -> Tensor:
        pipe = make_pipeline()
        trainer = ddkit.Trainer(
            pipe,
            ContextData(),
            batch_size=8,
            seed=1,
            ema_rates=[],
            cond_dropout=0.5,
            null_cond={"context": "learned"},
            out_dir=tmp_path / ("run" if resume or steps < 10 else "straight"),
            checkpoint_every=5,
            resume=resume,
        )
        trainer.train(steps)
        close = getattr(trainer, "close", None)
        if callable(close):
            close()
        return null_embeddings(pipe.model)["context"].detach().clone()

    run(5, resume=False)
    resumed = run(10, resume=True)
    straight = run(10, resume=False)
    torch.testing.assert_close(resumed, straight, rtol=0, atol=0)


def test_condition_dropout_options_are_checked(registry: Registry) -> None:
    pipe = make_pipeline()
    with pytest.raises(ConfigError, match="cond_dropout is 0, so nothing is ever dropped"):
        ddkit.Trainer(pipe, ContextData(), batch_size=8, null_cond={"context": "learned"})
    with pytest.raises(
        ConfigError, match=r"'null_cond'\['context'\] must be a tensor, a number or \"learned\""
    ):
        ddkit.Trainer(pipe, ContextData(), batch_size=8, cond_dropout=0.1, null_cond={"context": "learnt"})
    with pytest.raises(
        ConfigError, match=r"'null_cond' drops \['prompt'\], but the data items carry \['context'\]"
    ):
        ddkit.Trainer(pipe, ContextData(), batch_size=8, cond_dropout=0.1, null_cond={"prompt": 0.0})


def test_attach_keeps_values_and_refuses_another_shape() -> None:
    model = nn.Linear(2, 2)
    table = attach_null_embeddings(model, {"context": (3,)})
    with torch.no_grad():
        table["context"].fill_(2.0)
    attach_null_embeddings(model, {"context": (3,)})
    assert torch.equal(null_embeddings(model)["context"], torch.full((3,), 2.0))
    assert f"{NULL_MODULE}.context" in model.state_dict()
    with pytest.raises(ValueError, match=r"has shape \(3,\), but the data's 'context' has shape \(4,\)"):
        attach_null_embeddings(model, {"context": (4,)})
    assert null_embeddings(nn.Linear(1, 1)) == {}
