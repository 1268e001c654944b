"""CGM metrics per day, window or visit block, as a table (one row per group).

Times are minutes since local midnight of day 0 (``PatientData.reference_time``), so the
calendar day of a reading is ``floor(time_min / 1440)``. A group is a half-open interval
``[start_min, end_min)``; its ``percent_data`` is judged against the whole interval
(``(end_min - start_min) / step_min`` expected readings), so a partly covered first or
last day shows less than 100 %.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from .._errors import InputError
from ._cgm import cgm_metrics

__all__ = ["group_metrics", "infer_step_min", "metrics_table"]

By = Literal["all", "day", "window", "visit"]
_MIN_PER_DAY = 1440.0


def infer_step_min(time_min, *, default: float = 5.0) -> float:
    """The sampling interval of a CGM record [min]: the median spacing, to 0.1 min.

    Args:
        time_min: Reading times [min], sorted.
        default: Returned when there are fewer than two distinct times [min].

    Returns:
        The interval [min] (e.g. 5.0 for Dexcom, 15.0 for Libre 1/2).
    """
    t = np.asarray(time_min, dtype=float)
    d = np.diff(t[np.isfinite(t)])
    d = d[d > 0]
    if d.size == 0:
        return float(default)
    return max(round(float(np.median(d)), 1), 0.1)


def _windows(
    t: np.ndarray,
    by: str,
    windows,
    visits,
    block_days: float,
    anchor: str,
    step: float,
    reference_time,
) -> list[tuple[str, float, float]]:
    if by == "all":
        if t.size == 0:
            return [("all", 0.0, 0.0)]
        return [("all", float(t[0]), float(t[-1] + step))]
    if by == "day":
        out = []
        for d in np.unique(np.floor(t / _MIN_PER_DAY)).astype(int):
            if reference_time is not None:
                label = (reference_time.date() + _dt.timedelta(days=int(d))).isoformat()
            else:
                label = f"day {d}"
            out.append((label, d * _MIN_PER_DAY, (d + 1) * _MIN_PER_DAY))
        return out
    if by == "window":
        if windows is None:
            raise InputError(
                "by='window' needs windows",
                field="windows",
                expected="a sequence of (start_min, end_min) pairs or a mapping "
                "name -> (start_min, end_min)",
            )
        items = (
            list(windows.items())
            if isinstance(windows, Mapping)
            else [(f"window {i}", w) for i, w in enumerate(windows)]
        )
        out = []
        for name, w in items:
            try:
                start, end = (float(x) for x in w)
            except (TypeError, ValueError):
                raise InputError(
                    f"window {name!r} is {w!r}",
                    field="windows",
                    expected="(start_min, end_min) with start_min < end_min",
                ) from None
            if not start < end:
                raise InputError(
                    f"window {name!r} has start {start} >= end {end}",
                    field="windows",
                    expected="start_min < end_min",
                )
            out.append((str(name), start, end))
        return out
    if by == "visit":
        if visits is None or len(visits) == 0:
            raise InputError(
                "by='visit' needs visit day numbers",
                field="visits",
                expected="day numbers counted from day 0 of the record, e.g. 0, 30, 90",
            )
        if not block_days > 0:
            raise InputError(
                f"block_days must be positive, got {block_days!r}",
                field="block_days",
                expected="a number of days, e.g. 14",
            )
        out = []
        for v in visits:
            v = float(v)
            if anchor == "start":
                start = v * _MIN_PER_DAY
            elif anchor == "end":
                start = (v + 1.0 - block_days) * _MIN_PER_DAY
            else:
                raise InputError(
                    f"unknown anchor {anchor!r}",
                    field="anchor",
                    expected="'start' or 'end'",
                )
            out.append((f"visit day {v:g}", start, start + block_days * _MIN_PER_DAY))
        return out
    raise InputError(
        f"unknown grouping {by!r}",
        field="by",
        expected="'all', 'day', 'window' or 'visit'",
    )


def _as_time(reference_time, minutes: float):
    if reference_time is None:
        return minutes
    import pandas as pd

    return reference_time + pd.Timedelta(minutes=minutes)


def group_metrics(
    time_min,
    glucose_mg_dl,
    mask=None,
    *,
    patient_id: str = "",
    reference_time=None,
    censored=None,
    by: By = "all",
    windows: Sequence[tuple[float, float]]
    | Mapping[str, tuple[float, float]]
    | None = None,
    visits: Sequence[float] | None = None,
    block_days: float = 14.0,
    anchor: Literal["start", "end"] = "start",
    step_min: float | None = None,
    conga_hours: float = 1.0,
):
    r"""CGM metrics of one patient's arrays, one row per day, window or visit block.

    Groups (all half-open, ``start_min <= time_min < end_min``):

    * ``by="all"``: the whole record, from the first reading to the last plus one step;
    * ``by="day"``: each local calendar day ``d = floor(time_min / 1440)`` holding a
      reading, ``[1440 d, 1440 (d + 1))``; labelled with its date when
      ``reference_time`` is known, else ``"day d"``;
    * ``by="window"``: the given ``(start_min, end_min)`` windows;
    * ``by="visit"``: for each visit day number ``v`` (counted like the days above, from
      day 0 of the record) a block of ``block_days`` days: with ``anchor="start"``
      (default) the visit day and the following days, ``[v, v + block_days)`` days; with
      ``anchor="end"`` the block ending with (and including) the visit day,
      ``[v + 1 - block_days, v + 1)`` days.

    Every group's metrics are those of [`cgm_metrics`][] with ``span_min`` = the group's
    length, so ``percent_data`` and ``sufficient`` (≥ 70 % of expected readings over
    ≥ 14 days) are judged against the whole group.

    Args:
        time_min: Reading times [min] since local midnight of day 0, shape ``[times]``.
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]``; censored readings at the
            device limit.
        mask: ``True`` where observed (``None`` = all finite readings).
        patient_id: Written to the ``patient_id`` column.
        reference_time: The timestamp of t = 0 (a `pandas.Timestamp` at local
            midnight); when given, ``start``/``end`` are timestamps and days are
            labelled by date, else they are minutes.
        censored: Optional ``[times]`` int array, -1 = ``Low``, +1 = ``High``, 0 =
            exact; counted into ``n_censored_low`` / ``n_censored_high``.
        by: ``"all"``, ``"day"``, ``"window"`` or ``"visit"``.
        windows: For ``by="window"``: ``(start_min, end_min)`` pairs [min], or a mapping
            name → pair.
        visits: For ``by="visit"``: visit day numbers [d].
        block_days: Length of a visit block [d].
        anchor: Whether a visit block starts at (``"start"``) or ends with
            (``"end"``) the visit day.
        step_min: The sampling interval [min]; inferred from the times (median
            spacing) when ``None``.
        conga_hours: CONGA lag [h].

    Returns:
        A `pandas.DataFrame` with columns ``patient_id, group, start, end, n_readings,
        percent_data, days, sufficient, n_censored_low, n_censored_high`` followed by
        the metrics of [`cgm_metrics`][].

    References:
        Battelino et al., Diabetes Care 2019;42:1593 (14-day periods, ≥ 70 % data).
    """
    import pandas as pd

    t = np.asarray(time_min, dtype=float)
    g = np.asarray(glucose_mg_dl, dtype=float)
    if t.ndim != 1 or g.shape != t.shape:
        raise InputError(
            f"time_min has shape {t.shape} and glucose_mg_dl {g.shape}",
            field="glucose_mg_dl",
            expected="two 1-D arrays of the same length",
        )
    m = (
        np.isfinite(g)
        if mask is None
        else np.asarray(mask, dtype=bool) & np.isfinite(g)
    )
    if m.shape != t.shape:
        raise InputError(
            f"mask has shape {m.shape} but time_min has {t.shape}",
            field="mask",
            expected=f"a boolean array of shape {t.shape}",
        )
    c = np.zeros(t.shape, dtype=np.int8) if censored is None else np.asarray(censored)
    if c.shape != t.shape:
        raise InputError(
            f"censored has shape {c.shape} but time_min has {t.shape}",
            field="censored",
            expected="-1/0/+1 per reading",
        )
    if t.size and (not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0)):
        order = np.argsort(t, kind="stable")
        t, g, m, c = t[order], g[order], m[order], c[order]
    step = infer_step_min(t[m]) if step_min is None else float(step_min)
    if reference_time is not None:
        reference_time = pd.Timestamp(reference_time)

    rows = []
    for label, start, end in _windows(
        t, by, windows, visits, block_days, anchor, step, reference_time
    ):
        lo, hi = np.searchsorted(t, [start, end], side="left")
        metrics = cgm_metrics(
            g[lo:hi],
            m[lo:hi],
            time_min=t[lo:hi],
            step_min=step,
            span_min=end - start,
            conga_hours=conga_hours,
        )
        cc = c[lo:hi][m[lo:hi]]
        rows.append(
            {
                "patient_id": patient_id,
                "group": label,
                "start": _as_time(reference_time, start),
                "end": _as_time(reference_time, end),
                "n_readings": int(metrics.pop("n_readings")),
                "percent_data": metrics.pop("percent_data"),
                "days": metrics.pop("days"),
                "sufficient": metrics.pop("sufficient"),
                "n_censored_low": int(np.sum(cc < 0)),
                "n_censored_high": int(np.sum(cc > 0)),
                **metrics,
            }
        )
    return pd.DataFrame(rows)


def metrics_table(
    patients: Any | Iterable[Any],
    *,
    by: By = "all",
    windows: Sequence[tuple[float, float]]
    | Mapping[str, tuple[float, float]]
    | None = None,
    visits: Sequence[float] | None = None,
    block_days: float = 14.0,
    anchor: Literal["start", "end"] = "start",
    step_min: float | None = None,
    conga_hours: float = 1.0,
):
    r"""CGM metrics table of one or more patients, one row per patient and group.

    Accepts a `isletfit.data.PatientData` (or any object with ``patient_id``,
    ``reference_time`` and ``cgm.time_min``, ``cgm.glucose_mg_dl``, ``cgm.censored``) or
    an iterable of them. Censored readings are held at the device limit by the readers
    and count there. Grouping as in [`group_metrics`][]; the sampling interval is
    inferred per patient unless ``step_min`` is given.

    Args:
        patients: One patient or an iterable of patients.
        by: ``"all"``, ``"day"``, ``"window"`` or ``"visit"``.
        windows: For ``by="window"``: ``(start_min, end_min)`` pairs [min] or a mapping.
        visits: For ``by="visit"``: visit day numbers [d], counted from day 0 (the day
            of ``reference_time``).
        block_days: Length of a visit block [d].
        anchor: ``"start"``: the block starts on the visit day; ``"end"``: it ends with
            the visit day.
        step_min: Sampling interval [min]; ``None`` = inferred.
        conga_hours: CONGA lag [h].

    Returns:
        A `pandas.DataFrame`, the rows of all patients stacked (columns as in
        [`group_metrics`][]).

    References:
        Battelino et al., Diabetes Care 2019;42:1593.
    """
    import pandas as pd

    items = [patients] if hasattr(patients, "cgm") else list(patients)
    frames = []
    for p in items:
        if not hasattr(p, "cgm"):
            raise InputError(
                f"got {type(p).__name__}, not a patient record",
                field="patients",
                expected="PatientData (with .patient_id, .reference_time and .cgm)",
            )
        frames.append(
            group_metrics(
                p.cgm.time_min,
                p.cgm.glucose_mg_dl,
                patient_id=str(p.patient_id),
                reference_time=getattr(p, "reference_time", None),
                censored=getattr(p.cgm, "censored", None),
                by=by,
                windows=windows,
                visits=visits,
                block_days=block_days,
                anchor=anchor,
                step_min=step_min,
                conga_hours=conga_hours,
            )
        )
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)
