"""Parse, validate and normalize a pipeline config (a dict, or a TOML file of the same shape).

Every problem a new user can write (an unknown table, a misspelt key, a misspelt name, a
value of the wrong type, a missing required parameter) is found here, before anything is
built, and reported as one :class:`~ddkit.ConfigError` that lists each problem with a fix.

A config names each part and its keyword arguments::

    [schedule]       name = "cosine", timesteps = 1000         (default: linear, 1000 steps)
    [parameterization] name = "epsilon", variance = "fixed-small"   (the default)
    [model]          name = "adm-unet", ...                     (required)
    [sampler]        name = "ddim", steps = 50                  (default: ddpm over the full chain)
    [[guidance]]     name = "classifier-free", scale = 3.0      (default: none)
    [loss]           name = "mse"                                (the default)
    [resampler]      name = "uniform"                            (the default)
    [sample]         shape = [3, 32, 32]                         (default: the model's sample_shape)
    [autoencoder]    name = "pixel-shuffle", factor = 2          (default: none; a latent pipeline)
    [train], [data]  handed to the trainer as they are

A part may be written as just its name (``sampler = "ddim"``), and any part or parameter
may be an object instead of a name or a value; objects are used as they are and shown in
the normalized config as ``{object = "module.Class"}``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ddkit.diffusion.losses import LOSSES
from ddkit.errors import ConfigError, PluginConflictError, UnknownPluginError
from ddkit.params import check_params as check_factory_params
from ddkit.pipeline.nulls import read_nulls

__all__ = [
    "DEFAULTS",
    "PART_KINDS",
    "SECTIONS",
    "ParsedConfig",
    "Part",
    "check_parts",
    "is_object_marker",
    "object_marker",
    "parse_config",
    "recorded_providers",
]

#: The top-level tables a config may have, in the order they are written.
SECTIONS: tuple[str, ...] = (
    "schedule",
    "parameterization",
    "model",
    "sampler",
    "guidance",
    "loss",
    "resampler",
    "sample",
    "autoencoder",
    "train",
    "data",
)
#: The sections built through the registry, and the registry kind of each.
PART_KINDS: dict[str, str] = {
    "schedule": "schedule",
    "parameterization": "parameterization",
    "model": "model",
    "sampler": "sampler",
    "guidance": "guidance",
    "resampler": "resampler",
    "autoencoder": "autoencoder",
}
#: The name used for a part the config leaves out (the model has none: it must be given).
DEFAULTS: dict[str, str] = {
    "schedule": "linear",
    "parameterization": "epsilon",
    "sampler": "ddpm",
    "loss": "mse",
    "resampler": "uniform",
}
_LOSS_KEYS = ("name", "min_snr_gamma")
_SAMPLE_KEYS = ("shape",)


def object_marker(obj: object) -> dict[str, str]:
    """How an object (not a name or a plain value) appears in a normalized config."""
    cls = type(obj)
    return {"object": f"{cls.__module__}.{cls.__qualname__}"}


def is_object_marker(value: object) -> bool:
    """Whether ``value`` is the mark :func:`object_marker` leaves (e.g. read back from pipeline.toml)."""
    return isinstance(value, Mapping) and set(value) == {"object"} and isinstance(value["object"], str)


def _is_plain(value: object) -> bool:
    """Whether ``value`` can be written to TOML (so it is a parameter value, not an object)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return False


def _close(word: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _show(value: Any) -> str:
    return f"{value!r}, a {type(value).__name__}"


@attrs.define
class Part:
    """One part of a pipeline: a registered ``name`` with ``params``, or an ``obj`` used as it is.

    ``label`` says where it sits in the config (``[sampler]``, ``[[guidance]] #2``) for messages;
    ``injected`` holds parameters the pipeline derives (the schedule's length) rather than the user.
    """

    section: str
    label: str
    kind: str
    name: str | None = None
    params: dict[str, Any] = attrs.field(factory=dict)
    obj: Any = None
    injected: dict[str, Any] = attrs.field(factory=dict)
    #: Keys of the part's table that the pipeline reads itself, not the factory (``[model] compile``).
    options: dict[str, Any] = attrs.field(factory=dict)

    @property
    def title(self) -> str:
        """``sampler 'ddim'`` or ``model <mymod.Net object>``: how messages name this part."""
        if self.name is not None:
            return f"{self.kind} {self.name!r}"
        return f"{self.kind} (a {type(self.obj).__name__} object)"

    def normalized(self) -> dict[str, Any]:
        """The part as the normalized config shows it: name and params, objects marked."""
        if self.name is None:
            return object_marker(self.obj)
        out: dict[str, Any] = {"name": self.name}
        for key, value in self.params.items():
            out[key] = value if _is_plain(value) else object_marker(value)
        out.update(self.options)
        return out


@attrs.define
class ParsedConfig:
    """A validated config: parts to build, the loss, the sample shape and the trainer's tables."""

    parts: dict[str, Part]
    guidance: list[Part]
    loss: dict[str, Any]
    sample: dict[str, Any]
    train: dict[str, Any] | None
    data: dict[str, Any] | None

    def all_parts(self) -> list[Part]:
        """Every part, in build order (the model last: it is the costliest to build)."""
        first = [self.parts[s] for s in ("schedule", "parameterization", "sampler") if s in self.parts]
        last = [self.parts[s] for s in ("resampler", "autoencoder", "model") if s in self.parts]
        return [*first, *self.guidance, *last]

    def normalized(self) -> dict[str, Any]:
        """The config with every default filled in and every object marked."""
        out: dict[str, Any] = {}
        for section in ("schedule", "parameterization", "model", "sampler"):
            out[section] = self.parts[section].normalized()
        out["guidance"] = [g.normalized() for g in self.guidance]
        out["loss"] = dict(self.loss)
        out["resampler"] = self.parts["resampler"].normalized()
        if self.sample:
            out["sample"] = dict(self.sample)
        if "autoencoder" in self.parts:
            out["autoencoder"] = self.parts["autoencoder"].normalized()
        if self.train is not None:
            out["train"] = dict(self.train)
        if self.data is not None:
            out["data"] = dict(self.data)
        return out


# -- registry access ----------------------------------------------------------------------


def registry_factory(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` (or ``distribution:name``), imported.

    Raises :class:`UnknownPluginError` (with the available names and what to install),
    :class:`~ddkit.PluginConflictError`, or ``ImportError`` for a plugin module that fails to import.
    """
    from ddkit.registry import get_registry

    return get_registry().resolve(kind, name).load()


def recorded_providers(provenance: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """``(kind, name) -> "distribution==version"`` from a saved pipeline's ``[provenance]`` table.

    Loading under these pins (:func:`ddkit.registry.pinned_providers`) rebuilds each part from
    the distribution that provided it when saved, whatever else registers the same name now.
    Entries without a distribution (older saves) are left to ordinary lookup.
    """
    pins: dict[tuple[str, str], str] = {}
    if not isinstance(provenance, Mapping):
        return pins
    for section, kind in PART_KINDS.items():
        value = provenance.get(section)
        for record in value if isinstance(value, list) else [value]:
            if not isinstance(record, Mapping):
                continue
            name, dist, version = record.get("name"), record.get("distribution"), record.get("version")
            if isinstance(name, str) and ":" not in name and isinstance(dist, str) and dist.strip():
                pins[(kind, name)] = f"{dist}=={version}" if isinstance(version, str) and version else dist
    return pins


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def check_params(part: Part, factory: Callable[..., Any]) -> str | None:
    """The registry's check of ``part``'s keywords (unknown, missing, mistyped), as a message or None.

    The same :func:`ddkit.params.check_params` that ``create`` runs, here run on every part
    before any is built, so that one :class:`~ddkit.ConfigError` lists all of a config's problems.

    Parameters the pipeline derives itself (``part.injected``) count as given.
    """
    params = {**dict.fromkeys(part.injected, 1), **part.params}
    try:
        check_factory_params(f"{part.kind} {part.name!r}", factory, params)
    except (TypeError, ValueError) as exc:
        return f"{part.label} {exc}"
    return None


# -- parsing -------------------------------------------------------------------------------


def parse_part(section: str, label: str, value: Any, problems: list[str]) -> Part | None:
    """One part from its config value: a name, a table with ``name``, an object, or an object mark."""
    kind = PART_KINDS[section]
    if isinstance(value, str):
        if not value.strip():
            problems.append(f"{label} has an empty name; write the name of a registered {kind}")
            return None
        return Part(section, label, kind, name=value)
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            problems.append(f"{label} has non-string keys {bad!r}")
            return None
        if is_object_marker(value):
            problems.append(
                f"{label} was an object ({value['object']}), not a registered name, so it cannot be rebuilt "
                f"from the config; pass it again, e.g. Pipeline.load(dir, {section}=<your {kind}>)"
            )
            return None
        if "name" not in value:
            problems.append(
                f"{label} has no 'name'; write name = \"<a registered {kind}>\" (see `ddkit plugins`)"
            )
            return None
        name = value["name"]
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{label}: 'name' must be a non-empty string (got {_show(name)})")
            return None
        params = {k: v for k, v in value.items() if k != "name"}
        return Part(section, label, kind, name=name, params=params)
    if value is None or isinstance(value, (bool, int, float, list, tuple)):
        problems.append(
            f"{label} must be a table with a 'name' (or just the name as a string) or a {kind} object "
            f"(got {_show(value)})"
        )
        return None
    return Part(section, label, kind, obj=value)


def parse_guidance(value: Any, problems: list[str]) -> list[Part]:
    if value is None:
        return []
    items = (
        [value] if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)) else list(value)
    )
    parts = []
    for i, item in enumerate(items):
        label = f"[[guidance]] #{i + 1}" if len(items) > 1 else "[[guidance]]"
        part = parse_part("guidance", label, item, problems)
        if part is not None:
            parts.append(part)
    return parts


def _loss(value: Any, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {"name": DEFAULTS["loss"]}
    table = {"name": value} if isinstance(value, str) else value
    if not isinstance(table, Mapping):
        problems.append(f"[loss] must be a table with a 'name' or a loss name (got {_show(value)})")
        return {"name": DEFAULTS["loss"]}
    out: dict[str, Any] = {"name": table.get("name", DEFAULTS["loss"])}
    for key in table:
        if key not in _LOSS_KEYS:
            problems.append(
                f"[loss] has no key {key!r}{_close(str(key), _LOSS_KEYS)} (keys: {', '.join(_LOSS_KEYS)})"
            )
    if out["name"] not in LOSSES:
        problems.append(
            f"[loss] name {out['name']!r} is not a loss{_close(str(out['name']), LOSSES)} "
            f"(losses: {', '.join(LOSSES)})"
        )
    gamma = table.get("min_snr_gamma")
    if gamma is not None:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            problems.append(f"[loss] 'min_snr_gamma' must be a number > 0 (got {_show(gamma)})")
        else:
            out["min_snr_gamma"] = float(gamma)
    return out


def _sample(value: Any, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"[sample] must be a table such as {{shape = [3, 32, 32]}} (got {_show(value)})")
        return {}
    for key in value:
        if key not in _SAMPLE_KEYS:
            problems.append(
                f"[sample] has no key {key!r}{_close(str(key), _SAMPLE_KEYS)} "
                f"(keys: {', '.join(_SAMPLE_KEYS)})"
            )
    out: dict[str, Any] = {}
    shape = value.get("shape")
    if shape is not None:
        ok = isinstance(shape, (list, tuple)) and len(shape) > 0
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        if not ok:
            problems.append(
                f"[sample] 'shape' must be a list of positive ints, one sample's shape such as [3, 32, 32] "
                f"(got {shape!r})"
            )
        else:
            out["shape"] = [int(d) for d in shape]
    return out


def _table(section: str, value: Any, problems: list[str]) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(f"[{section}] must be a table (got {_show(value)})")
        return None
    return dict(value)


def parse_config(
    cfg: Mapping[str, Any],
    objects: Mapping[str, Any] | None = None,
    derived: Mapping[str, Sequence[str]] | None = None,
) -> ParsedConfig:
    """Validate ``cfg`` (with the keyword ``objects``) into a :class:`ParsedConfig`, or raise ConfigError.

    ``objects`` may replace whole parts (``model=my_module``) or give parameters of any part
    whose factory takes a parameter of that name (``classifier=clf`` for the classifier
    guidance). Every name is looked up and every part's parameters checked (see
    :func:`check_parts`, which also explains ``derived``); all problems raise as one error.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"a pipeline config must be a dict or a TOML table (got {_show(cfg)})")
    objects = dict(objects or {})
    problems: list[str] = []
    for key in cfg:
        if not isinstance(key, str) or key not in SECTIONS:
            problems.append(
                f"unknown top-level table {key!r}{_close(str(key), SECTIONS)} (tables: {', '.join(SECTIONS)})"
            )
    parts: dict[str, Part] = {}
    for section in ("schedule", "parameterization", "model", "sampler", "resampler", "autoencoder"):
        value = cfg.get(section)
        if section in objects:
            given = objects.pop(section)
            if value is not None and not is_object_marker(value) and value is not given:
                problems.append(
                    f"[{section}] is given twice: in the config ({value!r}) and as the keyword "
                    f"{section}=...; give it once"
                )
            value = given
        if value is None:
            if section == "autoencoder":
                continue  # optional: without one the pipeline works in data space
            if section == "model":
                problems.append(
                    "the config has no [model]: add a [model] table with a 'name' (e.g. name = \"adm-unet\") "
                    "or pass model=<an nn.Module called as model(x, t, **conditioning)>"
                )
                continue
            value = DEFAULTS[section]
        part = parse_part(section, f"[{section}]", value, problems)
        if part is not None:
            parts[section] = part
            if section == "model" and part.name is not None:
                from ddkit.pipeline.compile import take_options

                take_options(part, problems)  # [model] compile = true: the pipeline's keys, not the factory's
    guidance_value = objects.pop("guidance") if "guidance" in objects else cfg.get("guidance")
    guidance = parse_guidance(guidance_value, problems)
    loss = _loss(cfg.get("loss"), problems)
    sample = _sample(cfg.get("sample"), problems)
    train = _table("train", cfg.get("train"), problems)
    data = _table("data", cfg.get("data"), problems)
    if data is not None and train is not None and "data" in train:
        problems.append("the data is given twice, as [data] and as [train] data = {...}; keep one")
    all_parts = [*parts.values(), *guidance]
    # Object parameters: a marked value in the config needs the object under that keyword.
    for part in all_parts:
        for key, value in list(part.params.items()):
            if is_object_marker(value):
                if key in objects:
                    part.params[key] = objects[key]
                else:
                    problems.append(
                        f"{part.label} {part.name}: {key!r} was an object ({value['object']}); pass it again "
                        f"as the keyword {key}=<your object>"
                    )
    _place_objects(all_parts, objects, problems)
    parsed = ParsedConfig(parts=parts, guidance=guidance, loss=loss, sample=sample, train=train, data=data)
    problems.extend(check_parts(parsed.all_parts(), derived))
    if problems:
        raise ConfigError(report(problems))
    return parsed


def _place_objects(parts: list[Part], objects: Mapping[str, Any], problems: list[str]) -> None:
    """Give each keyword object to the parts whose factory takes a parameter of that name."""
    if not objects:
        return
    taken: dict[str, bool] = dict.fromkeys(objects, False)
    known: set[str] = set()
    for part in parts:
        if part.name is None:
            continue
        try:
            sig = _signature(registry_factory(part.kind, part.name))
        except Exception:  # an unknown name is reported by resolve(), with the available names
            continue
        if sig is None:
            continue
        known.update(sig.parameters)
        for key, obj in objects.items():
            if key in sig.parameters and (key not in part.params or part.params[key] is obj):
                part.params[key] = obj
                taken[key] = True
    for key, used in taken.items():
        if not used:
            problems.append(
                f"the keyword {key}=... is used by no part: neither a part of the pipeline "
                f"({', '.join(PART_KINDS)}) nor a parameter of any part of this config"
                f"{_close(key, sorted(known))}"
            )


def report(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"the config has {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


def check_parts(parts: Sequence[Part], derived: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Look up each named part and check its parameters; return every problem found.

    ``derived`` maps a kind to parameters the pipeline fills in itself when a factory takes them
    and the config leaves them out (the schedule's length for resamplers and guidance scales);
    they are noted in ``part.injected``, with values set once the schedule is built.
    """
    problems: list[str] = []
    for part in parts:
        if part.name is None:
            continue
        try:
            factory = registry_factory(part.kind, part.name)
        except (UnknownPluginError, PluginConflictError) as exc:
            problems.append(f"{part.label} {exc}")
            continue
        except Exception as exc:  # a plugin whose module fails to import
            problems.append(f"{part.label} the {part.kind} {part.name!r} could not be loaded: {exc}")
            continue
        read_nulls(part.params, factory)
        sig = _signature(factory)
        if sig is not None and derived:
            for key in derived.get(part.kind, ()):
                if key in sig.parameters and key not in part.params:
                    part.injected[key] = None
        problem = check_params(part, factory)
        if problem is not None:
            problems.append(problem)
    return problems
