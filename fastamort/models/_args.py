"""Argument checks shared by the models' constructors (errors name the argument)."""

from __future__ import annotations

from .._checks import check_int, check_positive

__all__ = ["check_count", "check_positive"]


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum``: TypeError for a non-integer (or bool), else ValueError."""
    return check_int(value, name, minimum)
