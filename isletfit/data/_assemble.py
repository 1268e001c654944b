"""From parsed `RawRecords` to one `PatientData`: times, merging, duplicates, basal."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pandas as pd

from .._errors import DataWarning, InputError
from ._patient import (
    BasalSegments,
    Boluses,
    Carbs,
    CGMReadings,
    LongActingDoses,
    PatientData,
    SMBGReadings,
)
from ._raw import STREAMS, RawRecords
from ._time import fixed_zone, localize, zone_name

_MINUTE = pd.Timedelta(minutes=1)


def assemble(
    parts: list[tuple[RawRecords, int]],
    *,
    patient_id: str,
    sources: tuple[str, ...],
    format_name: str,
    tz: dt.tzinfo | None,
) -> PatientData:
    """Merge one patient's parsed records (with their source index) into `PatientData`.

    Naive times are localised in `tz` (see `localize` for the DST rule); instants are
    shown in `tz`, else in the fixed UTC offset of the first CGM reading. Exact
    duplicates (same time, same values) are dropped, keeping the first source row.
    """
    aware = {rec.aware for rec, _ in parts}
    if tz is None and len(aware) > 1:
        naive_src = next(sources[s] for rec, s in parts if not rec.aware)
        raise InputError(
            "cannot merge files with naive local times and files with UTC offsets "
            "without a time zone",
            file=naive_src,
            field="tz",
            expected="tz='Area/City' (the patient's time zone)",
        )
    is_aware = tz is not None or aware == {True}
    tables = {}
    for name in STREAMS:
        frames = []
        for rec, src in parts:
            df = rec.streams[name].copy()
            df["source"] = np.int32(src)
            if not len(df):
                dtype = "datetime64[us, UTC]" if is_aware else "datetime64[us]"
                df["time"] = pd.Series([], dtype=dtype)
            if len(df) and tz is not None and not rec.aware:
                df["time"] = localize(
                    df["time"], df["row"].to_numpy(), df["seq"].to_numpy(), tz
                ).to_numpy()
            if len(df) and is_aware:
                df["time"] = pd.Series(pd.DatetimeIndex(df["time"])).dt.tz_convert(
                    "UTC"
                )
            frames.append(df[df["time"].notna()])
        tables[name] = _sorted(pd.concat(frames, ignore_index=True))
    cgm = tables["cgm"]
    if not len(cgm):
        raise InputError(
            "no CGM readings",
            file=sources[0],
            field="glucose",
            expected="at least one CGM glucose reading",
        )
    first = cgm.iloc[int(np.argmin(cgm["time"].to_numpy()))]
    if tz is not None:
        display: dt.tzinfo | None = tz
    elif is_aware:
        display = fixed_zone(first["offset_min"])
    else:
        display = None
    reference = _midnight(pd.Timestamp(first["time"]), display)
    counts: dict[str, int] = {}
    for rec, _ in parts:
        for k, v in rec.counts.items():
            counts[k] = counts.get(k, 0) + int(v)
    dropped = {}
    for name, df in tables.items():
        keys = ["time", *STREAMS[name]]
        dup = df.duplicated(subset=keys, keep="first").to_numpy()
        dropped[name] = int(dup.sum())
        df = df[~dup].reset_index(drop=True)
        df["time_min"] = (df["time"] - reference) / _MINUTE
        tables[name] = df
    total = sum(dropped.values())
    counts["duplicates_dropped"] = total
    if total:
        what = ", ".join(f"{v} {k}" for k, v in dropped.items() if v)
        where = sources[0] if len(sources) == 1 else f"patient {patient_id}"
        warnings.warn(
            f"{where}: {total} exact duplicate records dropped ({what})",
            DataWarning,
            stacklevel=3,
        )
    streams = _build(tables, display)
    for name in STREAMS:
        counts[name] = len(streams[name])
    return PatientData(
        patient_id=patient_id,
        reference_time=reference,
        timezone=zone_name(display) if is_aware else None,
        format=format_name,
        sources=sources,
        counts=counts,
        **streams,
    )


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["time", "source", "row"], kind="stable").reset_index(
        drop=True
    )


def _midnight(first: pd.Timestamp, display: dt.tzinfo | None) -> pd.Timestamp:
    if display is None:
        return first.normalize()
    local = first.tz_convert(display)
    try:
        return local.normalize()
    except (ValueError, OverflowError):  # midnight does not exist there that day
        naive = local.tz_localize(None).normalize()
        return naive.tz_localize(display, nonexistent="shift_forward", ambiguous=True)


def _build(tables: dict[str, pd.DataFrame], display: dt.tzinfo | None) -> dict:
    def common(df: pd.DataFrame) -> dict[str, np.ndarray]:
        return {
            "time_min": df["time_min"].to_numpy(float),
            "row": df["row"].to_numpy(np.int64),
            "source": df["source"].to_numpy(np.int32),
        }

    def stamps(df: pd.DataFrame) -> pd.DatetimeIndex:
        idx = pd.DatetimeIndex(df["time"]).rename(None)
        return idx.tz_convert(display) if idx.tz is not None else idx

    cgm, smbg = tables["cgm"], tables["smbg"]
    return dict(
        cgm=CGMReadings(
            **common(cgm),
            timestamp=stamps(cgm),
            glucose_mg_dl=cgm["glucose_mg_dl"].to_numpy(float),
            censored=cgm["censored"].to_numpy(np.int8),
        ),
        smbg=SMBGReadings(
            **common(smbg),
            timestamp=stamps(smbg),
            glucose_mg_dl=smbg["glucose_mg_dl"].to_numpy(float),
        ),
        boluses=Boluses(
            **common(tables["boluses"]),
            units=tables["boluses"]["units"].to_numpy(float),
        ),
        long_acting=LongActingDoses(
            **common(tables["long_acting"]),
            units=tables["long_acting"]["units"].to_numpy(float),
        ),
        carbs=Carbs(
            **common(tables["carbs"]), grams=tables["carbs"]["grams"].to_numpy(float)
        ),
        basal=_basal(tables["basal"]),
    )


def _basal(df: pd.DataFrame) -> BasalSegments:
    """Piecewise-constant basal segments from rate records (see `BasalSegments`)."""
    t = df["time_min"].to_numpy(float)
    rate = df["rate_u_per_h"].to_numpy(float)
    dur = df["duration_min"].to_numpy(float)
    sched = df["scheduled"].to_numpy(bool)
    row = df["row"].to_numpy(np.int64)
    src = df["source"].to_numpy(np.int32)
    out_t, out_r, out_row, out_src = [], [], [], []
    last_scheduled, scheduled_end = np.nan, np.inf

    def add(time: float, value: float, i: int) -> None:
        out_t.append(time)
        out_r.append(value)
        out_row.append(row[i])
        out_src.append(src[i])

    for i in range(len(t)):
        add(t[i], rate[i], i)
        if sched[i]:
            last_scheduled = rate[i]
            scheduled_end = t[i] + dur[i] if np.isfinite(dur[i]) else np.inf
        if not np.isfinite(dur[i]):
            continue
        end = t[i] + dur[i]
        following = t[i + 1] if i + 1 < len(t) else np.inf
        if end >= following:
            continue
        if sched[i] or scheduled_end <= end:
            add(end, np.nan, i)  # nothing known after this record
        else:  # a temp basal ends: back to the scheduled rate while it runs
            add(end, last_scheduled, i)
            if scheduled_end < following:
                add(scheduled_end, np.nan, i)
    ot = np.asarray(out_t, float)
    orate = np.asarray(out_r, float)
    # at equal start times the later record wins; then merge equal consecutive rates
    keep = np.r_[ot[1:] != ot[:-1], True] if len(ot) else np.zeros(0, bool)
    ot, orate = ot[keep], orate[keep]
    orow = np.asarray(out_row, np.int64)[keep]
    osrc = np.asarray(out_src, np.int32)[keep]
    equal = (orate[1:] == orate[:-1]) | (np.isnan(orate[1:]) & np.isnan(orate[:-1]))
    keep = np.r_[True, ~equal] if len(orate) else np.zeros(0, bool)
    return BasalSegments(
        time_min=ot[keep], rate_u_per_h=orate[keep], row=orow[keep], source=osrc[keep]
    )
