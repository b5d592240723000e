"""ddkit.Trainer with core alone: validation, EMA, RNG, data order, logging, precision, resume."""

from __future__ import annotations

import copy
import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import ddkit
from ddkit.errors import ConfigError, IntegrityError
from ddkit.training import checkpoint as ckpt
from ddkit.training.ema import ema_decay, update_ema
from ddkit.training.logging import QuartileLog
from ddkit.training.optim import make_adamw, set_implementation
from ddkit.training.rng import capture_rng_state, restore_rng_state
from ddkit.training.stream import BatchStream


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Block(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, hidden)
        self.dropout = dropout
        self.use_checkpoint = False

    def forward(self, h: Tensor) -> Tensor:
        return h + F.dropout(F.silu(self.fc(h)), self.dropout, self.training)


class TinyNet(nn.Module):
    """A small time- (and optionally class-) conditioned MLP; null class = num_classes."""

    def __init__(
        self, dim: int = 2, hidden: int = 16, num_classes: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.inp = nn.Linear(dim + 1, hidden)
        self.block = _Block(hidden, dropout)
        self.out = nn.Linear(hidden, dim)
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.seen_y: list[Tensor] = []

    @property
    def spec(self) -> ddkit.ModelSpec:
        return ddkit.ModelSpec(
            in_channels=self.dim,
            out_channels=self.dim,
            sample_shape=(self.dim,),
            num_classes=self.num_classes,
            null_class=self.num_classes,
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.inp(torch.cat([x, t[:, None].float() / 100.0], dim=1))
        if self.label is not None:
            assert y is not None
            self.seen_y.append(y.detach().clone())
            h = h + self.label(y)
        return self.out(self.block(h))  # type: ignore[no-any-return]


def net(seed: int = 0, **kwargs: Any) -> TinyNet:
    """A TinyNet with initial weights fixed by ``seed``."""
    torch.manual_seed(seed)
    return TinyNet(**kwargs)


class TinyConv(nn.Module):
    spec = ddkit.ModelSpec(in_channels=3, out_channels=3, sample_shape=(3, 8, 8))

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.conv(x) + t[:, None, None, None].float() / 100.0  # type: ignore[no-any-return]


class StubSampler:
    """Training never samples; the pipeline only needs a sampler to compose."""

    guidance_forms = ("model", "score", "mean")
    stochastic = False

    def check(self, denoiser: object) -> None:
        pass


def make_pipeline(model: nn.Module | None = None, *, resampler: str = "uniform", seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return ddkit.Pipeline.from_config(
        {
            "schedule": {"name": "linear", "timesteps": 100},
            "parameterization": {"name": "epsilon", "clip_denoised": False},
            "resampler": resampler,
        },
        model=model if model is not None else TinyNet(),
        sampler=StubSampler(),
    )


def points(n: int = 96, seed: int = 0) -> Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 0.5


def labelled(n: int = 96, classes: int = 4) -> TensorDataset:
    return TensorDataset(points(n), torch.arange(n) % classes)


def weights(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "'batch_size' must be a positive int"),
        ({"batch_size": 8.0}, "'batch_size' must be a positive int"),
        ({"lr": -1.0}, "'lr' must be a positive number"),
        ({"lr": float("nan")}, "'lr' must be a positive number"),
        ({"weight_decay": -0.1}, "'weight_decay' must be a number >= 0"),
        ({"grad_clip": 0}, "'grad_clip' must be a positive number"),
        ({"grad_accum": 3}, "batch_size 8 must be divisible by grad_accum 3"),
        ({"ema_rates": (1.0,)}, "each EMA rate must be a number in \\[0, 1\\)"),
        ({"ema_rates": "0.999"}, "'ema_rates' must be a list of rates"),
        ({"ema_rates": (0.9, 0.9)}, "'ema_rates' lists 0.9 twice"),
        (
            {"ema_warmup": "cosine"},
            "'ema_warmup' must be true, false or one of fraction, inverse-gamma, none",
        ),
        ({"cond_dropout": 1.0}, "'cond_dropout' must be a probability in \\[0, 1\\)"),
        ({"precision": "fp8"}, "'precision' must be one of fp32, bf16, fp16"),
        ({"seed": -3}, "'seed' must be an int >= 0"),
        ({"checkpoint_every": 10}, "'checkpoint_every' needs 'out_dir'"),
        ({"resume": True}, "'resume' needs 'out_dir'"),
        ({"keep_checkpoints": 0}, "'keep_checkpoints' must be a positive int"),
        ({"log_every": 0}, "'log_every' must be a positive int"),
        ({"progress": "yes"}, "'progress' must be true or false"),
    ],
)
def test_arguments_are_checked_before_any_work(kwargs: dict[str, Any], message: str, tmp_path: Path) -> None:
    pipe = make_pipeline()
    before = weights(pipe.model)
    options = {"batch_size": 8, **kwargs}
    with pytest.raises(ConfigError, match=message):
        ddkit.Trainer(pipe, points(), **options)
    assert_same(before, weights(pipe.model))
    assert list(tmp_path.iterdir()) == []


def test_bad_data_and_steps_are_refused() -> None:
    pipe = make_pipeline()
    with pytest.raises(ConfigError, match="'data' must be a tensor of samples, a torch Dataset"):
        ddkit.Trainer(pipe, [1, 2, 3], batch_size=8)
    with pytest.raises(ConfigError, match=r"no built-in dataset named 'gausians'.*did you mean 'gaussians'"):
        ddkit.Trainer(pipe, "gausians", batch_size=8)
    with pytest.raises(ConfigError, match="a data table must name a built-in dataset"):
        ddkit.Trainer(pipe, {"n": 10}, batch_size=8)
    trainer = ddkit.Trainer(pipe, points(), batch_size=8)
    with pytest.raises(ConfigError, match="'steps' must be an int >= 0"):
        trainer.train(-1)


def test_bad_devices_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"'device' must name a torch device .* \(got 'gpu0'\)"):
        ddkit.Trainer(make_pipeline(), points(), batch_size=8, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"CUDA is not available here; use device 'cpu'"):
            ddkit.Trainer(make_pipeline(), points(), batch_size=8, device="cuda")


def test_fp16_on_cpu_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"'fp16' needs a CUDA GPU.*use precision 'bf16' on the CPU"):
        ddkit.Trainer(make_pipeline(), points(), batch_size=8, precision="fp16", device="cpu")


def test_cond_dropout_needs_a_null_class() -> None:
    class NoNull(TinyNet):
        @property
        def spec(self) -> ddkit.ModelSpec:
            return ddkit.ModelSpec(in_channels=2, out_channels=2, sample_shape=(2,), num_classes=4)

    pipe = make_pipeline(NoNull(num_classes=4))
    with pytest.raises(
        ConfigError, match=r"cond_dropout=0\.1 replaces labels with the model's null class, but"
    ):
        ddkit.Trainer(pipe, labelled(), batch_size=8, cond_dropout=0.1)


def test_labels_and_models_must_agree() -> None:
    with pytest.raises(
        ConfigError, match="the model is class-conditional \\(num_classes=4\\) but the data has no"
    ):
        ddkit.Trainer(make_pipeline(TinyNet(num_classes=4)), points(), batch_size=8)
    with pytest.raises(ConfigError, match="the data has class label 5 but the model takes num_classes=4"):
        ddkit.Trainer(make_pipeline(TinyNet(num_classes=4)), labelled(classes=6), batch_size=8)


# -- EMA ------------------------------------------------------------------------------


def test_ema_decay_warmup_math() -> None:
    assert ema_decay(0.9999, 0) == pytest.approx(0.1)
    assert ema_decay(0.9999, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.9, 10_000) == 0.9  # capped at the rate
    assert ema_decay(0.9999, 5, "none") == 0.9999
    assert ema_decay(0.9999, 0, "inverse-gamma") == 0.0
    assert ema_decay(0.9999, 7, "inverse-gamma", power=2 / 3) == pytest.approx(1 - 8 ** (-2 / 3))
    assert ema_decay(0.9999, 10**9, "inverse-gamma") == 0.9999
    with pytest.raises(ConfigError, match="'ema_warmup' must be one of"):
        ema_decay(0.9, 1, "linear")


def test_update_ema_averages_parameters_and_copies_buffers() -> None:
    src, dst = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        src.weight.fill_(2.0)
        dst.weight.fill_(1.0)
        src.running_mean.fill_(5.0)
    update_ema(dst, src, decay=0.75)
    assert torch.allclose(dst.weight, torch.full((3,), 0.75 * 1.0 + 0.25 * 2.0))
    assert torch.equal(dst.running_mean, src.running_mean)


def test_ema_warmup_lets_a_short_run_move() -> None:
    moved = {}
    for warmup in (True, False):
        pipe = make_pipeline()
        start = weights(pipe.model)
        ddkit.Trainer(pipe, points(), batch_size=16, lr=1e-2, seed=0, ema_warmup=warmup).train(40)
        ema = weights(pipe.ema["0.9999"])
        raw = weights(pipe.model)
        moved[warmup] = sum((ema[k] - start[k]).norm() for k in ema) / sum(
            (raw[k] - start[k]).norm() for k in raw
        )
    assert moved[True] > 0.5  # the warmed-up average follows the training
    assert moved[False] < 0.01  # guided-diffusion's fixed 0.9999 has barely left the initial weights


def test_ema_copies_and_the_sampling_switch() -> None:
    pipe = make_pipeline()
    pipe.use_ema = False
    ddkit.Trainer(pipe, points(), batch_size=8, ema_rates=(0.999, 0.9), seed=0).train(3)
    assert list(pipe.ema) == ["0.999", "0.9"]
    assert pipe.use_ema is True
    assert pipe.sampling_model is pipe.ema["0.999"]
    assert all(not p.requires_grad for p in pipe.ema["0.9"].parameters())
    pipe2 = make_pipeline()
    ddkit.Trainer(pipe2, points(), batch_size=8, use_ema=False, seed=0).train(2)
    assert pipe2.use_ema is False
    assert pipe2.sampling_model is pipe2.model


# -- randomness and data order ----------------------------------------------------------


def test_rng_capture_restore_round_trips_through_a_data_only_file(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(5)

    def draw() -> tuple[Any, ...]:
        return (
            torch.rand(3),
            np.random.rand(3).tolist(),
            random.random(),
            random.gauss(0, 1),
            torch.rand(2, generator=gen),
        )

    np.random.randn()  # leave a cached gaussian in numpy's state
    state = capture_rng_state({"mine": gen})
    (tmp_path / "rng.pt").write_bytes(ckpt.state_bytes(state))
    first = draw()
    restore_rng_state(ckpt.load_state(tmp_path / "rng.pt"), {"mine": gen})
    second = draw()
    assert torch.equal(first[0], second[0])
    assert first[1:4] == second[1:4]
    assert torch.equal(first[4], second[4])


def test_stream_order_is_seeded_sharded_and_resumable() -> None:
    data = TensorDataset(torch.arange(10).float()[:, None].repeat(1, 2))
    single = BatchStream(data, batch_size=4, seed=3)
    batches = [single.next()[0][:, 0].long() for _ in range(5)]
    flat = torch.cat(batches)
    # Every epoch visits each item once; batches straddle epochs without dropping any.
    assert sorted(flat[:10].tolist()) == list(range(10))
    assert sorted(flat[10:20].tolist()) == list(range(10))
    assert not torch.equal(flat[:10], flat[10:20])
    assert single.state_dict()["epoch"] == 2
    assert single.state_dict()["position"] == 0
    # Two ranks see halves of the same global batches.
    ranks = [BatchStream(data, batch_size=4, seed=3, rank=r, world_size=2) for r in range(2)]
    for batch in batches:
        assert torch.equal(torch.cat([s.next()[0][:, 0].long() for s in ranks]), batch)
    # A new stream from a saved state continues the same order; another seed changes it.
    resumed = BatchStream(data, batch_size=4, seed=3)
    again = BatchStream(data, batch_size=4, seed=3)
    for _ in range(2):
        again.next()
    resumed.load_state_dict(again.state_dict())
    assert torch.equal(resumed.next()[0][:, 0].long(), batches[2])
    other = BatchStream(data, batch_size=4, seed=4)
    assert not torch.equal(torch.cat([other.next()[0][:, 0].long() for _ in range(3)]), flat[:12])


def test_a_dataset_trains_like_the_same_tensor() -> None:
    class Items(Dataset[tuple[Tensor, int]]):
        def __init__(self, ds: TensorDataset) -> None:
            self.ds = ds

        def __len__(self) -> int:
            return len(self.ds)

        def __getitem__(self, i: int) -> tuple[Tensor, int]:
            x, y = self.ds[i]
            return x, int(y)

    results = []
    for data in (labelled(), Items(labelled()), DataLoader(Items(labelled()), batch_size=3, shuffle=True)):
        pipe = make_pipeline(net(num_classes=4))
        ddkit.Trainer(pipe, data, batch_size=8, seed=1).train(4)
        results.append(weights(pipe.model))
    assert_same(results[0], results[1])
    assert_same(results[0], results[2])


# -- the step -------------------------------------------------------------------------


def test_labels_reach_the_model_and_cond_dropout_uses_the_null_class() -> None:
    model = TinyNet(num_classes=4)
    ddkit.Trainer(make_pipeline(model), labelled(256), batch_size=64, seed=0, cond_dropout=0.5).train(4)
    seen = torch.cat(model.seen_y)
    share = (seen == 4).float().mean().item()
    assert 0.35 < share < 0.65
    assert set(seen.tolist()) == {0, 1, 2, 3, 4}


def test_grad_accum_matches_one_big_batch() -> None:
    results = []
    for accum in (1, 4):
        pipe = make_pipeline()
        ddkit.Trainer(pipe, points(), batch_size=16, grad_accum=accum, seed=2).train(5)
        results.append(weights(pipe.model))
    for key in results[0]:
        assert torch.allclose(results[0][key], results[1][key], atol=1e-6), key


def test_lr_warmup_and_grad_clip_are_logged() -> None:
    trainer = ddkit.Trainer(
        make_pipeline(),
        points(),
        batch_size=8,
        lr=1e-3,
        lr_warmup_steps=4,
        grad_clip=1e-3,
        log_every=1,
        seed=0,
    )
    trainer.train(6)
    assert [round(h["lr"], 8) for h in trainer.history] == [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    assert all(h["grad_norm"] > 1e-3 for h in trainer.history)  # the norm before clipping


def test_bf16_autocast_step_runs_on_cpu() -> None:
    pipe = make_pipeline()
    before = weights(pipe.model)
    trainer = ddkit.Trainer(pipe, points(), batch_size=8, precision="bf16", seed=0, log_every=1)
    trainer.train(3)
    assert all(np.isfinite(h["loss"]) for h in trainer.history)
    assert all(p.dtype == torch.float32 for p in pipe.model.parameters())  # fp32 master weights
    assert any(not torch.equal(before[k], v) for k, v in weights(pipe.model).items())


def test_gradient_checkpointing_and_channels_last() -> None:
    model = TinyNet()
    ddkit.Trainer(make_pipeline(model), points(), batch_size=8, gradient_checkpointing=True).train(1)
    assert model.block.use_checkpoint is True
    with pytest.raises(
        ConfigError, match="gradient_checkpointing=True, but the model \\(TinyConv\\) does not"
    ):
        ddkit.Trainer(
            make_pipeline(TinyConv()), torch.randn(16, 3, 8, 8), batch_size=8, gradient_checkpointing=True
        )
    conv = TinyConv()
    ddkit.Trainer(make_pipeline(conv), torch.randn(16, 3, 8, 8), batch_size=8, channels_last=True).train(2)
    assert conv.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_quartile_logging_matches_guided_diffusion() -> None:
    qlog = QuartileLog(100)
    t = torch.tensor([0, 10, 30, 49, 50, 99])  # quartiles int(4 t / T): 0, 0, 1, 1, 2, 3
    qlog.add(
        t, {"loss": torch.tensor([1.0, 3.0, 2.0, 4.0, 6.0, 8.0]), "bad": torch.ones(2)}, torch.full((6,), 0.5)
    )
    qlog.add(torch.tensor([99]), {"loss": torch.tensor([2.0])})
    qlog.add_scalar("grad_norm", 1.0)
    qlog.add_scalar("grad_norm", 3.0)
    out = qlog.flush()
    # Values are weighted by the importance weights, as guided-diffusion's log_loss_dict does.
    assert out == pytest.approx(
        {"loss": 14.0 / 7, "loss_q0": 1.0, "loss_q1": 1.5, "loss_q2": 3.0, "loss_q3": 3.0, "grad_norm": 2.0}
    )
    assert qlog.flush() == {}
    qlog.add(torch.tensor([80, 90]), {"mse": torch.tensor([1.0, 2.0])})
    assert qlog.flush() == {"mse": 1.5, "mse_q3": 1.5}  # quartiles without samples are left out


def test_quartile_sums_reduced_across_ranks_equal_one_log_of_all_samples() -> None:
    t_a, loss_a = torch.tensor([0, 30, 99]), torch.tensor([1.0, 2.0, 3.0])
    t_b, loss_b = torch.tensor([10, 60, 70]), torch.tensor([4.0, 5.0, 6.0])
    both = QuartileLog(100)
    both.add(torch.cat([t_a, t_b]), {"loss": torch.cat([loss_a, loss_b])})
    rank_a, rank_b = QuartileLog(100), QuartileLog(100)
    rank_a.add(t_a, {"loss": loss_a})
    rank_b.add(t_b, {"loss": loss_b})
    rank_a.add_scalar("lr", 0.5)
    sent: list[Tensor] = []
    rank_b.flush(reduce=lambda packed: sent.append(packed) or packed)  # what rank b contributes
    # rank a's flush sums its sums with rank b's, as dist.all_reduce does on two ranks
    assert rank_a.flush(reduce=lambda packed: packed + sent[0]) == pytest.approx({**both.flush(), "lr": 0.5})


def test_adamw_is_fused_on_the_cpu_and_takes_either_implementations_state() -> None:
    trainer = ddkit.Trainer(make_pipeline(), points(), batch_size=8, seed=0)
    assert all(group["fused"] for group in trainer.optimizer.param_groups)

    def loss(model: nn.Module) -> Tensor:
        return model(points(8), torch.arange(8)).square().mean()  # type: ignore[no-any-return]

    for fused_before in (False, True):
        model = net()
        before = make_adamw(model.parameters(), lr=1e-2, weight_decay=0.1)
        set_implementation(before, fused_before)
        for _ in range(3):
            before.zero_grad()
            loss(model).backward()
            before.step()
        state = before.state_dict()
        continued, switched = net(), net()
        continued.load_state_dict(model.state_dict())
        switched.load_state_dict(model.state_dict())
        opt_same = make_adamw(continued.parameters(), lr=1e-2, weight_decay=0.1)
        opt_other = make_adamw(switched.parameters(), lr=1e-2, weight_decay=0.1)
        opt_same.load_state_dict(copy.deepcopy(state))  # as read from a checkpoint: nothing shared
        set_implementation(opt_same, fused_before)
        opt_other.load_state_dict(copy.deepcopy(state))
        set_implementation(opt_other, not fused_before)
        assert opt_other.param_groups[0]["fused"] == (True if not fused_before else None)
        for model_k, opt in ((continued, opt_same), (switched, opt_other)):
            for _ in range(2):
                opt.zero_grad()
                loss(model_k).backward()
                opt.step()
        assert all(float(s["step"]) == 5.0 for s in opt_other.state.values())
        for a, b in zip(continued.parameters(), switched.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_history_and_jsonl_log(tmp_path: Path) -> None:
    trainer = ddkit.Trainer(make_pipeline(), points(), batch_size=8, out_dir=tmp_path, log_every=2, seed=0)
    trainer.train(5)
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == trainer.history
    assert [h["step"] for h in lines] == [2, 4, 5]
    assert {"loss", "mse", "loss_q0", "mse_q3", "grad_norm", "lr", "samples"} <= set(lines[0])
    assert lines[-1]["samples"] == 40


def test_progress_bar_is_off_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    ddkit.Trainer(make_pipeline(), points(), batch_size=8).train(2)
    assert "train" not in capsys.readouterr().err
    ddkit.Trainer(make_pipeline(), points(), batch_size=8, progress=True).train(2)
    assert "2/2" in capsys.readouterr().err


# -- runs, checkpoints, resume ----------------------------------------------------------

RUN = {"batch_size": 16, "seed": 7, "grad_accum": 2, "cond_dropout": 0.2, "grad_clip": 1.0, "log_every": 3}


def _run(out_dir: Path | None, steps: int, **extra: Any) -> Any:
    pipe = make_pipeline(net(num_classes=4, dropout=0.1), resampler="loss-second-moment")
    trainer = ddkit.Trainer(pipe, labelled(), out_dir=out_dir, **{**RUN, **extra})
    trainer.train(steps)
    return trainer


def test_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    straight = _run(None, 25)
    _run(tmp_path, 13, checkpoint_every=5)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [13, 10, 5]
    resumed = _run(tmp_path, 25, checkpoint_every=5, resume=True)
    assert_same(weights(straight.model), weights(resumed.model))
    assert_same(weights(straight.ema["0.9999"]), weights(resumed.ema["0.9999"]))
    assert (
        straight.resampler.state_dict()["loss_counts"].tolist()
        == resumed.resampler.state_dict()["loss_counts"].tolist()
    )
    # The log holds the interrupted call's last step too; the regular lines are the same steps.
    assert [h["step"] for h in resumed.history if h["step"] % 3 == 0] == [
        h["step"] for h in straight.history
    ][:-1]
    # The run's total is what train() counts to: calling it again does nothing more.
    resumed.train(25)
    assert resumed.step == 25


def test_train_continues_to_the_total(tmp_path: Path) -> None:
    once = _run(None, 9)
    twice = _run(None, 4)
    twice.train(9)
    assert_same(weights(once.model), weights(twice.model))


def test_refuses_to_overwrite_a_run(tmp_path: Path) -> None:
    _run(tmp_path, 4)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(
        ConfigError, match=r"already holds checkpoints.*pass --resume \(resume=True\).*another"
    ):
        _run(tmp_path, 8)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_resume_in_an_empty_directory_starts_afresh(tmp_path: Path) -> None:
    trainer = _run(tmp_path / "new", 3, resume=True)
    assert trainer.step == 3
    assert (tmp_path / "new" / "ckpt-000003").is_dir()


def test_damaged_checkpoints_are_skipped_by_name(tmp_path: Path) -> None:
    _run(tmp_path, 15, checkpoint_every=5)
    newest = tmp_path / "ckpt-000015" / "optimizer.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    middle = tmp_path / "ckpt-000010" / "model.safetensors"
    data = bytearray(middle.read_bytes())
    data[-3] ^= 1
    middle.write_bytes(bytes(data))  # tampered
    with pytest.warns(RuntimeWarning) as caught:
        trainer = _run(tmp_path, 15, checkpoint_every=5, resume=True)
    text = "\n".join(str(w.message) for w in caught)
    assert "ckpt-000015" in text
    assert "optimizer.pt" in text
    assert "ckpt-000010" in text
    assert "SHA-256" in text
    assert [name for name, _ in trainer.skipped_checkpoints] == ["ckpt-000015", "ckpt-000010"]
    assert trainer.history[-1]["step"] == 15  # resumed from step 5, trained on to 15
    reference = _run(None, 15)
    assert_same(weights(reference.model), weights(trainer.model))


def test_incompatible_checkpoints_are_reported_and_refused(tmp_path: Path) -> None:
    _run(tmp_path, 4, checkpoint_every=2)
    pipe = make_pipeline(TinyNet(hidden=8, num_classes=4), resampler="loss-second-moment")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(IntegrityError) as info:
            ddkit.Trainer(pipe, labelled(), out_dir=tmp_path, resume=True, **RUN)
    message = str(info.value)
    assert "ckpt-000004 is from an incompatible configuration" in message
    assert "ckpt-000002" in message
    assert "has shape [16, 3] there, [8, 3] in this model" in message
    assert len(caught) == 2
