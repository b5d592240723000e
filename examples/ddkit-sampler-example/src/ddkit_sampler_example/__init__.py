"""ddkit-sampler-example: a third-party ddkit plugin providing the ``unipc`` sampler and ``laplace`` schedule.

ddkit finds it through the ``ddkit`` entry point in ``pyproject.toml``, which names
:mod:`ddkit_sampler_example._plugin`. Importing that module must stay cheap (``ddkit plugins``
imports it to list names), so this package imports its components only on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddkit_sampler_example.laplace import LaplaceSchedule, laplace_log_snr
    from ddkit_sampler_example.unipc import UniPC

__all__ = ["LaplaceSchedule", "UniPC", "laplace_log_snr"]
__version__ = "0.1.0"

_LAZY = {
    "LaplaceSchedule": "ddkit_sampler_example.laplace",
    "laplace_log_snr": "ddkit_sampler_example.laplace",
    "UniPC": "ddkit_sampler_example.unipc",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ddkit_sampler_example' has no attribute {name!r}")
