"""Pipelines: parts composed from names or objects, checked together, saved and loaded without pickle."""

from __future__ import annotations

from ddkit.pipeline.config import DEFAULTS, SECTIONS
from ddkit.pipeline.pipeline import Pipeline, read_config

__all__ = ["DEFAULTS", "SECTIONS", "Pipeline", "read_config"]
