"""Condition dropout for training, and the plugin records."""

from __future__ import annotations

import importlib

import pytest
import torch

import ddkit
from ddkit import ConfigError
from ddkit_guidance import ClassifierFreeGuidance, ClassifierGuidance, drop_labels
from ddkit_guidance._plugin import ddkit_guidances


def test_drop_labels_replaces_a_fraction_with_the_null_class() -> None:
    y = torch.randint(0, 4, (20000,), generator=torch.Generator().manual_seed(0))
    before = y.clone()
    out = drop_labels(y, 0.25, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, before)
    dropped = out == 4
    assert abs(dropped.float().mean().item() - 0.25) < 0.015
    assert torch.equal(out[~dropped], y[~dropped])
    again = drop_labels(y, 0.25, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert torch.equal(drop_labels(y, 0.0, 4), y)
    assert bool((drop_labels(y, 1.0, 4) == 4).all())
    with pytest.raises(ConfigError, match=r"'p' must be a number in \[0, 1\] \(got 1.5\)"):
        drop_labels(y, 1.5, 4)


def test_records_point_at_the_guidances() -> None:
    records = {r.name: r for r in ddkit_guidances()}
    assert set(records) == {"classifier", "classifier-free"}
    for name, cls in (("classifier", ClassifierGuidance), ("classifier-free", ClassifierFreeGuidance)):
        factory = records[name].factory
        assert isinstance(factory, str)
        module, attr = factory.split(":")
        assert getattr(importlib.import_module(module), attr) is cls
        assert records[name].paper


def test_created_by_name_through_the_registry() -> None:
    g = ddkit.create("guidance", "classifier-free", scale=[3.0, 1.0], rescale=0.7, interval=(100, 800))
    assert isinstance(g, ClassifierFreeGuidance)
    assert (g.rescale, g.interval) == (0.7, (100.0, 800.0))
    c = ddkit.create("guidance", "classifier", classifier=lambda x, t: x, scale=2.0, form="score")
    assert isinstance(c, ClassifierGuidance)
    assert c.forms == ("score",)
