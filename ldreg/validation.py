"""Validate plain YAML data against dataclasses, with one clear message per mistake.

Specs are data (safe YAML). Every experiment and query spec is a tree of dataclasses; this
module turns a mapping into that tree and, when it cannot, says which dotted field is wrong,
what was expected, and the nearest valid name for a misspelt key.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ldreg.errors import SpecError, closest, preview

# Extra checks a field may carry: dataclasses.field(metadata={"check": (predicate, "must be ...")})
CHECK = "check"
# Integers beyond 64 bits overflow torch, numpy and MongoDB alike; no field needs them.
INT_LIMIT = 2**63


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        item = _type_name(get_args(tp)[0])
        plural = {"a mapping": "mappings", "a string": "strings", "an integer": "integers", "a number": "numbers"}
        return f"a list of {plural.get(item, item)}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` as type ``tp``, or a SpecError naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, where)
            except SpecError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise SpecError(f"{where}: expected {_type_name(tp)}, got {preview(value)}")
    if origin is Literal:
        if _hashable(value) and value in get_args(tp):
            return value
        hint = closest(str(value), map(str, get_args(tp))) if isinstance(value, str) and len(value) < 100 else ""
        raise SpecError(f"{where}: must be {_type_name(tp)}, not {preview(value)}{hint}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected {_type_name(tp)}, got {preview(value)}")
        (item,) = get_args(tp)[:1]
        out = [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a mapping, got {preview(value)}")
        _, vt = get_args(tp)
        return {str(k): convert(vt, v, f"{where}.{preview(k, 40, quote=False)}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= INT_LIMIT:
                raise SpecError(f"{where}: {preview(value, 40)} is too large; give an integer below 2**63")
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
        elif isinstance(value, str) and len(value) < 100:  # YAML reads 1e-5 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise SpecError(f"{where}: must be a finite number, got {preview(value, 30)}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise SpecError(f"{where}: expected {_type_name(tp)}, got {preview(value)}")


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and bad values are errors."""
    label = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{label}: expected a mapping, got {preview(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise SpecError(
                f"{_join(where, preview(key, 40, quote=False))}: unknown key{closest(str(key)[:100], fields)}; "
                f"valid keys here: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        path = _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{path}: required, but missing")
            continue
        value = convert(hints[name], data[name], path)
        check = f.metadata.get(CHECK)
        if check and value is not None and not check[0](value):
            raise SpecError(f"{path}: {check[1]}, got {preview(value)}")
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate:
        validate(where)
    return obj


def to_dict(obj: Any) -> Any:
    """The plain-data form of a dataclass tree (what Sacred stores as the run's config)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def positive(what: str = "must be > 0"):
    return {CHECK: (lambda v: v > 0, what)}


def non_negative(what: str = "must be >= 0"):
    return {CHECK: (lambda v: v >= 0, what)}


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


__all__ = ["convert", "from_dict", "to_dict", "positive", "non_negative"]
