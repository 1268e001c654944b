"""Helpers shared by the JSON formats (Nightscout, Tidepool)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def get(items: list[Any], *path: str) -> list[Any]:
    """``item[path[0]][path[1]]...`` of every item, None where absent."""
    out = []
    for it in items:
        for key in path:
            it = it.get(key) if isinstance(it, dict) else None
        out.append(it)
    return out


def _number(v: Any) -> float:
    """A JSON value as a float: NaN when absent, ``inf`` marks a bad value."""
    if v is None or v == "":
        return math.nan
    if isinstance(v, bool):
        return math.inf
    if isinstance(v, int | float):
        try:
            f = float(v)
        except OverflowError:
            return math.inf
        return f if math.isfinite(f) else math.inf
    if isinstance(v, str):
        try:
            f = float(v.strip().replace(",", "."))
        except ValueError:
            return math.inf
        return f if math.isfinite(f) else math.inf
    return math.inf


def numbers(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """JSON values to floats: ``(value, bad)``; value is NaN where absent or bad."""
    v = np.fromiter(map(_number, values), dtype=float, count=len(values))
    bad = np.isinf(v)
    v[bad] = np.nan
    return v, bad


def strings(values: list[Any]) -> pd.Series:
    """JSON values as stripped strings (``''`` for anything that is not a string)."""
    return pd.Series(
        [v.strip() if isinstance(v, str) else "" for v in values], dtype=str
    )


def spread(
    time: pd.Series, total: np.ndarray, duration_min: np.ndarray, row: np.ndarray
) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Split extended doses into equal doses every 5 min over their duration.

    Dose ``k`` of ``n = ceil(duration / 5)`` is given at ``t + (k + 1/2) duration / n``.

    Returns:
        ``(times, units, rows)`` of the split doses.
    """
    dur = np.where(np.isfinite(duration_min) & (duration_min > 0), duration_min, 0.0)
    n = np.maximum(1, np.ceil(dur / 5.0 - 1e-9)).astype(np.int64)
    n = np.minimum(n, 24 * 12 * 5)
    idx = np.repeat(np.arange(len(n)), n)
    k = np.arange(len(idx)) - np.repeat(np.cumsum(n) - n, n)
    step = dur[idx] / n[idx]
    offsets = pd.to_timedelta((k + 0.5) * step * 60e6, unit="us")
    base = pd.Series(pd.DatetimeIndex(time)).iloc[idx].reset_index(drop=True)
    times = base + pd.Series(offsets)
    return times, total[idx] / n[idx], np.asarray(row)[idx]
