"""The distillation losses by name and their hyperparameters, importable without torch or numba.

:data:`HPARAMS` maps each loss name to its hyperparameters (default, check, allowed range);
:func:`validate_hparams` checks a method before anything runs, so that the workflow can reject a bad
method at planning time. The losses themselves are :data:`kdlm.losses.LOSSES`, keyed by the same names.
This module imports the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_CHUNK_SIZE", "HPARAMS", "LOSS_NAMES", "resolve_hparams", "validate_hparams"]

DEFAULT_CHUNK_SIZE = 32


@dataclass(frozen=True)
class _Param:
    default: Any
    check: Callable[[Any], bool]
    allowed: str  # human-readable range or choices, used in error messages


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _in_unit(x: Any) -> bool:
    return _is_real(x) and 0.0 <= x <= 1.0


# every loss takes these
COMMON = {
    "temperature": _Param(1.0, lambda x: _is_real(x) and x > 0, "a finite number > 0"),
    "chunk_size": _Param(
        DEFAULT_CHUNK_SIZE, lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1, "an int >= 1"
    ),
}

# loss name -> its own hyperparameters (COMMON is added below)
HPARAMS: dict[str, dict[str, _Param]] = {
    "forward": {},
    "reverse": {},
    "jsd": {"forward_ratio": _Param(0.9, _in_unit, "a number in [0, 1]")},
    "gjsd": {"beta": _Param(0.5, _in_unit, "a number in [0, 1]")},
    "tvd": {},
    "skl": {"alpha": _Param(0.1, _in_unit, "a number in [0, 1]")},
    "srkl": {"alpha": _Param(0.1, _in_unit, "a number in [0, 1]")},
    "dkd": {
        "alpha": _Param(1.0, lambda x: _is_real(x) and x >= 0, "a finite number >= 0"),
        "beta": _Param(8.0, lambda x: _is_real(x) and x >= 0, "a finite number >= 0"),
    },
    "atkd": {
        "lam": _Param(0.2, _in_unit, "a number in [0, 1]"),
        "setting": _Param("vanilla", lambda x: x in ("vanilla", "reverse"), "one of vanilla|reverse"),
        "hard_fraction": _Param(0.5, lambda x: _is_real(x) and 0.0 < x <= 1.0, "a number in (0, 1]"),
    },
    "akl": {"mu": _Param(0.5, _in_unit, "a number in [0, 1]")},
    "sft": {},
}
for _spec in HPARAMS.values():
    _spec.update(COMMON)

LOSS_NAMES: tuple[str, ...] = tuple(HPARAMS)


def validate_hparams(name: str, hparams: dict[str, Any]) -> None:
    """Check a loss name and its hyperparameters before training starts.

    Args:
        name: a key of :data:`HPARAMS` (and of :data:`kdlm.losses.LOSSES`).
        hparams: keyword arguments that will be passed to the loss (without ``stats``).

    Raises:
        ValueError: unknown loss name (the message lists the known ones), unknown key (the message lists
            the allowed keys), or a value outside its range/choices (the message says which).
    """
    if name not in HPARAMS:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(HPARAMS))}")
    spec = HPARAMS[name]
    for key, value in hparams.items():
        if key not in spec:
            raise ValueError(
                f"loss {name!r}: unknown hyperparameter {key!r}; allowed: {', '.join(sorted(spec))}"
            )
        if not spec[key].check(value):
            raise ValueError(f"loss {name!r}: {key}={value!r} is invalid; it must be {spec[key].allowed}")


def resolve_hparams(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Validate ``hparams`` and fill in defaults: every hyperparameter of loss ``name`` -> its value."""
    validate_hparams(name, hparams)
    return {key: hparams.get(key, p.default) for key, p in HPARAMS[name].items()}
