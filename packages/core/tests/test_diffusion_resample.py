"""Timestep resamplers: reproducible draws, the loss-second-moment rule, state, and a 2-rank gloo gather."""

from __future__ import annotations

import io
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddkit.diffusion.resample import LossSecondMomentResampler, UniformResampler, gather_losses
from ddkit.errors import ConfigError
from ddkit.protocols import TimestepResampler

torch.set_num_threads(1)


def round_trip(state: dict[str, object]) -> dict[str, object]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, object] = torch.load(buffer, weights_only=True)
    return loaded


def warm(resampler: LossSecondMomentResampler, timesteps: int) -> None:
    # Step i's losses are (i + 1)·k for k = 1..10, so its RMS is (i + 1)·sqrt(38.5).
    for k in range(1, 11):
        t = torch.arange(timesteps)
        resampler.update(t, (t + 1).double() * k)


def test_protocol_and_reproducible_draws() -> None:
    for resampler in (UniformResampler(50), LossSecondMomentResampler(50)):
        assert isinstance(resampler, TimestepResampler)
        a = resampler.sample(16, generator=torch.Generator().manual_seed(3))
        b = resampler.sample(16, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a[0], b[0])
        assert torch.equal(a[1], b[1])
        assert a[0].dtype == torch.long
        assert a[1].dtype == torch.float32
        assert a[0].shape == (16,)
        assert int(a[0].min()) >= 0
        assert int(a[0].max()) < 50


def test_loss_second_moment_rule_by_hand() -> None:
    timesteps = 5
    resampler = LossSecondMomentResampler(timesteps)
    assert np.array_equal(resampler.weights(), np.ones(timesteps))
    for k in range(1, 10):
        resampler.update(torch.arange(timesteps), torch.arange(timesteps).double() + k)
    resampler.update(torch.arange(timesteps - 1), torch.ones(timesteps - 1))
    assert not resampler.warmed_up  # step 4 has 9 losses, not 10: still uniform
    assert np.array_equal(resampler.weights(), np.ones(timesteps))
    resampler = LossSecondMomentResampler(timesteps)
    warm(resampler, timesteps)
    assert resampler.warmed_up
    rms = np.array([(i + 1) * math.sqrt(38.5) for i in range(timesteps)])
    expected = rms / rms.sum() * 0.999 + 0.001 / timesteps
    np.testing.assert_allclose(resampler.weights(), expected, rtol=1e-12)
    t, w = resampler.sample(1000, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(w.numpy(), 1 / (timesteps * expected[t.numpy()]), rtol=1e-6)
    counts = np.bincount(t.numpy(), minlength=timesteps) / 1000
    assert np.all(np.abs(counts - expected) < 0.05)
    # An 11th loss pushes out the oldest.
    resampler.update(torch.tensor([0]), torch.tensor([100.0]))
    assert resampler.state_dict()["loss_history"][0].tolist() == [float(k) for k in range(2, 11)] + [100.0]


def test_state_dict_survives_weights_only_load() -> None:
    resampler = LossSecondMomentResampler(8, history_per_term=3, uniform_prob=0.01)
    warm(resampler, 8)
    restored = LossSecondMomentResampler(8, history_per_term=3)
    restored.load_state_dict(round_trip(resampler.state_dict()))
    np.testing.assert_array_equal(restored.weights(), resampler.weights())
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(3):
        assert torch.equal(resampler.sample(8, generator=gen_a)[0], restored.sample(8, generator=gen_b)[0])
    with pytest.raises(ValueError, match="same timesteps and history_per_term"):
        LossSecondMomentResampler(9, history_per_term=3).load_state_dict(resampler.state_dict())
    uniform = UniformResampler(8)
    uniform.load_state_dict(round_trip(uniform.state_dict()))
    with pytest.raises(ValueError, match="8 timesteps"):
        UniformResampler(9).load_state_dict(uniform.state_dict())


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="'timesteps' must be a positive int"):
        UniformResampler(0)
    with pytest.raises(ConfigError, match="'uniform_prob'"):
        LossSecondMomentResampler(10, uniform_prob=2.0)
    with pytest.raises(ConfigError, match="'history_per_term'"):
        LossSecondMomentResampler(10, history_per_term=0)
    with pytest.raises(ValueError, match="3 timesteps but 2 losses"):
        LossSecondMomentResampler(10).update(torch.tensor([1, 2, 3]), torch.ones(2))
    with pytest.raises(ValueError, match=r"timestep 10 is outside \[0, 9\]"):
        LossSecondMomentResampler(10).update(torch.tensor([10]), torch.ones(1))


def test_gather_is_local_without_a_process_group() -> None:
    ts, ls = gather_losses(torch.tensor([3, 1]), torch.tensor([0.5, 0.25]))
    assert ts == [3, 1]
    assert ls == [0.5, 0.25]


# -- a real 2-process gloo group ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        resampler = LossSecondMomentResampler(4, history_per_term=2)
        # Different batch sizes per rank: rank 0 reports 2 losses, rank 1 reports 3.
        n = 2 + rank
        t = torch.arange(n) % 4
        losses = torch.full((n,), float(rank + 1)) + torch.arange(n)
        resampler.update(t, losses)
        ts, ls = gather_losses(t, losses)
        torch.save({"state": resampler.state_dict(), "ts": ts, "ls": ls}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_update_gathers_every_rank(tmp_path: Path) -> None:
    # fork, not spawn: the children reuse this process's imported torch instead of importing it again.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method=method
    )
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for result in results:
        assert result["ts"] == [0, 1, 0, 1, 2]
        assert result["ls"] == [1.0, 2.0, 2.0, 3.0, 4.0]
    history = [r["state"]["loss_history"] for r in results]
    assert torch.equal(history[0], history[1])  # every rank learned the same history
    assert history[0].tolist() == [[1.0, 2.0], [2.0, 3.0], [4.0, 0.0], [0.0, 0.0]]
    assert results[0]["state"]["loss_counts"].tolist() == [2, 2, 1, 0]
