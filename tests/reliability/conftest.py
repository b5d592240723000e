"""Fixtures of the reliability tests (``nox -s reliability``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _faults import THREADS, torch_threads


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Every test trains at ``THREADS`` (module-scoped fixtures set up before this one pin it themselves)."""
    with torch_threads(THREADS):
        yield


@pytest.fixture(scope="session")
def spawn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the subprocess runner script and its bytecode cache, shared by every test."""
    return tmp_path_factory.mktemp("spawn")
