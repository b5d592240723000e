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
