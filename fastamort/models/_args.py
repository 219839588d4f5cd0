"""Argument checks shared by the models' constructors (errors name the argument)."""

from __future__ import annotations

import math
import numbers

from .._checks import is_real_scalar


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum``: TypeError for a non-integer (or bool), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (≥ 0 with ``allow_zero``): TypeError for a non-number
    (or bool), else ValueError."""
    if not is_real_scalar(value):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name}: expected a {kind} finite number, got {value!r}")
    return float(value)
