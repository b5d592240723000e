"""Training: the :class:`Trainer`, EMA, crash-safe checkpoints, RNG state, distributed helpers.

``ddkit.Trainer`` is this package's :class:`Trainer`; the submodules are usable alone
(``ddkit.training.distributed`` by the sampling CLI under ``torchrun``, for instance).
"""

from __future__ import annotations

from ddkit.training.guard import NonFiniteTrainingError
from ddkit.training.lock import RunLockedError
from ddkit.training.trainer import Trainer

__all__ = ["NonFiniteTrainingError", "RunLockedError", "Trainer"]
