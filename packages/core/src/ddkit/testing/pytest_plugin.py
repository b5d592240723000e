"""pytest fixtures for plugin tests: ``ddkit_registry`` and ``ddkit_site``.

Enable with ``-p ddkit.testing.pytest_plugin`` (ddkit's own ``pyproject.toml`` does this in
``addopts``). ddkit is imported inside the fixtures, so loading this plugin stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ddkit.registry import Registry
    from ddkit.testing import FakeSite


@pytest.fixture
def ddkit_registry() -> Iterator[Registry]:
    """A fresh process-wide registry holding core's built-ins only; the old one comes back after."""
    from ddkit.testing import fresh_registry

    with fresh_registry() as registry:
        yield registry


@pytest.fixture
def ddkit_site(tmp_path: Path) -> Iterator[FakeSite]:
    """A :class:`~ddkit.testing.FakeSite` on ``sys.path`` for the test, removed afterwards."""
    from ddkit.testing import FakeSite

    with FakeSite(tmp_path / "site") as site:
        yield site
