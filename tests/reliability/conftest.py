"""Fixtures of the reliability tests (``nox -s reliability``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def spawn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the subprocess runner script and its bytecode cache, shared by every test."""
    return tmp_path_factory.mktemp("spawn")
