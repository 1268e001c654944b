"""The intermediate tables a format's parser returns, and the shared value checks."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from .._errors import DataWarning, InputError

#: 1 mmol/L of glucose in mg/dL (molar mass 180.16 g/mol).
MG_DL_PER_MMOL_L = 18.016
#: Readings above this are impossible [mg/dL].
MAX_GLUCOSE_MG_DL = 1000.0
#: Plausible calendar range of a CGM record.
EARLIEST = pd.Timestamp("1990-01-01")
LATEST = pd.Timestamp("2100-01-01")

#: Columns of each stream's table besides ``time``, ``offset_min``, ``row``, ``seq``.
STREAMS: dict[str, tuple[str, ...]] = {
    "cgm": ("glucose_mg_dl", "censored"),
    "smbg": ("glucose_mg_dl",),
    "boluses": ("units",),
    "basal": ("rate_u_per_h", "duration_min", "scheduled"),
    "carbs": ("grams",),
    "long_acting": ("units",),
}


def frame(
    time: pd.Series | pd.DatetimeIndex | np.ndarray,
    row: np.ndarray,
    *,
    offset_min: np.ndarray | float = np.nan,
    seq: np.ndarray | int = 0,
    **values: np.ndarray | float | bool,
) -> pd.DataFrame:
    """A stream table for `RawRecords`.

    Columns: ``time`` (naive local, or tz-aware UTC), ``offset_min`` (the local UTC
    offset [min] where known), ``row`` (1-based line), ``seq`` (rows of one `seq`
    group are in chronological file order; used to resolve repeated DST hours) and
    the stream's value columns.
    """
    time = pd.Series(pd.DatetimeIndex(time))
    n = len(time)
    out = pd.DataFrame(
        {
            "time": time,
            "offset_min": np.broadcast_to(np.asarray(offset_min, float), n).copy(),
            "row": np.asarray(row, dtype=np.int64),
            "seq": np.broadcast_to(np.asarray(seq, np.int64), n).copy(),
        }
    )
    for k, v in values.items():
        out[k] = np.broadcast_to(np.asarray(v), n).copy()
    return out


def empty_frame(stream: str, aware: bool) -> pd.DataFrame:
    """An empty table of the given stream."""
    dtype = "datetime64[us, UTC]" if aware else "datetime64[us]"
    cols = {c: np.zeros(0) for c in STREAMS[stream]}
    return frame(pd.Series([], dtype=dtype), np.zeros(0, np.int64), **cols)


@dataclasses.dataclass
class RawRecords:
    """What a `Format` parses out of one file for one patient, before time resolution.

    Each stream is a `pandas.DataFrame` made with `frame` (columns ``time``,
    ``offset_min``, ``row``, ``seq`` and the value columns in `STREAMS`: glucose in
    mg/dL, ``censored`` -1/0/+1, ``units`` [U], ``rate_u_per_h`` [U/h] with
    ``duration_min`` [min] (NaN = until the next basal record) and ``scheduled``
    (a scheduled rate, that a temp basal returns to), ``grams`` [g]).

    Attributes:
        patient_id: The patient's id if the file names one, else None (then the file
            name without its extension is used).
        aware: True when ``time`` holds tz-aware UTC instants, False when it holds
            naive local wall-clock times.
        streams: Tables by stream name (``cgm``, ``smbg``, ``boluses``, ``basal``,
            ``carbs``, ``long_acting``); a missing one is empty.
        counts: Provenance counts (``rows_read``, ``skipped_<reason>``, ...).
    """

    patient_id: str | None
    aware: bool
    streams: dict[str, pd.DataFrame]
    counts: dict[str, int]

    def __post_init__(self) -> None:
        for name in STREAMS:
            if name not in self.streams or self.streams[name] is None:
                self.streams[name] = empty_frame(name, self.aware)


class RowIssues:
    """Collects bad rows of one file; skips a few with a warning, raises on many."""

    def __init__(self, file: str):
        self.file = file
        self.lines: list[np.ndarray] = []
        self.fields: list[str] = []
        self.reasons: list[str] = []
        self.expected: list[str] = []

    def add(
        self,
        bad: np.ndarray | pd.Series,
        line: np.ndarray,
        *,
        field: str,
        reason: str,
        expected: str,
    ) -> np.ndarray:
        """Record the rows where `bad` is True; returns `bad` as a numpy array."""
        bad = np.array(bad, dtype=bool)
        if bad.any():
            self.lines.append(np.asarray(line)[bad])
            self.fields.append(field)
            self.reasons.append(reason)
            self.expected.append(expected)
        return bad

    def finish(self, n_rows: int, counts: dict[str, int]) -> None:
        """Warn about (or, when more than half of `n_rows` are bad, raise on) the rows.

        Adds ``skipped_rows`` and ``skipped_<reason>`` to `counts`.
        """
        if not self.lines:
            counts.setdefault("skipped_rows", 0)
            return
        seen: set[int] = set()
        parts = []
        first: tuple[int, int] | None = None
        total = 0
        for k, lines in enumerate(self.lines):
            new = [int(x) for x in np.unique(lines) if int(x) not in seen]
            if not new:
                continue
            seen.update(new)
            total += len(new)
            key = "skipped_" + self.reasons[k].split(" (")[0].replace(" ", "_")
            counts[key] = counts.get(key, 0) + len(new)
            shown = ", ".join(map(str, new[:5])) + (", ..." if len(new) > 5 else "")
            parts.append(f"{len(new)} with {self.reasons[k]} (lines {shown})")
            if first is None or new[0] < first[0]:
                first = (new[0], k)
        counts["skipped_rows"] = counts.get("skipped_rows", 0) + total
        assert first is not None
        if total * 2 > n_rows:
            line, k = first
            raise InputError(
                f"{self.reasons[k]}; {total} of {n_rows} rows are bad",
                file=self.file,
                line=line,
                field=self.fields[k],
                expected=self.expected[k],
            )
        warnings.warn(
            f"{self.file}: {total} of {n_rows} rows were skipped: " + "; ".join(parts),
            DataWarning,
            stacklevel=5,
        )


def to_number(s: pd.Series) -> pd.Series:
    """Strings to float: decimal commas accepted (``'5,6'``), anything else is NaN."""
    s = s.astype(str).str.strip()
    s = s.str.replace(r"^([-+]?\d*),(\d+)$", r"\1.\2", regex=True)
    return pd.to_numeric(s, errors="coerce").astype(float)


_LOW_WORDS = {"low", "lo", "below range"}
_HIGH_WORDS = {"high", "hi", "above range"}


def parse_glucose(
    text: pd.Series,
    *,
    factor: float,
    low: float,
    high: float,
    censor_at_limits: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Glucose strings to mg/dL with censoring.

    Accepts numbers (decimal comma allowed; multiplied by `factor` to get mg/dL),
    ``Low``/``LO`` and ``High``/``HI`` (censored at `low`/`high` [mg/dL]), and
    ``<N``/``>N`` (censored at N, in the file's unit).

    Returns:
        ``(glucose_mg_dl, censored, nonnumeric, impossible)``: NaN glucose where the
        text is empty or bad; masks of non-numeric text and of impossible values
        (<= 0 or > 1000 mg/dL).
    """
    s = text.astype(str).str.strip()
    lower = s.str.lower()
    is_low = lower.isin(_LOW_WORDS).to_numpy()
    is_high = lower.isin(_HIGH_WORDS).to_numpy()
    lt = s.str.startswith("<").to_numpy()
    gt = s.str.startswith(">").to_numpy()
    number = to_number(s.str.lstrip("<>").str.strip()).to_numpy() * factor
    glucose = number.copy()
    glucose[is_low] = low
    glucose[is_high] = high
    censored = np.zeros(len(s), dtype=np.int8)
    censored[is_low | lt] = -1
    censored[is_high | gt] = 1
    if censor_at_limits:
        censored[(censored == 0) & (glucose <= low)] = -1
        censored[(censored == 0) & (glucose >= high)] = 1
    empty = (s == "").to_numpy()
    nonnumeric = ~empty & np.isnan(glucose)
    impossible = ~np.isnan(glucose) & ((glucose <= 0) | (glucose > MAX_GLUCOSE_MG_DL))
    return glucose, censored, nonnumeric, impossible


def check_glucose(
    issues: RowIssues,
    text: pd.Series,
    line: np.ndarray,
    *,
    field: str,
    unit: str,
    factor: float,
    low: float,
    high: float,
    censor_at_limits: bool = False,
    required: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`parse_glucose` plus bad-row bookkeeping; returns ``(glucose, censored, ok)``."""
    glucose, censored, nonnumeric, impossible = parse_glucose(
        text, factor=factor, low=low, high=high, censor_at_limits=censor_at_limits
    )
    expected = f"a glucose value in {unit}, or Low/High"
    bad = issues.add(
        nonnumeric, line, field=field, reason="unparseable glucose", expected=expected
    )
    bad |= issues.add(
        impossible,
        line,
        field=field,
        reason="impossible glucose (<= 0 or > 1000 mg/dL)",
        expected=f"0 < glucose <= {MAX_GLUCOSE_MG_DL:g} mg/dL",
    )
    if required:
        bad |= issues.add(
            np.isnan(glucose) & ~bad,
            line,
            field=field,
            reason="missing glucose",
            expected=expected,
        )
    return glucose, censored, ~bad & ~np.isnan(glucose)


def check_amount(
    issues: RowIssues,
    text: pd.Series,
    line: np.ndarray,
    *,
    field: str,
    what: str,
    maximum: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative amounts (insulin, carbs, rates); returns ``(value, present)``.

    Empty text is absent (not an error); bad text or a value outside
    ``[0, maximum]`` is a bad row.
    """
    s = text.astype(str).str.strip()
    value = to_number(s).to_numpy()
    empty = (s == "").to_numpy()
    bad = issues.add(
        ~empty & (np.isnan(value) | (value < 0) | (value > maximum)),
        line,
        field=field,
        reason=f"bad {what}",
        expected=f"a number from 0 to {maximum:g}",
    )
    return value, ~empty & ~bad


def check_time(
    issues: RowIssues,
    time: pd.Series,
    line: np.ndarray,
    *,
    field: str,
    expected: str,
    bad_text: np.ndarray | None = None,
) -> np.ndarray:
    """Flag unparseable (NaT) and implausible (before 1990, after 2100) times."""
    t = pd.Series(pd.DatetimeIndex(time))
    nat = t.isna().to_numpy()
    if bad_text is not None:
        nat |= bad_text
    bad = issues.add(
        nat, line, field=field, reason="unparseable time", expected=expected
    )
    naive = t.dt.tz_localize(None) if t.dt.tz is not None else t
    out = ~nat & ((naive < EARLIEST) | (naive >= LATEST)).to_numpy()
    bad |= issues.add(
        out,
        line,
        field=field,
        reason="time outside 1990-2100",
        expected="a date from 1990 to 2099",
    )
    return ~bad
