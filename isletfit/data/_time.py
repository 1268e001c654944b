"""Timestamps: ISO 8601 with or without offsets, day/month orders, DST rules."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import numpy as np
import pandas as pd

from .._errors import InputError

_OFFSET = r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"


def zone(tz: str | dt.tzinfo | None) -> dt.tzinfo | None:
    """A tzinfo from an IANA name (``'Europe/Berlin'``) or a tzinfo; None stays None."""
    if tz is None or isinstance(tz, dt.tzinfo):
        return tz
    try:
        return zoneinfo.ZoneInfo(str(tz))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise InputError(
            f"unknown time zone {tz!r}",
            field="tz",
            expected="an IANA time zone name such as 'Europe/Berlin'",
        ) from None


def zone_name(tz: dt.tzinfo | None) -> str | None:
    """The name of a tzinfo (IANA key, or ``'UTC+01:00'`` for a fixed offset)."""
    if tz is None:
        return None
    return getattr(tz, "key", None) or str(tz)


def fixed_zone(offset_min: float) -> dt.tzinfo:
    """A fixed-offset tzinfo (``offset_min`` [min] east of UTC; NaN means UTC)."""
    if not np.isfinite(offset_min) or abs(offset_min) >= 24 * 60:
        offset_min = 0.0
    return dt.timezone(dt.timedelta(minutes=round(float(offset_min))))


def offset_minutes(text: pd.Series) -> np.ndarray:
    """UTC offsets [min] written at the end of ISO timestamps (NaN where none)."""
    m = text.str.extract(r"(?:([Zz])|([+-])(\d{2}):?(\d{2})?)$")
    sign = np.where(m[1] == "-", -1.0, 1.0)
    hours = pd.to_numeric(m[2], errors="coerce").to_numpy(float)
    mins = pd.to_numeric(m[3], errors="coerce").fillna(0).to_numpy(float)
    out = sign * (hours * 60 + mins)
    out[(m[0].notna()).to_numpy()] = 0.0
    return out


def parse_iso(text: pd.Series) -> tuple[pd.Series, bool, np.ndarray, np.ndarray]:
    """Parse ISO 8601 strings.

    Rows follow the file's majority: if most non-empty timestamps carry a UTC offset
    (or ``Z``) the result is tz-aware UTC and rows without one are flagged; otherwise
    the result is naive and rows with one are flagged.

    Returns:
        ``(times, aware, offset_min, wrong_style)``; NaT where unparseable.
    """
    s = text.astype(str).str.strip()
    has = s.str.contains(_OFFSET, regex=True).to_numpy()
    nonempty = (s != "").to_numpy()
    aware = bool(has.sum() * 2 > nonempty.sum()) if nonempty.any() else False
    wrong = nonempty & (has != aware)
    use = s.where(~wrong, "")
    if aware:
        times = _to_datetime(use, utc=True)
        offsets = offset_minutes(use)
    else:
        times = _to_datetime(use, utc=False)
        offsets = np.full(len(s), np.nan)
    return times, aware, offsets, wrong


def _to_datetime(s: pd.Series, *, utc: bool) -> pd.Series:
    dtype = "datetime64[us, UTC]" if utc else "datetime64[us]"
    if not len(s):
        return pd.Series([], dtype=dtype)
    try:
        out = pd.to_datetime(s, format="ISO8601", errors="coerce", utc=utc)
    except (ValueError, OverflowError, TypeError):
        out = pd.Series(
            [_one(x, utc) for x in s], index=s.index, dtype=dtype
        )  # rare: fall back value by value
    return out.astype(dtype)


def _one(x: str, utc: bool) -> pd.Timestamp:
    try:
        t = pd.to_datetime(x, format="ISO8601", utc=utc)
    except (ValueError, OverflowError, TypeError):
        return pd.NaT
    return pd.NaT if (t is not pd.NaT and t.tz is not None) != utc else t


def from_epoch_ms(values: np.ndarray) -> pd.Series:
    """Milliseconds since 1970 (UTC) to tz-aware UTC times (NaT where not finite)."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v) & (np.abs(v) < 1e14)
    ms = np.where(ok, v, 0).astype(np.int64)
    out = pd.Series(pd.to_datetime(ms, unit="ms", utc=True)).astype(
        "datetime64[us, UTC]"
    )
    out[~ok] = pd.NaT
    return out


_DMY = (
    r"^\s*(\d{1,4})[-./](\d{1,2})[-./](\d{1,4})[ T]+(\d{1,2})[:.](\d{2})"
    r"(?:[:.](\d{2}))?\s*([AaPp])?\.?\s*[Mm]?\.?\s*$"
)


def split_date(text: pd.Series) -> pd.DataFrame:
    """Split ``A-B-C h:mm[:ss] [AM|PM]`` timestamps into their numbers.

    Float columns ``a b c hour minute second``, ``ampm`` (``'a'``, ``'p'`` or NaN)
    and ``ya`` (the first number has four digits). The date separator may be ``-``,
    ``/`` or ``.``.
    """
    m = text.astype(str).str.extract(_DMY)
    out = pd.DataFrame(
        {
            k: pd.to_numeric(m[i], errors="coerce").to_numpy(float)
            for i, k in enumerate(("a", "b", "c", "hour", "minute", "second"))
        }
    )
    out["second"] = out["second"].fillna(0.0)
    out["ampm"] = m[6].str.lower().to_numpy()
    out["ya"] = m[0].str.len().to_numpy() == 4
    return out


def build_datetime(parts: pd.DataFrame, order: str) -> pd.Series:
    """Naive times from `split_date` parts in `order` ('dmy', 'mdy' or 'ymd').

    Impossible dates are NaT.
    """
    a, b, c = parts["a"], parts["b"], parts["c"]
    year, month, day = {"dmy": (c, b, a), "mdy": (c, a, b), "ymd": (a, b, c)}[order]
    year = np.where(year < 100, year + 2000, year)
    hour = parts["hour"].to_numpy(float).copy()
    ampm = parts["ampm"]
    pm = (ampm == "p").to_numpy()
    am = (ampm == "a").to_numpy()
    bad12 = (am | pm) & ((hour < 1) | (hour > 12))
    hour = np.where(pm & (hour < 12), hour + 12, hour)
    hour = np.where(am & (hour == 12), 0, hour)
    hour[bad12] = np.nan
    frame = pd.DataFrame(
        {
            "year": year,
            "month": month,
            "day": day,
            "hour": hour,
            "minute": parts["minute"],
            "second": parts["second"],
        }
    )
    valid = frame.notna().all(axis=1) & (frame["year"] >= 1900) & (frame["year"] < 2200)
    out = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us]")
    if valid.any():
        out[valid] = pd.to_datetime(
            frame[valid].astype(np.int64), errors="coerce"
        ).astype("datetime64[us]")
    return out


def localize(
    naive: pd.Series, row: np.ndarray, group: np.ndarray, tz: dt.tzinfo
) -> pd.Series:
    """Naive local wall-clock times to tz-aware UTC instants in zone `tz`.

    The rule for daylight-saving changes:

    * a repeated (ambiguous) wall time is resolved by file order within each `group`:
      rows are taken in file order (reversed when the group is newest-first); once a
      wall time in the repeated hour goes backwards, that row and the later ones in
      the repeated hour are the second pass (standard time); before, daylight time;
    * a nonexistent wall time (in the hour skipped in spring) is shifted forward by
      the size of the gap (02:30 -> 03:30 for a one-hour change), keeping spacing.
    """
    naive = pd.Series(pd.DatetimeIndex(naive)).reset_index(drop=True)
    n = len(naive)
    if n == 0:
        return pd.Series([], dtype="datetime64[us, UTC]")
    ok = naive.notna().to_numpy()
    dst = naive.dt.tz_localize(tz, ambiguous=np.ones(n, bool), nonexistent="NaT")
    std = naive.dt.tz_localize(tz, ambiguous=np.zeros(n, bool), nonexistent="NaT")
    dst = dst.dt.tz_convert("UTC")
    std = std.dt.tz_convert("UTC")
    out = dst.copy()
    ambiguous = (ok & dst.notna() & (dst != std)).to_numpy()
    if ambiguous.any():
        second = _second_pass(naive, np.asarray(row), np.asarray(group), ambiguous)
        idx = np.flatnonzero(ambiguous)[second]
        out.iloc[idx] = std.iloc[idx]
    missing = ok & dst.isna().to_numpy()
    if missing.any():
        before = naive[missing].dt.tz_localize(
            tz, ambiguous="NaT", nonexistent="shift_backward"
        )
        offset = before.dt.tz_localize(None) - before.dt.tz_convert(None)
        out[missing] = (naive[missing] - offset).dt.tz_localize("UTC")
    return out.astype("datetime64[us, UTC]")


def _second_pass(
    naive: pd.Series, row: np.ndarray, group: np.ndarray, ambiguous: np.ndarray
) -> np.ndarray:
    """For the ambiguous rows: True where the row is in the second (standard) pass."""
    idx = np.flatnonzero(ambiguous)
    t = naive.iloc[idx].to_numpy()
    day = naive.iloc[idx].dt.floor("D").to_numpy()
    g = group[idx]
    r = row[idx]
    result = np.zeros(len(idx), bool)
    all_t = naive.to_numpy()
    for key in np.unique(g):
        sel_g = group == key
        order_all = np.argsort(row[sel_g & np.asarray(naive.notna())], kind="stable")
        tt = all_t[sel_g & np.asarray(naive.notna())][order_all]
        steps = np.diff(tt.astype("datetime64[us]").astype(np.int64))
        newest_first = (steps < 0).sum() > (steps > 0).sum()
        for d in np.unique(day[g == key]):
            k = np.flatnonzero((g == key) & (day == d))
            o = k[np.argsort(r[k], kind="stable")]
            if newest_first:
                o = o[::-1]
            times = t[o].astype("datetime64[us]").astype(np.int64)
            running = np.maximum.accumulate(times)
            back = np.r_[False, times[1:] < running[:-1]]
            result[o] = np.logical_or.accumulate(back)
    return result
