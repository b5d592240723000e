"""Parameter errors from ddkit.create name the component, the parameter and what it accepts."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ddkit
from ddkit import ConfigError, Record, UnknownPluginError
from ddkit.registry import Registry
from ddkit.testing import fake_plugin, fresh_registry

if TYPE_CHECKING:
    from torch import Tensor


class Knobs:
    def __init__(
        self,
        steps: int = 10,
        eta: float = 0.0,
        *,
        schedule: Literal["linear", "cosine"] = "linear",
        clip: bool = True,
        sizes: tuple[int, ...] = (1,),
        pair: tuple[int, str] = (1, "a"),
        ratios: list[float] | None = None,
        limit: int | None = None,
        mask: Tensor | None = None,
        extra: Any = None,
    ) -> None:
        if steps <= 0:
            raise ValueError(f"'steps' must be a positive int (got {steps})")
        if eta == 0.5:
            raise ConfigError("'eta' of 0.5 is reserved (got 0.5)")
        self.steps = steps


def needs_model(model: object, *, scale: float = 1.0) -> dict[str, object]:
    return {"model": model, "scale": scale}


def open_ended(steps: int = 1, **options: object) -> dict[str, object]:
    return {"steps": steps, **options}


class StrangeError(ValueError):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code


def strange(level: int = 0) -> None:
    raise StrangeError(7, f"level {level} is strange")


@pytest.fixture
def registry(ddkit_registry: Registry) -> Registry:
    ddkit_registry.register(
        fake_plugin(
            sampler=[
                Record("knobs", Knobs, "Many knobs."),
                Record("needs-model", needs_model, "A required parameter."),
                Record("open-ended", open_ended, "Takes **options."),
                Record("partial", functools.partial(open_ended, steps=3), "A partial."),
                Record("strange", strange, "Raises an unusual ValueError."),
            ]
        ),
        distribution="knob-dist",
    )
    return ddkit_registry


def test_valid_parameters_pass(registry: Registry) -> None:
    made = ddkit.create(
        "sampler", "knobs", steps=np.int64(3), eta=1, schedule="cosine", sizes=(2, 3), ratios=None, limit=None
    )
    assert made.steps == 3
    ddkit.create("sampler", "knobs", ratios=[0.5, 1], mask=object(), extra="anything")


def test_unknown_keyword_lists_accepted_ones_and_the_closest(registry: Registry) -> None:
    with pytest.raises(TypeError) as info:
        ddkit.create("sampler", "knobs", stpes=5)
    message = str(info.value)
    assert message.startswith("sampler 'knobs': unknown parameter 'stpes'; did you mean 'steps'?")
    assert (
        "accepted: steps (int = 10), eta (float = 0.0), schedule (Literal['linear', 'cosine'] = 'linear')"
        in (message)
    )


def test_keywords_are_free_when_the_factory_takes_kwargs(registry: Registry) -> None:
    assert ddkit.create("sampler", "open-ended", anything=1) == {"steps": 1, "anything": 1}
    assert ddkit.create("sampler", "partial") == {"steps": 3}


def test_missing_required_parameter(registry: Registry) -> None:
    with pytest.raises(TypeError, match=r"sampler 'needs-model': missing required parameter 'model'"):
        ddkit.create("sampler", "needs-model", scale=2.0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": "ten"}, "parameter 'steps' must be int (got str 'ten')"),
        ({"steps": True}, "parameter 'steps' must be int (got bool True)"),
        ({"steps": 2.5}, "parameter 'steps' must be int (got float 2.5)"),
        ({"eta": "0.1"}, "parameter 'eta' must be float (got str '0.1')"),
        ({"clip": 1}, "parameter 'clip' must be bool (got int 1)"),
        ({"sizes": [1, 2]}, "parameter 'sizes' must be tuple[int, ...] (got list [1, 2])"),
        ({"sizes": (1, "2")}, "parameter 'sizes' must be tuple[int, ...] (got tuple (1, '2'))"),
        ({"pair": (1, 2)}, "parameter 'pair' must be tuple[int, str] (got tuple (1, 2))"),
        ({"ratios": ["a"]}, "parameter 'ratios' must be list[float] | None (got list ['a'])"),
        ({"limit": "none"}, "parameter 'limit' must be int | None (got str 'none')"),
    ],
)
def test_wrong_types_are_type_errors(registry: Registry, params: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError) as info:
        ddkit.create("sampler", "knobs", **params)
    assert str(info.value) == f"sampler 'knobs': {message}"


def test_a_value_outside_a_literal_is_a_value_error(registry: Registry) -> None:
    with pytest.raises(
        ValueError, match=r"^sampler 'knobs': parameter 'schedule' must be one of 'linear', 'cosine'"
    ) as info:
        ddkit.create("sampler", "knobs", schedule="cosin")
    assert "(got 'cosin'; did you mean 'cosine'?)" in str(info.value)


def test_errors_from_the_factory_are_prefixed_and_keep_their_type(registry: Registry) -> None:
    with pytest.raises(
        ValueError, match=r"^sampler 'knobs': 'steps' must be a positive int \(got 0\)$"
    ) as info:
        ddkit.create("sampler", "knobs", steps=0)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ConfigError, match=r"^sampler 'knobs': 'eta' of 0.5 is reserved"):
        ddkit.create("sampler", "knobs", eta=0.5)


def test_an_error_type_that_cannot_be_rebuilt_is_prefixed_in_place(registry: Registry) -> None:
    with pytest.raises(StrangeError) as info:
        ddkit.create("sampler", "strange", level=2)
    assert info.value.code == 7
    assert str(info.value).startswith("sampler 'strange': ")


def test_describe_reports_parameters_as_written(registry: Registry) -> None:
    parameters = ddkit.describe("sampler", "knobs").parameters
    assert parameters["steps"] == "int = 10"
    assert parameters["mask"] == "Tensor | None = None"
    assert ddkit.describe("sampler", "needs-model").parameters == {"model": "object", "scale": "float = 1.0"}
    assert ddkit.describe("sampler", "open-ended").parameters == {"steps": "int = 1", "**options": "object"}


@given(name=st.text(max_size=20))
def test_any_unknown_name_raises_a_lookup_error_with_a_message(name: str) -> None:
    with fresh_registry() as registry:
        registry.register(
            fake_plugin(sampler=[Record("knobs", Knobs, "Many knobs.")]), distribution="knob-dist"
        )
        if name.strip().lower() in ("knobs", "knob-dist:knobs"):
            return
        with pytest.raises(UnknownPluginError) as info:
            ddkit.create("sampler", name)
        assert str(info.value)
