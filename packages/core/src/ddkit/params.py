"""Checking a factory's keyword arguments against its signature before it is called.

A component built by name gets its keywords from a config or a command line, far from the
factory's code. Checking them first turns a bare ``TypeError`` from deep inside a constructor
into a message that names the component, the parameter, what it accepts and the likely fix.
The registry checks every ``create`` this way; the pipeline checks every part of a config
before building any, so that all of a config's problems are reported at once.

Type checks are cheap and conservative: a value is refused only when its annotation says for
sure that it does not fit (plain types, ``Literal``, unions, containers of those); anything
else is left to the factory. Numbers must be finite: NaN is never a setting, and infinity only
where the parameter's default is infinite itself (``s_tmax = inf``), so a NaN or an infinity
from a config or a command line is refused here rather than sampling NaN later.
Every refusal is a :class:`~ddkit.errors.InputError` or :class:`~ddkit.errors.InputTypeError`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import Any, Literal

from ddkit.errors import InputError, InputTypeError, NonFiniteError

__all__ = ["check_params", "describe_params"]

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_PLAIN_TYPES: tuple[type, ...] = (str, bytes, list, tuple, dict, set, frozenset)
_ITEM_CONTAINERS: tuple[type, ...] = (list, tuple, set, frozenset, Sequence, Set)


def check_params(label: str, factory: Callable[..., Any], params: Mapping[str, Any]) -> None:
    """Reject unknown, missing and wrongly typed keywords before ``factory(**params)`` is called.

    ``label`` names the component in the message (``"sampler 'ddim'"``). Raises
    :class:`~ddkit.errors.InputTypeError` (a ``TypeError``) for an unknown keyword (suggesting
    the closest accepted one), a missing required one or a value of the wrong type, and
    :class:`~ddkit.errors.InputError` (a ``ValueError``) for a value outside a ``Literal`` or a
    NaN or infinity (see the module docstring); type messages list the accepted parameters.
    A factory without a readable signature is checked for non-finite numbers only.
    """
    signature = _signature(factory)
    if signature is None:
        for key, value in params.items():
            _check_finite(label, key, value, inspect.Parameter.empty)
        return
    parameters = signature.parameters.values()
    accepted = {p.name: p for p in parameters if p.kind in _KEYWORD_KINDS}
    listing = ", ".join(f"{n} ({_describe_parameter(p)})" for n, p in accepted.items()) or "none"
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        for key in params:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise InputTypeError(f"{label}: unknown parameter {key!r}{hint} (accepted: {listing})")
    for p in parameters:
        if p.default is not inspect.Parameter.empty:
            continue
        positional_only = p.kind is inspect.Parameter.POSITIONAL_ONLY
        if positional_only or (p.kind in _KEYWORD_KINDS and p.name not in params):
            raise InputTypeError(f"{label}: missing required parameter {p.name!r} (accepted: {listing})")
    hints = _type_hints(factory)
    for key, value in params.items():
        if key in hints and key in accepted:
            _check_value(label, key, value, hints[key])
        default = accepted[key].default if key in accepted else inspect.Parameter.empty
        _check_finite(label, key, value, default)


def _check_finite(label: str, key: str, value: object, default: object) -> None:
    """Refuse NaN anywhere in ``value``, and infinity unless ``default`` is infinite too."""
    bad = _first_nonfinite(value)
    if bad is None or (not math.isnan(bad) and _first_nonfinite(default) is not None):
        return
    where = "" if bad is value else f" in {_short(value)}"
    example = f", e.g. the default {default!r}" if isinstance(default, (int, float)) else ""
    raise NonFiniteError(
        f"{label}: parameter {key!r} must be finite (got {bad!r}{where}); give a finite number{example}"
    )


def _first_nonfinite(value: object, depth: int = 0) -> float | None:
    """The first NaN or infinity in ``value`` (a number, or a list, tuple or dict of them), else None."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        v = float(value)
        return None if math.isfinite(v) else v
    if depth > 3:
        return None
    items: Iterable[object] = ()
    if isinstance(value, Mapping):
        items = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    for item in items:
        found = _first_nonfinite(item, depth + 1)
        if found is not None:
            return found
    return None


def describe_params(factory: Callable[..., Any]) -> dict[str, str]:
    """The factory's keyword parameters as ``name -> "annotation = default"`` text, for docs.

    A value without ``" = "`` is a required parameter; ``**kwargs`` appears as ``"**kwargs"``.
    """
    signature = _signature(factory)
    if signature is None:
        return {}
    described: dict[str, str] = {}
    for p in signature.parameters.values():
        if p.kind in _KEYWORD_KINDS:
            described[p.name] = _describe_parameter(p)
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            described[f"**{p.name}"] = _annotation_text(p.annotation)
    return described


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def _annotation_text(annotation: object) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    return annotation if isinstance(annotation, str) else _type_text(annotation)


def _describe_parameter(p: inspect.Parameter) -> str:
    annotation = _annotation_text(p.annotation)
    if p.default is inspect.Parameter.empty:
        return annotation or "required"
    return f"{annotation} = {p.default!r}" if annotation else f"= {p.default!r}"


def _check_value(label: str, key: str, value: object, hint: object) -> None:
    if _matches(value, hint) is not False:
        return
    literals = _literal_values(hint)
    if literals is not None:
        allowed = ", ".join(repr(v) for v in literals)
        text = [str(v) for v in literals if isinstance(v, str)]
        close = difflib.get_close_matches(value, text, n=1) if isinstance(value, str) else []
        hint_text = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(
            f"{label}: parameter {key!r} must be one of {allowed} (got {_short(value)}{hint_text})"
        )
    raise InputTypeError(
        f"{label}: parameter {key!r} must be {_type_text(hint)} (got {type(value).__name__} {_short(value)})"
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_hints(factory: Callable[..., Any]) -> dict[str, object]:
    """Resolved annotations of the factory (a class's ``__init__`` wins over its class body)."""
    if isinstance(factory, type):
        return {**_safe_hints(factory), **_safe_hints(getattr(factory, "__init__", None))}
    return _safe_hints(factory)


def _safe_hints(obj: object) -> dict[str, object]:
    """``typing.get_type_hints``, or failing that each annotation that resolves on its own."""
    try:
        return dict(typing.get_type_hints(obj))
    except Exception:
        pass
    try:
        raw = inspect.get_annotations(obj) if callable(obj) else {}
    except TypeError:
        return {}
    if isinstance(obj, type):
        module = sys.modules.get(obj.__module__)
        namespace: Mapping[str, Any] = vars(module) if module is not None else {}
    else:
        namespace = getattr(inspect.unwrap(obj), "__globals__", {})  # type: ignore[arg-type]
    resolved: dict[str, object] = {}
    for key, annotation in raw.items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))
            except Exception:
                continue
        resolved[key] = annotation
    return resolved


def _matches(value: object, hint: object) -> bool | None:
    """Whether ``value`` fits ``hint``: ``True``/``False``, or ``None`` when that is not cheap to tell."""
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _matches(value, args[0])
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is typing.Union or origin is types.UnionType:
        verdicts = [_matches(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is not None:
        return _matches_container(value, origin, args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint in _PLAIN_TYPES:
        return isinstance(value, hint)
    if isinstance(hint, type) and not getattr(hint, "_is_protocol", False):
        try:
            return isinstance(value, hint)  # a plain class (np.ndarray, Tensor, nn.Module)
        except TypeError:
            return None
    return None


def _matches_container(value: object, origin: object, args: tuple[object, ...]) -> bool | None:
    if not isinstance(origin, type) or not issubclass(origin, (*_ITEM_CONTAINERS, Mapping)):
        return None
    if not isinstance(value, origin):
        return False
    if isinstance(value, (str, bytes)) and origin is not str:
        return False  # a string is a sequence of characters, never the list of values meant
    if not args or not isinstance(value, Iterable) or isinstance(value, Mapping):
        return True
    items = list(value)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            return False
        verdicts = [_matches(v, a) for v, a in zip(items, args)]
    else:
        verdicts = [_matches(v, args[0]) for v in items]
    return False if False in verdicts else (True if all(verdicts) else None)


def _literal_values(hint: object) -> list[object] | None:
    """The allowed values when ``hint`` is a ``Literal`` (optionally ``| None``), else ``None``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return list(typing.get_args(hint))
    if origin is typing.Union or origin is types.UnionType:
        values: list[object] = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                values.append(None)
                continue
            inner = _literal_values(arg)
            if inner is None:
                return None
            values.extend(inner)
        return values
    return None


def _type_text(hint: object) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_text(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and origin is None:
        return hint.__name__
    return repr(hint).replace("typing.", "").replace("collections.abc.", "")
