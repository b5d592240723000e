"""Fuzzing what users give ddkit: every registered name and parameter, configs, sampling and loss inputs.

Issue 20 item 8. Each call's outcome is one of

``ok``       it worked, and every number it returned is finite;
``clear``    a :class:`~ddkit.errors.DdkitError` whose message names what was wrong (the parameter,
             option, table or argument that was changed);
``unclear``  any other exception (a raw ``TypeError`` from deep inside, an ``IndexError``, a
             ``MemoryError``), or a ddkit error that does not name what was wrong;
``silent``   it returned, but with NaN or infinity in it;
``hang``     it ran past :data:`PER_CALL_S` seconds.

The tests assert no ``unclear``, ``silent`` or ``hang`` outcome, print the counts (``-s``), and
with ``DDKIT_FUZZ_REPORT=counts.json`` write them (docs/reliability.md quotes them). Example
counts are bounded and derandomized so that the file runs in one to two minutes on two cores.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ddkit
from ddkit.errors import DdkitError
from ddkit.records import KINDS

#: A call running longer than this counts as a hang (generous: two shared, busy cores).
PER_CALL_S = 60.0
BAD = ("unclear", "silent", "hang")
SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
NAN, INF = float("nan"), float("inf")

# Wrong values by annotation: boundaries, non-finite numbers, huge sizes and wrong types.
INT_VALUES: list[object] = [0, -1, 1, 2, 7, 10**12, 2.5, "3", None, True, NAN]
FLOAT_VALUES: list[object] = [NAN, INF, -INF, -1.0, 0.0, 1e308, 1e-300, 0.5, 2.0, "0.1", None, True]
BOOL_VALUES: list[object] = [1, "yes", None, 0.5]
TEXT_VALUES: list[object] = ["", "nonsense", "fixed_small", 3, None, NAN, [1, 2]]
# Model sizes stay small: a huge-but-valid layer width is a request for memory, not a bad input.
MODEL_INT_VALUES: list[object] = [0, -1, 1, 3, 2.5, "3", None, True]

#: Small valid parameters for the models, so that fuzzing one parameter builds in milliseconds.
MODEL_BASE: dict[str, dict[str, Any]] = {
    "mlp": {"dim": 2, "hidden": 8, "depth": 1},
    "adm-unet": {
        "image_size": 8,
        "num_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": "1,2",
        "attention_resolutions": "4",
    },
    "adm-superres": {
        "large_size": 8,
        "small_size": 4,
        "num_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": "1,2",
        "attention_resolutions": "4",
    },
    "adm-classifier": {
        "image_size": 8,
        "classifier_width": 32,
        "classifier_depth": 1,
        "classifier_attention_resolutions": "4",
        "channel_mult": "1,2",
    },
}
#: Where a message rightly names a parameter by another name (guided-diffusion's internal one).
ALIASES: dict[str, list[str]] = {"num_channels": ["model_channels"], "classifier_width": ["model_channels"]}

#: Bad outcomes this fuzz found in code outside its brief, reported to the owners (issue 20).
#: They are counted as ``known``, not failed on; :func:`test_known_issues_still_reproduce` fails
#: once one is fixed, so that the list stays true. ``(kind, name, params, owner: what happens)``:
KNOWN_CREATE: list[tuple[str, str, dict[str, Any], str]] = []
#: The same failures as (area, text in the input, text in the outcome), matched by their message.
KNOWN_PATTERNS: list[tuple[str, str, str]] = []


def _known(area: str, what: str, detail: str) -> bool:
    return any(area == a and text in what and outcome in detail for a, text, outcome in KNOWN_PATTERNS)


def _describe_create(kind: str, name: str, params: Mapping[str, Any]) -> str:
    return f"create({kind!r}, {name!r}, **{dict(params)!r})"


#: Parameters a registered name needs before any other can be fuzzed (a resampler's timesteps).
REQUIRED_BASE: dict[str, dict[str, Any]] = {"resampler": {"timesteps": 50}}

COUNTS: dict[str, Counter[str]] = {}


class _Hang(BaseException):
    """Raised by the alarm inside a call that ran too long (a BaseException: nothing swallows it)."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: object) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _nonfinite(value: object, depth: int = 0) -> bool:
    """Whether ``value`` (a tensor, array, number, schedule, pipeline or plain object) holds NaN/inf."""
    if isinstance(value, torch.Tensor):
        return bool(value.is_floating_point() and not torch.isfinite(value).all())
    if isinstance(value, np.ndarray):
        return bool(np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all())
    if isinstance(value, float):
        return not math.isfinite(value)
    if depth > 1:
        return False
    if isinstance(value, Mapping):
        return any(_nonfinite(v, depth + 1) for v in value.values())
    betas = getattr(value, "betas", None)
    if betas is not None and _nonfinite(np.asarray(betas)):
        return True
    fields = getattr(value, "__dict__", None)
    if isinstance(fields, dict):
        return any(
            _nonfinite(v, depth + 1)
            for k, v in fields.items()
            if not k.startswith("_") and not (isinstance(v, float) and math.isinf(v) and "tmax" in k)
        )
    return False


def classify(call: Callable[[], object], names: list[str], seconds: float = PER_CALL_S) -> tuple[str, str]:
    """Run ``call`` and say what happened; a ddkit error is clear only if it names one of ``names``."""
    try:
        with _deadline(seconds):
            result = call()
            bad = _nonfinite(result)  # reading the result is part of the call: a late error counts
    except _Hang:
        return "hang", f"ran past {seconds:g} s"
    except DdkitError as exc:
        message = str(exc)
        if any(name and name in message for name in names):
            return "clear", message.splitlines()[0]
        return "unclear", f"{type(exc).__name__} naming none of {names}: {message[:300]}"
    except Exception as exc:
        return "unclear", f"{type(exc).__name__}: {str(exc)[:300]}"
    if bad:
        return "silent", f"returned NaN/inf: {type(result).__name__}"
    return "ok", ""


def _record(area: str, outcome: str, what: str, detail: str, failures: list[str]) -> None:
    COUNTS.setdefault(area, Counter())[outcome] += 1
    if outcome in BAD and _known(area, what, detail):
        COUNTS[area][outcome] -= 1
        COUNTS[area]["known"] += 1
    elif outcome in BAD:
        failures.append(f"{outcome}: {what} -> {detail}")


def _report(area: str, failures: list[str]) -> None:
    counts = COUNTS.get(area, Counter())
    line = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("ok", "clear", "unclear", "silent", "hang", "known"))
    print(f"\n[fuzz {area}] {sum(counts.values())} inputs: {line}")
    path = os.environ.get("DDKIT_FUZZ_REPORT")
    if path:
        existing = json.loads(Path(path).read_text()) if os.path.exists(path) else {}
        existing[area] = dict(counts)
        with open(path, "w") as f:
            json.dump(existing, f, indent=2, sort_keys=True)
    shown = "\n".join(sorted(set(failures))[:25])
    assert not failures, f"{len(failures)} bad outcomes in {area}:\n{shown}"


def _values_for(annotation: str, kind: str) -> list[object]:
    text = annotation.split(" = ")[0]
    if kind == "model" and "int" in text:
        return MODEL_INT_VALUES
    if "float" in text and "Sequence" not in text:
        return FLOAT_VALUES
    if text.startswith("int") or "| int" in text or "Literal[2" in text:
        return INT_VALUES
    if text.startswith("bool"):
        return BOOL_VALUES
    return TEXT_VALUES


def _all_names() -> list[tuple[str, str]]:
    return [(kind, name) for kind in KINDS for name in ddkit.names(kind)]


# -- 1. every registered name, every parameter ------------------------------------------------


def _warm_up(names: list[tuple[str, str]]) -> None:
    """Build each name once, untimed: a factory's first call may import a heavy library (diffusers)."""
    for kind, name in names:
        base = {
            k: v for k, v in REQUIRED_BASE.get(kind, {}).items() if k in ddkit.describe(kind, name).parameters
        }
        with contextlib.suppress(Exception):  # only the imports matter here
            ddkit.create(kind, name, **{**base, **MODEL_BASE.get(name, {})})


def test_create_every_name_with_bad_parameters() -> None:
    failures: list[str] = []
    names = _all_names()
    assert names, "no registered names"
    _warm_up(names)
    # Every name and every parameter at least once (the random part below then mixes them).
    for kind, name in names:
        described = ddkit.describe(kind, name).parameters
        for key, annotation in described.items():
            if key.startswith("**"):
                continue
            params = {
                **{k: v for k, v in REQUIRED_BASE.get(kind, {}).items() if k in described},
                **MODEL_BASE.get(name, {}),
                key: _values_for(annotation, kind)[0],
            }
            named = [key, *ALIASES.get(key, [])]
            outcome, detail = classify(lambda: ddkit.create(kind, name, **params), named)  # noqa: B023
            _record("create", outcome, _describe_create(kind, name, params), detail, failures)

    @settings(SETTINGS, max_examples=1200)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        kind, name = data.draw(st.sampled_from(names), label="component")
        described = ddkit.describe(kind, name).parameters
        fuzzable = [p for p in described if not p.startswith("**")]
        base = {k: v for k, v in REQUIRED_BASE.get(kind, {}).items() if k in described}
        params: dict[str, Any] = {**base, **MODEL_BASE.get(name, {})}
        changed: list[str] = []
        action = data.draw(st.sampled_from(["value", "value", "value", "two", "unknown"]), label="action")
        if action == "unknown" or not fuzzable:
            key = data.draw(st.sampled_from([*(p[:-1] + "x" for p in fuzzable), "nonsense"]), label="key")
            params[key] = 1
            changed.append(key)
        else:
            for key in data.draw(
                st.lists(st.sampled_from(fuzzable), min_size=1, max_size=2 if action == "two" else 1),
                label="keys",
            ):
                params[key] = data.draw(st.sampled_from(_values_for(described[key], kind)), label=key)
                changed.append(key)
        named = [*changed, *(alias for key in changed for alias in ALIASES.get(key, []))]
        outcome, detail = classify(lambda: ddkit.create(kind, name, **params), named)
        _record("create", outcome, _describe_create(kind, name, params), detail, failures)

    run()
    _report("create", failures)


# -- 2. Pipeline.from_config mutations, then a draw from what was built ------------------------

BASE_CONFIG: dict[str, Any] = {
    "schedule": {"name": "linear", "timesteps": 50},
    "parameterization": {"name": "epsilon", "clip_denoised": False},
    "model": {"name": "mlp", "dim": 2, "hidden": 8, "depth": 1},
    "sampler": {"name": "ddim", "steps": 5},
}
SECTION_KINDS = {"schedule": "schedule", "parameterization": "parameterization", "sampler": "sampler"}


def _build_and_draw(cfg: Mapping[str, Any]) -> torch.Tensor:
    pipe = ddkit.Pipeline.from_config(cfg)
    return pipe.sample(3, generator=torch.Generator().manual_seed(0))


def test_config_mutations() -> None:
    failures: list[str] = []

    @settings(SETTINGS, max_examples=400)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        cfg: dict[str, Any] = {k: dict(v) for k, v in BASE_CONFIG.items()}
        section = data.draw(st.sampled_from([*SECTION_KINDS, "model", "loss", "sample", "guidance"]))
        op = data.draw(
            st.sampled_from(["name", "typo-name", "param", "unknown-key", "scalar", "drop", "table"])
        )
        mentioned: list[str] = [section]
        if section in ("loss", "sample", "guidance") and op in ("name", "typo-name", "drop"):
            op = "param"
        if op == "name" and section in SECTION_KINDS:
            cfg[section] = {"name": data.draw(st.sampled_from(ddkit.names(SECTION_KINDS[section])))}
            if cfg[section]["name"] in ("ddim", "ddpm", "plms") or section == "sampler":
                cfg[section]["steps"] = 5
            mentioned = [cfg[section]["name"], section]
        elif op == "typo-name":
            old = str(cfg.get(section, {}).get("name", "x"))
            cfg[section]["name"] = old[:-1] + ("x" if old[-1] != "x" else "y")
            mentioned = [cfg[section]["name"]]
        elif op == "param":
            key: str | None
            value: object
            if section == "loss":
                key, value = data.draw(
                    st.sampled_from([("name", "l2"), ("min_snr_gamma", NAN), ("min_snr_gamma", -1)])
                )
            elif section == "sample":
                key, value = "shape", data.draw(st.sampled_from([[3], [0], [2, 2], "2", [2.5], []]))
            elif section == "guidance":
                cfg["guidance"] = [
                    {"name": "classifier-free", "scale": data.draw(st.sampled_from([NAN, -1.0, 3.0]))}
                ]
                mentioned = ["guidance", "classifier-free", "scale", "class", "null"]
                key = value = None
            else:
                name = cfg[section]["name"]
                kind = SECTION_KINDS.get(section, section)
                described = ddkit.describe(kind, name).parameters
                key = data.draw(st.sampled_from([p for p in described if not p.startswith("**")]))
                value = data.draw(st.sampled_from(_values_for(described[key], kind)))
            if key is not None:
                cfg.setdefault(section, {})
                cfg[section] = {**cfg[section], key: value}
                mentioned = [key, section]
        elif op == "unknown-key":
            cfg.setdefault(section, {"name": "mse"} if section == "loss" else {})
            if section == "guidance":
                cfg["guidance"] = [{"name": "classifier-free", "sclae": 3.0}]
                mentioned = ["sclae"]
            else:
                cfg[section] = {**cfg[section], "stpes": 5}
                mentioned = ["stpes"]
        elif op == "scalar":
            cfg[section] = data.draw(st.sampled_from([3, None, [1, 2], True]))
            mentioned = [section]
            if cfg[section] is None and section != "model":
                op = "default"  # a missing optional table is a default, fine
        elif op == "drop":
            cfg.pop(section, None)
            mentioned = [section]
        elif op == "table":
            cfg[data.draw(st.sampled_from(["sampelr", "modle", "training", "extra"]))] = {"name": "x"}
            mentioned = ["unknown top-level table"]
        outcome, detail = classify(lambda: _build_and_draw(cfg), mentioned)
        _record("config", outcome, f"{op} {section}: {cfg!r}", detail, failures)

    run()
    _report("config", failures)


# -- 3. sampling and loss inputs, under every registered sampler -------------------------------


class _Model(torch.nn.Module):
    """A tiny 2-D network whose output can be made bad on purpose."""

    def __init__(self, output: str) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.output = output

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> object:
        out = self.lin(x)
        if self.output == "none":
            return None
        if self.output == "nan":
            return out * NAN
        if self.output == "inf":
            return out + INF
        if self.output == "narrow":
            return out[:, :1]
        if self.output == "tuple":
            return (out,)
        return out


X_T: list[tuple[str, object]] = [
    ("finite", torch.randn(3, 2)),
    ("nan", torch.full((3, 2), NAN)),
    ("inf", torch.full((3, 2), INF)),
    ("one-nan", torch.tensor([[0.0, NAN], [1.0, 2.0], [0.5, 0.5]])),
    ("float64", torch.randn(3, 2, dtype=torch.float64)),
    ("float16", torch.randn(3, 2).half()),
    ("int", torch.ones(3, 2, dtype=torch.long)),
    ("numpy", np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)),
    ("numpy-int", np.ones((3, 2), dtype=np.int64)),
    ("list", [[0.0, 1.0]]),
    ("1-d", torch.randn(3)),
    ("wrong-width", torch.randn(3, 5)),
    ("image", torch.randn(3, 2, 4, 4)),
    ("empty", torch.randn(0, 2)),
]
OTHER: list[tuple[str, dict[str, Any], list[str]]] = [
    ("n=0", {"n": 0}, ["n must"]),
    ("n=-3", {"n": -3}, ["n must"]),
    ("n=2.0", {"n": 2.0}, ["n must"]),
    ("n='3'", {"n": "3"}, ["n must"]),
    ("no n", {}, ["give n"]),
    ("generator=42", {"n": 3, "generator": 42}, ["generator"]),
    ("generator='a'", {"n": 3, "generator": "a"}, ["generator"]),
    ("generators short", {"n": 3, "generator": [torch.Generator()]}, ["generator"]),
    ("y='cat'", {"n": 3, "y": "cat"}, ["y", "labels"]),
    ("y=1.5", {"n": 3, "y": 1.5}, ["y", "labels"]),
    ("y=[1]", {"n": 3, "y": [1]}, ["y", "labels"]),
    ("n mismatch", {"n": 2, "x_T": torch.randn(3, 2)}, ["x_T holds 3"]),
]
LOSS_T: list[tuple[str, object]] = [
    ("in range", torch.tensor([0, 1, 2, 49])),
    ("negative", torch.tensor([-1, 0, 1, 2])),
    ("too large", torch.tensor([50, 0, 1, 2])),
    ("huge", torch.tensor([10**12, 0, 1, 2])),
    ("float", torch.tensor([0.5, 1.0, 2.0, 3.0])),
    ("nan", torch.tensor([NAN, 1.0, 2.0, 3.0])),
    ("short", torch.tensor([1, 2])),
    ("2-d", torch.zeros(4, 1, dtype=torch.long)),
    ("int", 3),
    ("bool", torch.ones(4, dtype=torch.bool)),
]


def _pipeline(sampler: str, output: str) -> ddkit.Pipeline:
    cfg = {k: v for k, v in BASE_CONFIG.items() if k not in ("model", "sampler")}
    params: dict[str, Any] = {"name": sampler}
    if "steps" in ddkit.describe("sampler", sampler).parameters:
        params["steps"] = 4
    return ddkit.Pipeline.from_config(
        {**cfg, "sampler": params, "sample": {"shape": [2]}}, model=_Model(output)
    )


def test_sampling_and_loss_inputs() -> None:
    failures: list[str] = []
    samplers = ddkit.names("sampler")
    pipes: dict[tuple[str, str], ddkit.Pipeline | BaseException] = {}

    def pipe_for(sampler: str, output: str) -> ddkit.Pipeline | BaseException:
        if (sampler, output) not in pipes:
            try:
                pipes[(sampler, output)] = _pipeline(sampler, output)
            except DdkitError as exc:  # a sampler that cannot walk this chain says so once
                pipes[(sampler, output)] = exc
        return pipes[(sampler, output)]

    @settings(SETTINGS, max_examples=500)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        sampler = data.draw(st.sampled_from(samplers))
        area = data.draw(st.sampled_from(["x_T", "x_T", "other", "model", "loss"]))
        output = (
            data.draw(st.sampled_from(["ok", "none", "nan", "inf", "narrow", "tuple"]))
            if area == "model"
            else "ok"
        )
        pipe = pipe_for(sampler, output)
        if isinstance(pipe, BaseException):
            _record("sampling", "clear", f"{sampler} on the toy chain", str(pipe), failures)
            return
        if area == "x_T":
            label, x_T = data.draw(st.sampled_from(X_T))
            outcome, detail = classify(lambda: pipe.sample(x_T=x_T), ["x_T", "model"])  # type: ignore[arg-type]
        elif area == "other":
            label, kwargs, names = data.draw(st.sampled_from(OTHER))
            outcome, detail = classify(lambda: pipe.sample(**kwargs), names)
        elif area == "model":
            label = f"model returns {output}"
            gen = torch.Generator().manual_seed(0)
            outcome, detail = classify(lambda: pipe.sample(3, generator=gen), ["model", "NaN"])
        else:
            label, t = data.draw(st.sampled_from(LOSS_T))
            x0 = torch.randn(4, 2)
            outcome, detail = classify(
                lambda: pipe.loss(x0, t=t)["loss"],  # type: ignore[arg-type]
                ["t ", "timestep", "t must"],
            )
        _record("sampling", outcome, f"{sampler}: {area} {label}", detail, failures)

    run()
    _report("sampling", failures)


def test_the_classification_can_fail() -> None:
    """A NaN result is silent, a raw error or a ddkit error naming nothing is unclear, a slow call hangs."""
    import time

    def refuse(message: str) -> object:
        raise ddkit.ConfigError(message)

    assert classify(lambda: torch.tensor([NAN]), [])[0] == "silent"
    assert classify(lambda: {"x": [1.0, INF]}, [])[0] == "ok"  # only the first level of a mapping is read
    assert classify(lambda: {"x": INF}, [])[0] == "silent"
    assert classify(lambda: [][1], [])[0] == "unclear"
    assert classify(lambda: refuse("bad 'steps'"), ["steps"])[0] == "clear"
    assert classify(lambda: refuse("bad"), ["steps"])[0] == "unclear"
    assert classify(lambda: time.sleep(5), [], seconds=0.2)[0] == "hang"


def test_known_issues_still_reproduce() -> None:
    """Each KNOWN_CREATE outcome is still bad; when its owner fixes one, drop it from the list."""
    for kind, name, params, reason in KNOWN_CREATE:
        outcome, _ = classify(lambda: ddkit.create(kind, name, **params), list(params))  # noqa: B023
        assert outcome in BAD, (
            f"fixed ({outcome}): {kind} {name!r} {params} ({reason}); drop it from KNOWN_CREATE"
        )
