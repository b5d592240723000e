"""ddkit-models' tests: fixed seeds, one thread (small shared CI machines; threads only add contention)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
