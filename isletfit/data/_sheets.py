"""The patient sheet (``patients.csv``) and the labs sheet (``labs.csv``)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from .._errors import InputError
from ._raw import MG_DL_PER_MMOL_L, to_number
from ._text import Table, read_table, read_text

PathLike = str | os.PathLike
#: HbA1c: mmol/mol = 10.929 (% - 2.15) (IFCC-NGSP master equation).
_IFCC_SLOPE, _IFCC_OFFSET = 10.929, 2.15
#: C-peptide: 1 ng/mL = 0.331 nmol/L.
_NMOL_PER_NG_ML = 0.331


def _table(path: PathLike, required: tuple[str, ...]) -> tuple[Table, dict[str, str]]:
    text = read_text(path)
    index = next(i for i, ln in enumerate(text.split("\n")) if ln.strip())
    table = read_table(text, file=os.fspath(path), header_index=index)
    cols = {h.strip().lower(): h for h in table.header}
    for name in required:
        if name not in cols:
            raise InputError(
                f"no {name!r} column",
                file=path,
                line=table.header_line,
                field=name,
                expected="columns " + ", ".join(required),
            )
    if not len(table.data):
        raise InputError(
            "no data rows after the header",
            file=path,
            line=table.header_line + 1,
            expected="one row per " + ("patient" if "weight_kg" in required else "lab"),
        )
    bad = np.flatnonzero(table.nfields != len(table.header))
    if len(bad):
        i = bad[0]
        raise InputError(
            f"{table.nfields[i]} fields, the header has {len(table.header)}",
            file=path,
            line=int(table.line[i]),
            field=table.header[min(int(table.nfields[i]), len(table.header)) - 1],
            expected=f"{len(table.header)} fields",
        )
    return table, cols


def _fail(
    bad: np.ndarray,
    table: Table,
    path: PathLike,
    field: str,
    message: str,
    expected: str,
) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = table.data[field].iloc[i].strip()
        raise InputError(
            f"{message}: {value!r}",
            file=path,
            line=int(table.line[i]),
            field=field,
            expected=expected,
        )


def _dates(table: Table, path: PathLike, field: str, *, required: bool) -> pd.Series:
    text = table.column(field)
    dates = pd.to_datetime(text.where(text != ""), format="ISO8601", errors="coerce")
    bad = dates.isna().to_numpy() & ((text != "").to_numpy() | required)
    _fail(bad, table, path, field, "not a date", "a date as YYYY-MM-DD")
    return dates.dt.normalize().astype("datetime64[us]")


def read_patients(path: PathLike) -> pd.DataFrame:
    """Read the patient sheet ``patients.csv``.

    Columns: ``patient_id`` (unique), ``weight_kg`` [kg], ``transplant_date``
    (YYYY-MM-DD; may be empty, then study days count from the first reading), and
    optionally ``baseline_tdd_u`` [U/day] (total daily insulin before transplant).
    Other columns are kept as text.

    Args:
        path: The CSV file (``,``/``;``/tab separated; decimal commas accepted).

    Returns:
        A DataFrame with ``patient_id`` (str), ``weight_kg`` (float),
        ``transplant_date`` (datetime64, NaT where empty), ``baseline_tdd_u`` (float,
        NaN where absent), then any other columns.

    Raises:
        InputError: A missing column, a duplicate or empty id, a weight outside
            (0, 400] kg, a bad date or a dose outside [0, 500] U/day; names file,
            line and field.
    """
    table, cols = _table(path, ("patient_id", "weight_kg", "transplant_date"))
    pid = table.column(cols["patient_id"])
    _fail((pid == "").to_numpy(), table, path, cols["patient_id"], "empty id", "an id")
    dup = pid.duplicated().to_numpy()
    _fail(dup, table, path, cols["patient_id"], "duplicate patient id", "unique ids")
    weight = to_number(table.column(cols["weight_kg"])).to_numpy()
    _fail(
        ~((weight > 0) & (weight <= 400)),
        table,
        path,
        cols["weight_kg"],
        "not a body weight",
        "a weight in kg, 0 < weight <= 400",
    )
    out = pd.DataFrame(
        {
            "patient_id": pid.astype(str),
            "weight_kg": weight,
            "transplant_date": _dates(
                table, path, cols["transplant_date"], required=False
            ),
        }
    )
    if "baseline_tdd_u" in cols:
        text = table.column(cols["baseline_tdd_u"])
        tdd = to_number(text).to_numpy()
        _fail(
            (text != "").to_numpy() & ~((tdd >= 0) & (tdd <= 500)),
            table,
            path,
            cols["baseline_tdd_u"],
            "not a daily insulin dose",
            "units per day, 0 to 500",
        )
        out["baseline_tdd_u"] = tdd
    else:
        out["baseline_tdd_u"] = np.nan
    known = {"patient_id", "weight_kg", "transplant_date", "baseline_tdd_u"}
    for key, name in cols.items():
        if key not in known:
            out[name] = table.column(name)
    return out


def _unit_key(unit: str) -> str:
    return unit.strip().lower().replace(" ", "").replace("µ", "u").replace("iu", "u")


_Convert = Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


#: kind -> (canonical unit, {accepted unit key: conversion}, plausible range).
_KINDS: dict[str, tuple[str, dict[str, _Convert], tuple[float, float]]] = {
    "hba1c": (
        "%",
        {"%": _same, "mmol/mol": lambda x: x / _IFCC_SLOPE + _IFCC_OFFSET},
        (3.0, 20.0),
    ),
    "c_peptide_fasting": (
        "nmol/L",
        {
            "nmol/l": _same,
            "pmol/l": lambda x: x / 1000.0,
            "ng/ml": lambda x: x * _NMOL_PER_NG_ML,
        },
        (0.0, 20.0),
    ),
    "fasting_glucose": (
        "mg/dL",
        {"mg/dl": _same, "mmol/l": lambda x: x * MG_DL_PER_MMOL_L},
        (10.0, 1000.0),
    ),
    "insulin_dose": (
        "U/day",
        {"u/day": _same, "u/d": _same, "units/day": _same, "u/kg/day": _same},
        (0.0, 500.0),
    ),
    "severe_hypo": (
        "events/year",
        {"events/year": _same, "events/yr": _same, "events": _same, "/year": _same},
        (0.0, 366.0),
    ),
}
_KINDS["c_peptide_stimulated"] = _KINDS["c_peptide_fasting"]
_ALIASES = {
    "a1c": "hba1c",
    "hb_a1c": "hba1c",
    "fasting_c_peptide": "c_peptide_fasting",
    "stimulated_c_peptide": "c_peptide_stimulated",
    "tdd": "insulin_dose",
    "total_daily_dose": "insulin_dose",
    "severe_hypoglycaemia": "severe_hypo",
    "severe_hypoglycemia": "severe_hypo",
}


def read_labs(
    path: PathLike, *, patients: pd.DataFrame | PathLike | None = None
) -> pd.DataFrame:
    """Read the labs sheet ``labs.csv`` and convert values to canonical units.

    Columns ``patient_id, date, kind, value, unit``. Kinds and accepted units (the
    first is canonical):

    * ``hba1c``: % (also mmol/mol: % = mmol/mol / 10.929 + 2.15);
    * ``c_peptide_fasting``, ``c_peptide_stimulated``: nmol/L (also pmol/L, and
      ng/mL: 1 ng/mL = 0.331 nmol/L);
    * ``fasting_glucose``: mg/dL (also mmol/L: x 18.016);
    * ``insulin_dose``: U/day (also U/kg/day, multiplied by the patient's weight
      when `patients` gives it, else kept with unit ``U/kg/day``);
    * ``severe_hypo``: events/year (the number of severe hypoglycaemic events in
      the year before `date`).

    Args:
        path: The CSV file.
        patients: The patient sheet (`read_patients` output, or its path), for
            weights.

    Returns:
        A DataFrame ``patient_id, date, kind, value, unit`` in file order.

    Raises:
        InputError: A missing column, an unknown kind or unit, a value that is not a
            number or is implausible for its kind, or a bad date; names file, line
            and field.
    """
    table, cols = _table(path, ("patient_id", "date", "kind", "value", "unit"))
    pid = table.column(cols["patient_id"])
    _fail((pid == "").to_numpy(), table, path, cols["patient_id"], "empty id", "an id")
    dates = _dates(table, path, cols["date"], required=True)
    kind = (
        table.column(cols["kind"]).str.lower().str.replace(r"[\s-]+", "_", regex=True)
    )
    kind = kind.map(lambda k: _ALIASES.get(k, k))
    _fail(
        ~kind.isin(list(_KINDS)).to_numpy(),
        table,
        path,
        cols["kind"],
        "unknown kind",
        "one of " + ", ".join(sorted(_KINDS)),
    )
    raw = to_number(table.column(cols["value"])).to_numpy()
    _fail(~np.isfinite(raw), table, path, cols["value"], "not a number", "a number")
    unit_key = table.column(cols["unit"]).map(_unit_key)
    weights: dict[str, float] = {}
    if patients is not None:
        sheet = (
            patients if isinstance(patients, pd.DataFrame) else read_patients(patients)
        )
        weights = dict(zip(sheet["patient_id"], sheet["weight_kg"], strict=True))
    value = np.full(len(raw), np.nan)
    unit = np.empty(len(raw), dtype=object)
    for k, (canonical, accepted, _) in _KINDS.items():
        rows = (kind == k).to_numpy()
        if not rows.any():
            continue
        bad = rows & ~unit_key.isin(list(accepted)).to_numpy()
        _fail(
            bad,
            table,
            path,
            cols["unit"],
            f"unknown unit for {k}",
            "one of " + ", ".join(sorted(accepted)),
        )
        for key, convert in accepted.items():
            sel = rows & (unit_key == key).to_numpy()
            value[sel] = convert(raw[sel])
            unit[sel] = canonical
        if k == "insulin_dose":
            per_kg = rows & (unit_key == "u/kg/day").to_numpy()
            w = pid.map(weights).astype(float).to_numpy()
            known = per_kg & np.isfinite(w)
            value[known] = raw[known] * w[known]
            unit[per_kg & ~known] = "U/kg/day"
            _fail(
                per_kg & ~known & ~((raw >= 0) & (raw <= 5)),
                table,
                path,
                cols["value"],
                "implausible insulin_dose",
                "0 to 5 U/kg/day",
            )
    for k, (canonical, _, (low, high)) in _KINDS.items():
        rows = (kind == k).to_numpy() & (unit == canonical)
        _fail(
            rows & ~((value >= low) & (value <= high)),
            table,
            path,
            cols["value"],
            f"implausible {k} (in {canonical})",
            f"{low:g} to {high:g} {canonical}",
        )
    return pd.DataFrame(
        {
            "patient_id": pid.astype(str),
            "date": dates,
            "kind": kind.astype(str),
            "value": value,
            "unit": pd.Series(unit, dtype=str),
        }
    )


def sheet_entry(sheet: pd.DataFrame | None, patient_id: str):
    """A patient's row of the patient sheet, with its weight and transplant date.

    Args:
        sheet: The patient sheet (`read_patients`), or None.
        patient_id: The patient's id.

    Returns:
        ``(row, weight_kg, transplant_date)``: the row (None when there is no sheet or
        no row for the patient), the weight [kg] and the transplant date, each None
        when unknown.
    """
    if sheet is None:
        return None, None, None
    rows = sheet[sheet["patient_id"].astype(str) == str(patient_id)]
    if rows.empty:
        return None, None, None
    row = rows.iloc[0]
    when = None if pd.isna(row["transplant_date"]) else row["transplant_date"]
    return row, float(row["weight_kg"]), when
