"""Typed parameter checks shared by the Python API and the App forms, so both give the same message.

Each check returns the value (converted where that is lossless, e.g. ``3.0`` -> ``3``) or raises ``ValueError``
saying what was expected and what was given. Forms call the same functions and show the message as a form error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None, none_ok: bool = False):
    """An int in [minimum, maximum] (bools and non-integral floats are refused)."""
    if value is None and none_ok:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if not ok or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_range('an integer', minimum, maximum)}, got {value!r}")
    return value


def number(name: str, value, minimum: float | None = None, maximum: float | None = None, none_ok: bool = False,
           open_min: bool = False):
    """A finite real number in [minimum, maximum] ((minimum, maximum] with ``open_min``)."""
    if value is None and none_ok:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None and (value <= minimum if open_min else value < minimum):
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        lo = "(" if open_min else "["
        what = (f"a number in {lo}{minimum}, {maximum}]" if minimum is not None and maximum is not None
                else _range("a number", minimum, maximum))
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def choice(name: str, value, choices: Iterable):
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def text(name: str, value, none_ok: bool = True):
    if value is None and none_ok:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _range(what: str, lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"{what} between {lo} and {hi}"
    if lo is not None:
        return f"{what} >= {lo}"
    if hi is not None:
        return f"{what} <= {hi}"
    return what
