"""Which training steps a shorter sampling chain visits (guided-diffusion's ``space_timesteps``).

A section string names the steps to keep: ``"250"`` keeps 250 evenly spaced steps;
``"10,15,20"`` splits the chain into three equal sections and keeps 10, 15 and 20 steps of
them; ``"ddim50"`` keeps every k-th step from step 0, for the integer stride k giving
exactly 50 steps (the DDIM paper's striding). The chain itself is built by
:meth:`ddkit.diffusion.GaussianProcess.respace` (or ``respaced`` with a section string).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["parse_sections", "space_timesteps"]


def parse_sections(section_counts: str | Sequence[int]) -> list[int]:
    """The per-section step counts of a comma-separated string or a sequence of ints."""
    if isinstance(section_counts, str):
        parts = [p.strip() for p in section_counts.split(",")]
        try:
            counts = [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"section string {section_counts!r} is not a list of step counts; write e.g. '250', "
                "'10,15,20' or 'ddim50'"
            ) from None
    else:
        counts = [int(c) for c in section_counts]
    if not counts:
        raise ValueError("no section counts given; write e.g. '250', '10,15,20' or 'ddim50'")
    if any(c < 0 for c in counts):
        raise ValueError(f"section counts must be >= 0 (got {counts})")
    return counts


def _ddim_steps(num_timesteps: int, spec: str) -> list[int]:
    text = spec[len("ddim") :]
    try:
        desired = int(text)
    except ValueError:
        raise ValueError(f"{spec!r} must be 'ddim' followed by a step count, e.g. 'ddim50'") from None
    for stride in range(1, num_timesteps):
        steps = range(0, num_timesteps, stride)
        if len(steps) == desired:
            return list(steps)
    raise ValueError(
        f"{spec!r}: no integer stride takes exactly {desired} of {num_timesteps} steps from step 0; "
        f"choose another count or use the plain section form {str(desired)!r}"
    )


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """The sorted training steps kept when ``num_timesteps`` steps are respaced by ``section_counts``.

    Equal, section for section, to guided-diffusion's ``space_timesteps`` (which returns a set):
    the chain is cut into ``len(counts)`` near-equal sections (the first ``T % len`` one
    step longer) and each keeps ``count`` steps at a fractional stride, rounded half to even.

    .. versionadded:: 0.1.0
    """
    if int(num_timesteps) != num_timesteps or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int (got {num_timesteps!r})")
    num_timesteps = int(num_timesteps)
    if isinstance(section_counts, str) and section_counts.strip().startswith("ddim"):
        return _ddim_steps(num_timesteps, section_counts.strip())
    counts = parse_sections(section_counts)
    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: set[int] = set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"cannot take {count} steps from section {i} of {size} steps ({num_timesteps} steps cut "
                f"into {len(counts)} sections); ask for at most {size} there"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    if not kept:
        raise ValueError(f"section counts {counts} keep no step; ask for at least one")
    return sorted(kept)
