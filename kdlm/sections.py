"""Config sections as typed values: one mapping of `config.yaml` (or a CLI JSON option) → one dataclass.

The dataclasses hold the only defaults and ranges of every setting; the workflow and every `kdlm` verb
build them through :func:`build`, so a value is checked the same way wherever it comes from.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path",
          list: "a list", dict: "a mapping"}  # fmt: skip


def _accepts(hint: Any, value: Any) -> bool:
    """Whether `value` (from YAML or JSON) fits the annotation `hint`; unknown annotations accept all."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, (str, Path))
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_accepts(args[0], v) for v in value if args)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return True


def _expected(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else [hint]  # fmt: skip
    names = [_NAMES.get(typing.get_origin(a) or a, "a mapping" if is_dataclass(a) else str(a)) for a in args]
    optional = " (or null)" if len(args) < len(typing.get_args(hint)) else ""
    return " or ".join(names) + optional


def check_types(cls: type, values: dict[str, Any]) -> None:
    """Raise one ValueError for the first value whose type does not fit its field (before any range
    check compares, say, a string with a number).

    Raises:
        ValueError: naming the field, the type it needs and the value.
    """
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not _accepts(hints[name], value):
            raise ValueError(f"{name} must be {_expected(hints[name])}, got {value!r}")


def build(cls: type[T], values: dict[str, Any] | None, key: str) -> T:
    """`cls(**values)`; unknown keys, wrong types and out-of-range values become one ValueError line
    that names the section `key`."""
    values = dict(values or {})
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{key}: unknown option(s) {unknown}; allowed: {sorted(known)}")
    required = [f.name for f in fields(cls) if f.init and f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ValueError(f"{key}: missing required option(s) {missing}")
    try:
        check_types(cls, values)
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key}: {err}") from None


def check_range(name: str, value: float | None, *, minimum: float | None = None, above: float | None = None,
                maximum: float | None = None, below: float | None = None) -> None:  # fmt: skip
    """Raise one ValueError naming `name` when `value` (None: unset, accepted) is outside the range.

    `minimum`/`maximum` are inclusive bounds, `above`/`below` exclusive ones.
    """
    if value is None:
        return
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be > {above}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {value}")


def merged(section: dict[str, Any] | None, **flags: Any) -> dict[str, Any]:
    """A section with the single CLI flags that were given (not None) laid over it."""
    return {**(section or {}), **{k: v for k, v in flags.items() if v is not None}}
