"""Dexcom Clarity CSV export (mg/dL and mmol/L variants)."""

from __future__ import annotations

import numpy as np

from .._errors import InputError
from ._format import Format
from ._raw import (
    MG_DL_PER_MMOL_L,
    RawRecords,
    RowIssues,
    check_amount,
    check_glucose,
    check_time,
    frame,
)
from ._text import Table, first_lines, read_table
from ._time import parse_iso

_TS = "Timestamp (YYYY-MM-DDThh:mm:ss)"
_USED = ("EGV", "Calibration", "Insulin", "Carbs")


def _find(table: Table, prefix: str, file: str) -> str:
    for h in table.header:
        if h.lower().startswith(prefix.lower()):
            return h
    raise InputError(
        f"no {prefix!r} column",
        file=file,
        line=table.header_line,
        field=prefix,
        expected="the Dexcom Clarity export header",
    )


class DexcomClarity(Format):
    """Dexcom Clarity CSV export (G4-G7, Stelo; mg/dL or mmol/L).

    Layout: header ``Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,
    Patient Info,Device Info,Source Device ID,Glucose Value (mg/dL),Insulin Value (u),
    Carb Value (grams),Duration (hh:mm:ss),Glucose Rate of Change (mg/dL/min),
    Transmitter Time (Long Integer),Transmitter ID``; untimed metadata rows
    (FirstName, LastName, Device, Alert, ...) before the timed rows; timestamps are
    naive local time. Event types read: ``EGV`` (CGM; ``Low``/``High`` censored at
    the limits), ``Calibration`` (fingerstick), ``Insulin`` (``Fast-Acting`` ->
    boluses, ``Long-Acting`` -> long-acting doses) and ``Carbs``; others are counted
    and ignored. Rows may have 13 or 14 fields (Clarity omits the transmitter id on
    non-glucose rows).

    Args:
        low_mg_dl: Value of ``Low`` readings [mg/dL] (Dexcom: 40).
        high_mg_dl: Value of ``High`` readings [mg/dL] (Dexcom: 400).
    """

    name = "dexcom_clarity"

    def __init__(self, *, low_mg_dl: float = 40.0, high_mg_dl: float = 400.0):
        self.low_mg_dl = float(low_mg_dl)
        self.high_mg_dl = float(high_mg_dl)

    def sniff(self, head: str) -> bool:
        """True when a line near the top has the Clarity timestamp and event columns."""
        return any(
            _TS in ln and "Event Type" in ln and "Glucose Value" in ln
            for ln in first_lines(head, 30)
        )

    def parse(self, text: str, *, file: str) -> list[RawRecords]:
        """Parse a Clarity export (see the class docstring)."""
        lines = first_lines(text, 30)
        index = next(
            (i for i, ln in enumerate(lines) if "Timestamp (" in ln and "Event" in ln),
            0,
        )
        table = read_table(text, file=file, header_index=index, min_fields=13)
        c_ts = _find(table, "Timestamp", file)
        c_type = _find(table, "Event Type", file)
        c_sub = _find(table, "Event Subtype", file)
        c_glu = _find(table, "Glucose Value", file)
        c_ins = _find(table, "Insulin Value", file)
        c_carb = _find(table, "Carb Value", file)
        mmol = "mmol" in c_glu.lower()
        factor = MG_DL_PER_MMOL_L if mmol else 1.0
        etype = table.column(c_type).str.lower()
        ts_text = table.column(c_ts)
        used = etype.isin([u.lower() for u in _USED]).to_numpy()
        timed = (ts_text != "").to_numpy()
        counts = {
            "rows_read": len(table.data),
            "ignored_metadata": int(np.sum(~timed & ~used)),
            "ignored_other_events": int(np.sum(timed & ~used)),
        }
        n = int(used.sum())
        if n == 0:
            raise InputError(
                "no EGV, Calibration, Insulin or Carbs rows",
                file=file,
                line=table.header_line + 1,
                field=c_type,
                expected="Dexcom Clarity data rows",
            )
        d = table.data[used].reset_index(drop=True)
        line = table.line[used]
        nf = table.nfields[used]
        etype = etype[used].reset_index(drop=True)
        sub = d[c_sub].str.strip().str.lower()
        issues = RowIssues(file)
        bad = issues.add(
            (nf < 13) | (nf > len(table.header)),
            line,
            field=table.header[-1],
            reason="wrong number of fields",
            expected=f"13 or {len(table.header)} fields",
        )
        times, aware, offsets, wrong = parse_iso(d[c_ts].str.strip())
        bad |= issues.add(
            wrong,
            line,
            field=c_ts,
            reason="time without UTC offset" if aware else "time with a UTC offset",
            expected="the same style of timestamp on every row",
        )
        bad |= ~check_time(
            issues, times, line, field=c_ts, expected="YYYY-MM-DDThh:mm:ss"
        )
        unit = "mmol/L" if mmol else "mg/dL"
        is_glu = etype.isin(["egv", "calibration"]).to_numpy()
        glucose = np.full(n, np.nan)
        censored = np.zeros(n, np.int8)
        glucose[is_glu], censored[is_glu], ok = check_glucose(
            issues,
            d.loc[is_glu, c_glu],
            line[is_glu],
            field=c_glu,
            unit=unit,
            factor=factor,
            low=self.low_mg_dl,
            high=self.high_mg_dl,
        )
        bad[is_glu] |= ~ok
        is_ins = (etype == "insulin").to_numpy()
        is_carb = (etype == "carbs").to_numpy()
        amount = np.full(n, np.nan)
        for mask, col, what, maximum in (
            (is_ins, c_ins, "insulin dose", 200.0),
            (is_carb, c_carb, "carbohydrate", 1000.0),
        ):
            text = d.loc[mask, col].str.strip()
            amount[mask], present = check_amount(
                issues, text, line[mask], field=col, what=what, maximum=maximum
            )
            bad[mask] |= issues.add(
                (text == "").to_numpy(),
                line[mask],
                field=col,
                reason=f"missing {what}",
                expected="a number",
            )
            bad[mask] |= ~present
        issues.finish(n, counts)
        good = ~bad
        egv = good & (etype == "egv").to_numpy()
        cal = good & (etype == "calibration").to_numpy()
        long = sub.str.contains("long").to_numpy()
        fast = good & is_ins & ~long & (amount > 0)
        slow = good & is_ins & long & (amount > 0)
        carbs = good & is_carb & (amount > 0)
        streams = {
            "cgm": frame(
                times[egv],
                line[egv],
                offset_min=offsets[egv],
                glucose_mg_dl=glucose[egv],
                censored=censored[egv],
            ),
            "smbg": frame(times[cal], line[cal], glucose_mg_dl=glucose[cal]),
            "boluses": frame(times[fast], line[fast], units=amount[fast]),
            "long_acting": frame(times[slow], line[slow], units=amount[slow]),
            "carbs": frame(times[carbs], line[carbs], grams=amount[carbs]),
        }
        return [
            RawRecords(patient_id=None, aware=aware, streams=streams, counts=counts)
        ]
