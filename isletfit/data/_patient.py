"""`PatientData`: one patient's CGM readings and treatment events as host-side arrays.

Every ``*_min`` array counts minutes of elapsed (physical) time since
``PatientData.reference_time``, the local midnight before the first CGM reading. These
are numpy arrays on the host, not JAX types: the model and the fits take what they need
and move it to the device (see `isletfit.data.resample` and `isletfit.data.stack`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from .._errors import InputError

__all__ = [
    "BasalSegments",
    "Boluses",
    "CGMReadings",
    "Carbs",
    "LongActingDoses",
    "PatientData",
    "SMBGReadings",
]

_DTYPES: dict[str, Any] = {
    "time_min": np.float64,
    "glucose_mg_dl": np.float64,
    "censored": np.int8,
    "units": np.float64,
    "rate_u_per_h": np.float64,
    "grams": np.float64,
    "row": np.int64,
    "source": np.int32,
}


class _Arrays:
    """Shared mechanics: dtypes, read-only arrays, equal lengths, sorted times."""

    _amount: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        n = None
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "timestamp":
                value = pd.DatetimeIndex(value)
            else:
                value = np.array(value, dtype=_DTYPES[f.name])
                if value.ndim != 1:
                    raise InputError(
                        "must be one-dimensional",
                        field=f"{type(self).__name__}.{f.name}",
                        expected="a 1-D array",
                    )
                value.setflags(write=False)
            if n is None:
                n = len(value)
            elif len(value) != n:
                raise InputError(
                    f"has length {len(value)}, the other arrays {n}",
                    field=f"{type(self).__name__}.{f.name}",
                    expected="arrays of equal length",
                )
            object.__setattr__(self, f.name, value)
        t = self.time_min  # type: ignore[attr-defined]
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0):
            raise InputError(
                "must be finite and sorted ascending",
                field=f"{type(self).__name__}.time_min",
                expected="finite times in ascending order [min]",
            )

    def __len__(self) -> int:
        return len(self.time_min)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)})"

    @classmethod
    def empty(cls) -> Self:
        """An empty set of records (every array of length 0)."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == "timestamp":
                kwargs[f.name] = pd.DatetimeIndex([])
            else:
                kwargs[f.name] = np.zeros(0, dtype=_DTYPES[f.name])
        return cls(**kwargs)

    def take(self, index: Any) -> Self:
        """A subset of the records (a boolean mask or sorted integer indices)."""
        kwargs = {
            f.name: getattr(self, f.name)[index]
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }
        return type(self)(**kwargs)

    @property
    def amount(self) -> np.ndarray:
        """The amount array of an event set (units, grams or rate); see the class."""
        if self._amount is None:
            raise AttributeError(f"{type(self).__name__} has no amount")
        return getattr(self, self._amount)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class CGMReadings(_Arrays):
    """Continuous-glucose-monitor readings, sorted by time.

    Attributes:
        time_min: Reading times [min] since `PatientData.reference_time` (float64).
        timestamp: The same times as a `pandas.DatetimeIndex`; tz-aware when the source
            carried offsets or a `tz` was given, naive local time otherwise.
        glucose_mg_dl: Glucose [mg/dL] (float64). A censored reading holds the device
            limit it was censored at.
        censored: -1 below the device's low limit ('Low'), +1 above its high limit
            ('High'), 0 for an exact reading (int8).
        row: 1-based line number in the source file (int64).
        source: Index into `PatientData.sources` (int32).
    """

    time_min: np.ndarray
    timestamp: pd.DatetimeIndex
    glucose_mg_dl: np.ndarray
    censored: np.ndarray
    row: np.ndarray
    source: np.ndarray
    _amount: ClassVar[str | None] = "glucose_mg_dl"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class SMBGReadings(_Arrays):
    """Fingerstick (self-monitored, meter) glucose readings, sorted by time.

    Attributes:
        time_min: Reading times [min] since `PatientData.reference_time`.
        timestamp: The same times as a `pandas.DatetimeIndex`.
        glucose_mg_dl: Glucose [mg/dL].
        row: 1-based line number in the source file.
        source: Index into `PatientData.sources`.
    """

    time_min: np.ndarray
    timestamp: pd.DatetimeIndex
    glucose_mg_dl: np.ndarray
    row: np.ndarray
    source: np.ndarray
    _amount: ClassVar[str | None] = "glucose_mg_dl"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class Boluses(_Arrays):
    """Rapid-acting insulin doses, instantaneous, sorted by time.

    Extended (square-wave) boluses are split into equal doses every 5 min over their
    duration by the readers, so that every dose here is instantaneous.

    Attributes:
        time_min: Dose times [min] since `PatientData.reference_time`.
        units: Dose [U].
        row: 1-based line number in the source file.
        source: Index into `PatientData.sources`.
    """

    time_min: np.ndarray
    units: np.ndarray
    row: np.ndarray
    source: np.ndarray
    _amount: ClassVar[str | None] = "units"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class LongActingDoses(_Arrays):
    """Injected long-acting (basal) insulin doses, e.g. glargine, sorted by time.

    Kept apart from `Boluses` and not converted to a basal rate: how a long-acting dose
    is absorbed is the model's business.

    Attributes:
        time_min: Injection times [min] since `PatientData.reference_time`.
        units: Dose [U].
        row: 1-based line number in the source file.
        source: Index into `PatientData.sources`.
    """

    time_min: np.ndarray
    units: np.ndarray
    row: np.ndarray
    source: np.ndarray
    _amount: ClassVar[str | None] = "units"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class BasalSegments(_Arrays):
    """Basal insulin as a piecewise-constant rate.

    Segment ``i`` runs from ``time_min[i]`` to ``time_min[i + 1]`` (the last one to the
    end of the record) at ``rate_u_per_h[i]``. A NaN rate means unknown. Consecutive
    segments always differ in rate.

    Temp basals (rate plus duration): when a temp basal ends before the next basal
    record, the rate returns to the last scheduled rate if one is known, otherwise a
    segment of unknown rate (NaN) starts at its end. A record that starts before a
    running temp basal ends replaces it.

    Attributes:
        time_min: Segment start times [min] since `PatientData.reference_time`.
        rate_u_per_h: Rate from that time on [U/h]; NaN = unknown.
        row: 1-based line number of the record that set the segment.
        source: Index into `PatientData.sources`.
    """

    time_min: np.ndarray
    rate_u_per_h: np.ndarray
    row: np.ndarray
    source: np.ndarray
    _amount: ClassVar[str | None] = "rate_u_per_h"

    def rate_at(self, time_min: np.ndarray | float) -> np.ndarray:
        """The basal rate in effect at the given times [U/h] (NaN before the first).

        Args:
            time_min: Times [min] since `PatientData.reference_time`.

        Returns:
            The rates [U/h], same shape as `time_min`.
        """
        t = np.asarray(time_min, dtype=np.float64)
        i = np.searchsorted(self.time_min, t, side="right") - 1
        out = np.where(i >= 0, self.rate_u_per_h[np.clip(i, 0, None)], np.nan)
        return out if len(self) else np.full(t.shape, np.nan)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class Carbs(_Arrays):
    """Carbohydrate intake, sorted by time.

    Attributes:
        time_min: Meal times [min] since `PatientData.reference_time`.
        grams: Carbohydrate [g].
        row: 1-based line number in the source file.
        source: Index into `PatientData.sources`.
    """

    time_min: np.ndarray
    grams: np.ndarray
    row: np.ndarray
    source: np.ndarray
    _amount: ClassVar[str | None] = "grams"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class PatientData:
    """One patient's CGM record and treatments, read from one or more files.

    All ``time_min`` arrays count elapsed minutes since `reference_time`, the local
    midnight of the day of the first CGM reading, so that ``time_min % 1440`` is the
    local clock time of day [min] (after a daylight-saving change it differs from the
    wall clock by the change, because `time_min` is physical time).

    Attributes:
        patient_id: The patient's id (a `patient_id` column, else the file name without
            its extension).
        reference_time: t = 0 of every ``*_min`` array (tz-aware when `timezone`
            is set).
        timezone: IANA zone name (given as ``tz=``), a fixed offset such as
            ``'UTC+01:00'`` (the first reading's offset, when the file had offsets
            but no zone was given), or None (naive local time).
        format: The reader's name (several joined by ``+`` for merged files).
        sources: The files read; every record's ``source`` indexes this tuple.
        cgm: CGM readings.
        smbg: Fingerstick readings (may be empty).
        boluses: Rapid-acting insulin doses (may be empty).
        basal: Basal rate segments (may be empty).
        carbs: Carbohydrate intake (may be empty).
        long_acting: Long-acting insulin injections (may be empty).
        counts: Provenance: ``rows_read``, per-stream counts, ``duplicates_dropped``,
            ``skipped_rows`` and ``skipped_<reason>``, ``ignored_<what>``.
    """

    patient_id: str
    reference_time: pd.Timestamp
    timezone: str | None
    format: str
    sources: tuple[str, ...]
    cgm: CGMReadings
    smbg: SMBGReadings = dataclasses.field(default_factory=SMBGReadings.empty)
    boluses: Boluses = dataclasses.field(default_factory=Boluses.empty)
    basal: BasalSegments = dataclasses.field(default_factory=BasalSegments.empty)
    carbs: Carbs = dataclasses.field(default_factory=Carbs.empty)
    long_acting: LongActingDoses = dataclasses.field(
        default_factory=LongActingDoses.empty
    )
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "counts", dict(self.counts))
        object.__setattr__(self, "reference_time", pd.Timestamp(self.reference_time))

    def __repr__(self) -> str:
        return (
            f"PatientData(patient_id={self.patient_id!r}, format={self.format!r}, "
            f"reference_time={self.reference_time}, timezone={self.timezone!r}, "
            f"n_days={self.n_days}, cgm={len(self.cgm)}, smbg={len(self.smbg)}, "
            f"boluses={len(self.boluses)}, basal={len(self.basal)}, "
            f"carbs={len(self.carbs)}, long_acting={len(self.long_acting)})"
        )

    @property
    def n_days(self) -> int:
        """Number of calendar days from the first to the last CGM reading, inclusive."""
        if not len(self.cgm):
            return 0
        day = np.floor(self.cgm.time_min / 1440.0)
        return int(day[-1] - day[0]) + 1

    def days(self) -> np.ndarray:
        """Indices of the days that hold at least one CGM reading.

        Day ``d`` covers ``[1440 d, 1440 (d + 1))`` minutes; ``window(1440 * d,
        1440 * (d + 1))`` gives its data.

        Returns:
            Sorted unique day indices (int64).
        """
        return np.unique(np.floor(self.cgm.time_min / 1440.0)).astype(np.int64)

    def window(self, start_min: float, end_min: float) -> PatientData:
        """The data with ``start_min <= time_min < end_min`` [min].

        Times keep the same `reference_time`. The basal segment in effect at
        `start_min` is carried in as a segment starting at `start_min`.

        Args:
            start_min: Window start [min] since `reference_time`.
            end_min: Window end [min] (exclusive).

        Returns:
            A new `PatientData` with the same metadata and the selected records.
        """

        def pick(ev: Any) -> Any:
            return ev.take((ev.time_min >= start_min) & (ev.time_min < end_min))

        basal = pick(self.basal)
        before = np.flatnonzero(self.basal.time_min < start_min)
        if len(before) and (not len(basal) or basal.time_min[0] > start_min):
            i = before[-1]
            basal = BasalSegments(
                time_min=np.r_[start_min, basal.time_min],
                rate_u_per_h=np.r_[self.basal.rate_u_per_h[i], basal.rate_u_per_h],
                row=np.r_[self.basal.row[i], basal.row],
                source=np.r_[self.basal.source[i], basal.source],
            )
        return dataclasses.replace(
            self,
            cgm=pick(self.cgm),
            smbg=pick(self.smbg),
            boluses=pick(self.boluses),
            basal=basal,
            carbs=pick(self.carbs),
            long_acting=pick(self.long_acting),
        )
