"""Section strings: guided-diffusion's space_timesteps semantics worked by hand, and clear errors."""

from __future__ import annotations

import pytest

from ddkit.diffusion.respace import parse_sections, space_timesteps


@pytest.mark.parametrize(
    ("timesteps", "sections", "expected"),
    [
        (10, "3", [0, 4, 9]),  # stride 4.5: 0, round(4.5) = 4 (half to even), 9
        (10, "2,3", [0, 4, 5, 7, 9]),  # two sections of 5: strides 4 and 2
        (11, "2,3", [0, 5, 6, 8, 10]),  # the first section takes the extra step (6 and 5 steps)
        (10, "ddim5", [0, 2, 4, 6, 8]),
        (10, "ddim10", list(range(10))),
        (10, "1", [0]),
        (10, [3, 0], [0, 2, 4]),
        (10, " 2 , 3 ", [0, 4, 5, 7, 9]),
        (1000, "ddim50", list(range(0, 1000, 20))),
    ],
)
def test_space_timesteps_by_hand(timesteps: int, sections: str | list[int], expected: list[int]) -> None:
    assert space_timesteps(timesteps, sections) == expected


@pytest.mark.parametrize(
    ("timesteps", "sections", "match"),
    [
        (10, "ddim7", "no integer stride takes exactly 7 of 10 steps"),
        (10, "ddimx", "'ddim' followed by a step count"),
        (10, "a,b", "not a list of step counts"),
        (10, "", "not a list of step counts"),
        (10, "20", "cannot take 20 steps from section 0 of 10 steps"),
        (10, "3,6", "cannot take 6 steps from section 1 of 5 steps"),
        (10, "-2", "must be >= 0"),
        (10, "0", "keep no step"),
        (0, "5", "positive int"),
        (10, [], "no section counts"),
    ],
)
def test_bad_sections_are_named(timesteps: int, sections: str | list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        space_timesteps(timesteps, sections)


def test_parse_sections() -> None:
    assert parse_sections("10,15,20") == [10, 15, 20]
    assert parse_sections((4, 5)) == [4, 5]
