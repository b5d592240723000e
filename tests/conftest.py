"""Shared setup for the cross-package tests in tests/."""

from __future__ import annotations

import pytest

from ddkit.registry import ALLOW_ENV, DISABLE_AUTOLOAD_ENV


@pytest.fixture(autouse=True)
def _no_plugin_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's DDKIT_PLUGINS / DDKIT_DISABLE_PLUGIN_AUTOLOAD must not change what tests see."""
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
