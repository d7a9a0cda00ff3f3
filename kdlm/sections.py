"""Config sections as typed values: one mapping of `config.yaml` (or a CLI JSON option) → one dataclass.

The dataclasses hold the only defaults and ranges of every setting; the workflow and every `kdlm` verb
build them through :func:`build`, so a value is checked the same way wherever it comes from.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def build(cls: type[T], values: dict[str, Any] | None, key: str) -> T:
    """`cls(**values)`; unknown keys, wrong types and out-of-range values become one ValueError line
    that names the section `key`."""
    values = dict(values or {})
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{key}: unknown option(s) {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key}: {err}") from None


def merged(section: dict[str, Any] | None, **flags: Any) -> dict[str, Any]:
    """A section with the single CLI flags that were given (not None) laid over it."""
    return {**(section or {}), **{k: v for k, v in flags.items() if v is not None}}
