"""Argument checks for the mixers' and the loss's hyperparameters, at the place each is defined.

Each returns the value converted (``float``/``int``) or raises a ``ValueError`` that names the owner, the argument,
what was expected and what was given, e.g. ``Mix: mixup_alpha must be a finite number >= 0, got inf``. Bools are
refused where a number is expected (``True`` is an ``int`` to Python, never a meant alpha or grid size); NaN fails
every range (each comparison with it is False).
"""

from __future__ import annotations

import math
import numbers


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def _finite(value) -> bool:
    """A finite real number, not a bool. Python floats and ints first: the samplers check on every call, and the
    ABC ``isinstance`` alone costs more than the rest of the check."""
    t = type(value)
    if t is not float and t is not int and (t is bool or not isinstance(value, numbers.Real)):
        return False
    return math.isfinite(value)


def real(owner: str, name: str, value, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float: a finite real number (not a bool) in the given interval."""
    ok = _finite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        interval = _interval(low, high, low_open, high_open)
        raise ValueError(f"{owner}: {name} must be a finite number{' ' + interval if interval else ''}, got {value!r}")
    return float(value)


def integer(owner: str, name: str, value, *, low: int | None = None) -> int:
    """``value`` as an int: an integer (or an integral float), not a bool, ``>= low``."""
    ok = not isinstance(value, bool) and (isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()))
    if not ok or (low is not None and value < low):
        raise ValueError(f"{owner}: {name} must be an integer{f' >= {low}' if low is not None else ''}, "
                         f"got {value!r}")
    return int(value)


def probability(owner: str, name: str, value) -> float:
    """A probability in ``[0, 1]``."""
    return real(owner, name, value, low=0.0, high=1.0)


def label_smoothing(owner: str, value, name: str = "label_smoothing") -> float:
    """``eps`` in ``[0, 1)``: 1 would replace every target by the uniform distribution (nothing left to learn)."""
    return real(owner, name, value, low=0.0, high=1.0, high_open=True)


def weights(owner: str, name: str, values, count: int | None = None) -> tuple[float, ...]:
    """Sampling weights: finite, ``>= 0``, not all zero (``count`` of them when given)."""
    try:
        out = tuple(float(v) if _finite(v) and v >= 0 else math.nan for v in values)
    except TypeError:
        raise ValueError(f"{owner}: {name} must be a sequence of numbers, got {values!r}") from None
    if count is not None and len(out) != count:
        raise ValueError(f"{owner}: {name} must be {count} numbers, got {values!r}")
    if not sum(out) > 0:  # NaN (a bad entry) or all 0
        raise ValueError(f"{owner}: {name} must be finite, non-negative and not all 0, got {values!r}")
    return out


__all__ = ["integer", "label_smoothing", "probability", "real", "weights"]
