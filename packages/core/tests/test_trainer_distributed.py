"""ddkit.training.distributed in one process: every helper is a no-op, and bad launches are explained."""

from __future__ import annotations

import pytest
import torch

from ddkit.errors import ConfigError
from ddkit.training import distributed


def test_helpers_work_without_a_process_group() -> None:
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.is_main_process()
    x = torch.arange(6).reshape(3, 2)
    assert distributed.all_gather_tensor(x) is x
    assert distributed.all_reduce_sum(x) is x
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.barrier()
    assert distributed.default_device() == (
        torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    )


def test_init_from_env_is_a_no_op_for_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() is False
    assert not distributed.is_distributed()


def test_a_launch_without_torchrun_variables_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 asks for a distributed run, but RANK, MASTER_ADDR"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE must be an integer \(got 'two'\)"):
        distributed.init_from_env()
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.local_rank() == 3


def test_leave_ends_only_the_group_ddkit_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", str(port))
    # A group the caller made is theirs: leave() keeps it.
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert distributed.init_from_env() is True  # reuses it
        distributed.leave()
        assert distributed.is_distributed()
    finally:
        dist.destroy_process_group()
    # One that init_from_env created is ended by leave() (as `ddkit train`/`sample` do at exit).
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(distributed, "env_world_size", lambda: 2)
    monkeypatch.setattr(
        dist,
        "init_process_group",
        lambda **kw: dist.distributed_c10d.init_process_group(
            "gloo", store=dist.HashStore(), rank=0, world_size=1
        ),
    )
    assert distributed.init_from_env() is True
    distributed.leave()
    assert not distributed.is_distributed()
