"""Regular time grids for CGM readings, and padding patients into batches for `vmap`.

`resample` puts one patient's readings on a regular grid; `stack` pads several grids
into ``[patients, times]`` arrays with masks and `stack_events` does the same for event
arrays (boluses, carbs, basal segments). The results are JAX PyTrees (registered
dataclasses whose array fields are leaves), so ``jax.vmap(f)(stacked)`` maps over
patients directly. Pad values are finite and masked out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .._errors import InputError
from ._patient import CGMReadings, PatientData


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """One patient's CGM readings on a regular time grid.

    Slot ``k`` is centred at ``time_min[k] = start + k * step_min`` and holds the
    reading nearest its centre within ``±step_min / 2`` (each reading fills at most one
    slot).

    Attributes:
        time_min: Slot centres [min] since `PatientData.reference_time`, shape
            ``(times,)``.
        glucose_mg_dl: Glucose [mg/dL] in each slot; unobserved slots hold the last
            observed value before them (the first observed one at the start, 0 if
            none), always finite.
        mask: True where the slot holds a reading.
        censored: -1/0/+1 as in `CGMReadings` (0 where unobserved), int8.
        reading_time_min: The reading's own time [min] (the slot centre where
            unobserved).
        step_min: Grid step [min].
        patient_id: The patient's id, if known.
    """

    time_min: np.ndarray
    glucose_mg_dl: np.ndarray
    mask: np.ndarray
    censored: np.ndarray
    reading_time_min: np.ndarray
    step_min: float = dataclasses.field(metadata={"static": True}, default=5.0)
    patient_id: str | None = dataclasses.field(metadata={"static": True}, default=None)

    def __len__(self) -> int:
        return len(self.time_min)


@dataclasses.dataclass(frozen=True, eq=False)
class StackedGrid:
    """Several patients' grids padded to one length, for `jax.vmap` over patients.

    Attributes:
        time_min: Slot centres [min], shape ``(patients, times)``; padding continues
            each patient's grid past its end.
        glucose_mg_dl: Glucose [mg/dL], ``(patients, times)``; padding repeats the
            last value.
        mask: True where a slot holds a reading (False on padding).
        censored: -1/0/+1 (0 on padding), int8.
        reading_time_min: Reading times [min] (slot centres where unobserved).
        n_times: Number of real (unpadded) slots per patient, shape ``(patients,)``.
        step_min: Grid step [min].
        patient_ids: The patients' ids, in order.
    """

    time_min: np.ndarray
    glucose_mg_dl: np.ndarray
    mask: np.ndarray
    censored: np.ndarray
    reading_time_min: np.ndarray
    n_times: np.ndarray
    step_min: float = dataclasses.field(metadata={"static": True}, default=5.0)
    patient_ids: tuple[str | None, ...] = dataclasses.field(
        metadata={"static": True}, default=()
    )


@dataclasses.dataclass(frozen=True, eq=False)
class StackedEvents:
    """Several patients' event arrays padded to one length, for `jax.vmap`.

    Attributes:
        time_min: Event times [min], ``(patients, events)``; padding holds `pad_time`
            (after any simulation end).
        amount: Amounts (U, g or U/h, as the input), ``(patients, events)``; 0 on
            padding.
        mask: True for real events.
        count: Number of real events per patient, ``(patients,)``.
        pad_time: The time given to padding [min].
    """

    time_min: np.ndarray
    amount: np.ndarray
    mask: np.ndarray
    count: np.ndarray
    pad_time: float = dataclasses.field(metadata={"static": True}, default=np.inf)


for _cls in (Grid, StackedGrid, StackedEvents):
    _meta = [f.name for f in dataclasses.fields(_cls) if f.metadata.get("static")]
    _data = [f.name for f in dataclasses.fields(_cls) if not f.metadata.get("static")]
    jax.tree_util.register_dataclass(_cls, data_fields=_data, meta_fields=_meta)


def resample(
    cgm_or_patient: CGMReadings | PatientData,
    *,
    step_min: float = 5.0,
    start_min: float | None = None,
    end_min: float | None = None,
) -> Grid:
    """Put CGM readings on a regular grid (nearest reading within half a step).

    Args:
        cgm_or_patient: A patient's `PatientData` or its `CGMReadings`.
        step_min: Grid step [min].
        start_min: First slot centre [min]; default: the first reading rounded down
            to a multiple of `step_min` (so slots sit on clock times).
        end_min: Last slot centre [min] (inclusive when on the grid); default: the
            last reading rounded up to a multiple of `step_min`.

    Returns:
        The `Grid`.

    Raises:
        InputError: A non-positive step, an empty record without start and end, or
            ``end_min < start_min``.
    """
    if isinstance(cgm_or_patient, PatientData):
        cgm, pid = cgm_or_patient.cgm, cgm_or_patient.patient_id
    else:
        cgm, pid = cgm_or_patient, None
    step = float(step_min)
    if not np.isfinite(step) or step <= 0:
        raise InputError(
            f"step_min={step_min} is not positive", field="step_min", expected="> 0"
        )
    t = np.asarray(cgm.time_min, dtype=np.float64)
    if len(t) == 0 and (start_min is None or end_min is None):
        raise InputError(
            "no CGM readings to resample",
            field="cgm",
            expected="readings, or both start_min and end_min",
        )
    start = float(np.floor(t[0] / step) * step) if start_min is None else start_min
    end = float(np.ceil(t[-1] / step) * step) if end_min is None else end_min
    if not (np.isfinite(start) and np.isfinite(end)) or end < start:
        raise InputError(
            f"end_min={end} is before start_min={start}",
            field="end_min",
            expected="end_min >= start_min",
        )
    n = int(np.floor((end - start) / step + 1e-9)) + 1
    centres = start + step * np.arange(n)
    k = np.floor((t - start) / step + 0.5).astype(np.int64)
    inside = (k >= 0) & (k < n)
    k, idx = k[inside], np.flatnonzero(inside)
    dist = np.abs(t[idx] - (start + step * k))
    order = np.lexsort((dist, k))
    first = np.unique(k[order], return_index=True)[1]
    slot, pick = k[order][first], idx[order][first]
    mask = np.zeros(n, dtype=bool)
    mask[slot] = True
    glucose = np.zeros(n)
    glucose[slot] = np.asarray(cgm.glucose_mg_dl)[pick]
    censored = np.zeros(n, dtype=np.int8)
    censored[slot] = np.asarray(cgm.censored)[pick]
    reading = centres.copy()
    reading[slot] = t[pick]
    if mask.any():
        last = np.maximum.accumulate(np.where(mask, np.arange(n), -1))
        last = np.where(last < 0, np.argmax(mask), last)
        glucose = glucose[last]
    return Grid(
        time_min=centres,
        glucose_mg_dl=glucose,
        mask=mask,
        censored=censored,
        reading_time_min=reading,
        step_min=step,
        patient_id=pid,
    )


def stack(grids: Sequence[Grid]) -> StackedGrid:
    """Pad grids of different lengths into ``[patients, times]`` arrays with masks.

    Args:
        grids: One `Grid` per patient, all with the same `step_min`.

    Returns:
        The `StackedGrid`; padding is finite (times continue the grid, glucose
        repeats the last value) and masked out.

    Raises:
        InputError: No grids, or grids with different steps.
    """
    grids = list(grids)
    if not grids:
        raise InputError("no grids to stack", field="grids", expected="one or more")
    steps = {g.step_min for g in grids}
    if len(steps) > 1:
        raise InputError(
            f"grids have different steps {sorted(steps)}",
            field="step_min",
            expected="the same step_min for every patient",
        )
    step = steps.pop()
    width = max(len(g) for g in grids)
    n_times = np.array([len(g) for g in grids], dtype=np.int64)

    def pad(values: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
        out = np.empty(width, dtype=dtype)
        out[: len(values)] = values
        out[len(values) :] = fill
        return out

    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "g", "m", "c", "r")}
    for g in grids:
        n = len(g)
        last_t = g.time_min[-1] if n else 0.0
        extra = last_t + step * np.arange(1, width - n + 1)
        rows["t"].append(np.r_[g.time_min, extra])
        rows["g"].append(pad(g.glucose_mg_dl, g.glucose_mg_dl[-1] if n else 0.0, float))
        rows["m"].append(pad(g.mask, False, bool))
        rows["c"].append(pad(g.censored, 0, np.int8))
        rows["r"].append(np.r_[g.reading_time_min, extra])
    return StackedGrid(
        time_min=np.stack(rows["t"]),
        glucose_mg_dl=np.stack(rows["g"]),
        mask=np.stack(rows["m"]),
        censored=np.stack(rows["c"]),
        reading_time_min=np.stack(rows["r"]),
        n_times=n_times,
        step_min=step,
        patient_ids=tuple(g.patient_id for g in grids),
    )


def stack_events(
    events: Sequence[Any], *, pad_time: float = np.inf, length: int | None = None
) -> StackedEvents:
    """Pad per-patient event arrays into ``[patients, events]`` arrays with masks.

    Args:
        events: One item per patient: an event set (`Boluses`, `Carbs`,
            `BasalSegments`, `LongActingDoses`, ...: its ``time_min`` and
            ``amount``) or a ``(time_min, amount)`` pair of 1-D arrays.
        pad_time: Time [min] given to padding: +inf (never happens) by default, or
            any value past the end of the simulation.
        length: Pad to this many events (default: the longest patient's count).

    Returns:
        The `StackedEvents` (padding: time `pad_time`, amount 0, mask False).

    Raises:
        InputError: No patients, mismatched time/amount lengths, or a `length`
            shorter than a patient's event count.
    """
    events = list(events)
    if not events:
        raise InputError("no event arrays", field="events", expected="one or more")
    pairs = []
    for i, e in enumerate(events):
        if isinstance(e, tuple | list):
            t, a = (np.asarray(x, dtype=np.float64) for x in e)
        else:
            t = np.asarray(e.time_min, dtype=np.float64)
            a = np.asarray(e.amount, dtype=np.float64)
        if t.shape != a.shape or t.ndim != 1:
            raise InputError(
                f"patient {i}: time_min {t.shape} and amount {a.shape} differ",
                field="events",
                expected="1-D arrays of equal length",
            )
        pairs.append((t, a))
    count = np.array([len(t) for t, _ in pairs], dtype=np.int64)
    width = int(count.max()) if length is None else int(length)
    if width < count.max():
        raise InputError(
            f"length={length} is shorter than {int(count.max())} events",
            field="length",
            expected=f">= {int(count.max())}",
        )
    time = np.full((len(pairs), width), float(pad_time))
    amount = np.zeros((len(pairs), width))
    mask = np.zeros((len(pairs), width), dtype=bool)
    for i, (t, a) in enumerate(pairs):
        time[i, : len(t)] = t
        amount[i, : len(t)] = a
        mask[i, : len(t)] = True
    return StackedEvents(
        time_min=time, amount=amount, mask=mask, count=count, pad_time=float(pad_time)
    )
