"""Validation of user-given numbers shared by the PyTorch model and the exported runtimes (no torch)."""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_fraction(value: Any, name: str) -> float | None:
    """`value` as a float in [0, 1] (None passes through); a ValueError naming `name` otherwise.

    Thresholds are compared with scores and IoUs, which live in [0, 1]: a string, a bool, NaN or 5 would
    silently keep everything or nothing, so they are refused up front.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    v = float(value)
    if math.isnan(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_input_size(size: Any, name: str = "input_size") -> tuple[int, int]:
    """(w, h) of positive multiples of 32 up to 4096 (the network downsamples by 32; bigger is a typo)."""
    try:
        w, h = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (width, height), got {size!r}") from None
    for v in (w, h):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 32 <= v <= 4096 or v % 32:
            raise ValueError(f"{name} must be two multiples of 32 between 32 and 4096, got {size!r}")
    return int(w), int(h)
