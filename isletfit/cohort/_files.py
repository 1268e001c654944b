"""Write a simulated cohort as the files a transplant clinic would export.

Layout of the output folder (every file written atomically):

- ``cgm/<patient_id>.csv``: one generic CSV per patient (DESIGN.md "Data contracts"):
  ``time`` (ISO 8601, local time without offset), ``glucose_mg_dl`` (whole mg/dL, or
  ``Low``/``High``), ``carbs_g``, ``bolus_u``, ``basal_u_per_h`` — the CGM blocks of the
  visits with the meals, boluses and basal rates of those days. Readings and events
  that fall on the same minute share a row; carbohydrate taken at the same minute is
  summed. A patient without a single CGM reading (a simulation that failed on its
  first day) gets no file; ``truth.csv`` flags failed patients (``failed`` = 1).
- ``patients.csv``: ``patient_id, weight_kg, transplant_date, baseline_tdd_u`` plus
  descriptive columns (sex, age, height, pump, regimen).
- ``labs.csv``: ``patient_id, date, kind, value, unit`` (HbA1c, fasting and stimulated
  C-peptide, fasting glucose, insulin dose, severe hypoglycaemia) at every visit.
- ``truth.csv`` (long format): ``patient_id, quantity, day, date, value, unit``: the
  true graft function B of every day (``graft_b``) and every true parameter (model
  `Params`, graft, C-peptide kinetics, regimen; ``day`` and ``date`` empty).
- ``visits.csv``: the `Cohort.visit_table` (per patient and visit: truth, CGM metrics,
  labs, endpoints).

Patient ``i`` (0-based) has its infusion on ``start_date + i·enrolment_every_days``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_write_text
from ..model import Params
from ._cohort import Cohort

__all__ = ["patient_records", "write_cohort"]

_MINUTE = np.timedelta64(1, "m")


def _transplant_dates(cohort: Cohort, start_date: str, every_days: int) -> list:
    start = np.datetime64(dt.date.fromisoformat(str(start_date)), "D")
    return [start + np.timedelta64(i * int(every_days), "D") for i in range(cohort.n)]


def patient_records(cohort: Cohort, i: int) -> dict[str, pd.DataFrame]:
    """Patient ``i``'s observations as they are written (times in minutes since day 0).

    Args:
        cohort: The simulated cohort.
        i: Patient index.

    Returns:
        ``cgm`` (``time_min``, ``glucose_mg_dl`` at the device limits when censored,
        ``censored``), ``carbs`` (``time_min``, ``grams``, summed per minute),
        ``boluses`` (``time_min``, ``units``) and ``basal`` (``time_min``,
        ``rate_u_per_h``: each block's first day, then every change).
    """
    t = cohort.block_time_min().ravel()
    g = cohort.cgm[i].ravel().astype(np.float64)
    obs = np.isfinite(g)
    cgm = pd.DataFrame(
        {
            "time_min": t[obs],
            "glucose_mg_dl": g[obs],
            "censored": cohort.censored[i].ravel()[obs].astype(np.int8),
        }
    )
    mt = cohort.meal_time[i].ravel()
    mg = cohort.meal_carbs_g[i].ravel()
    keep = np.isfinite(mt) & (mg > 0)
    carbs = (
        pd.DataFrame({"time_min": mt[keep], "grams": mg[keep]})
        .groupby("time_min", as_index=False)["grams"]
        .sum()
    )
    bt = cohort.bolus_time[i].ravel()
    bu = cohort.bolus_u[i].ravel()
    keep = np.isfinite(bt) & (bu > 0)
    boluses = (
        pd.DataFrame({"time_min": bt[keep], "units": np.round(bu[keep], 2)})
        .groupby("time_min", as_index=False)["units"]
        .sum()
    )
    rate = cohort.basal_u_per_h[i]
    day = cohort.block_day
    first_of_block = np.r_[True, np.diff(day) != 1]
    changed = np.r_[True, rate[1:] != rate[:-1]]
    keep = first_of_block | changed
    basal = pd.DataFrame({"time_min": day[keep] * 1440.0, "rate_u_per_h": rate[keep]})
    return {"cgm": cgm, "carbs": carbs, "boluses": boluses, "basal": basal}


def _fmt_number(x: float) -> str:
    return f"{x:.10g}"


def _patient_csv(cohort: Cohort, i: int, transplant: np.datetime64) -> str:
    rec = patient_records(cohort, i)
    cgm = rec["cgm"]
    glucose = np.where(
        cgm["censored"] < 0,
        "Low",
        np.where(
            cgm["censored"] > 0,
            "High",
            cgm["glucose_mg_dl"].round().astype(int).astype(str),
        ),
    )
    frames = [
        pd.DataFrame({"time_min": cgm["time_min"], "glucose_mg_dl": glucose}),
        pd.DataFrame(
            {
                "time_min": rec["carbs"]["time_min"],
                "carbs_g": [_fmt_number(v) for v in rec["carbs"]["grams"]],
            }
        ),
        pd.DataFrame(
            {
                "time_min": rec["boluses"]["time_min"],
                "bolus_u": [_fmt_number(v) for v in rec["boluses"]["units"]],
            }
        ),
        pd.DataFrame(
            {
                "time_min": rec["basal"]["time_min"],
                "basal_u_per_h": [_fmt_number(v) for v in rec["basal"]["rate_u_per_h"]],
            }
        ),
    ]
    rows = (
        pd.concat(frames, ignore_index=True)
        .groupby("time_min", sort=True)
        .first()
        .reset_index()
    )
    midnight = transplant.astype("datetime64[m]")
    stamps = midnight + np.round(rows["time_min"].to_numpy()).astype(np.int64) * _MINUTE
    table = pd.DataFrame(
        {
            "time": np.datetime_as_string(stamps.astype("datetime64[s]"), unit="s"),
            "glucose_mg_dl": rows["glucose_mg_dl"],
            "carbs_g": rows["carbs_g"],
            "bolus_u": rows["bolus_u"],
            "basal_u_per_h": rows["basal_u_per_h"],
        }
    )
    return table.to_csv(index=False, lineterminator="\n", na_rep="")


def _truth_table(cohort: Cohort, dates: list) -> pd.DataFrame:
    p = cohort.patients
    ids = np.asarray(cohort.patient_id)
    parts = []
    keep = cohort.truth_day >= cohort.day[0]
    day = cohort.truth_day[keep]
    for i, pid in enumerate(ids):
        parts.append(
            pd.DataFrame(
                {
                    "patient_id": pid,
                    "quantity": "graft_b",
                    "day": day.astype(str),
                    "date": np.datetime_as_string(
                        dates[i] + day.astype("timedelta64[D]")
                    ),
                    "value": [_fmt_number(v) for v in cohort.b_true[i, keep]],
                    "unit": "fraction of a healthy adult's",
                }
            )
        )
    scalars: list[tuple[str, np.ndarray, str]] = []
    for f in dataclasses.fields(Params):
        scalars.append(
            (
                f"param_{f.name}",
                np.asarray(getattr(p.params, f.name)),
                f.metadata["unit"],
            )
        )
    g = p.graft
    scalars += [
        ("graft_infusion_day", np.asarray(g.infusion_day), "day"),
        ("graft_engrafted", np.asarray(g.engrafted), "fraction of a healthy adult's"),
        ("graft_initial_maturation", np.asarray(g.initial_maturation), "-"),
        ("graft_onset_lag", np.asarray(g.onset_lag), "day"),
        ("graft_onset_width", np.asarray(g.onset_width), "day"),
        ("graft_tau_maturation", np.asarray(g.tau_maturation), "day"),
        ("graft_loss_rate", np.asarray(g.loss_rate), "1/day"),
        ("c_peptide_k1", np.asarray(p.c_peptide.k1), "1/min"),
        ("c_peptide_k2", np.asarray(p.c_peptide.k2), "1/min"),
        ("c_peptide_k3", np.asarray(p.c_peptide.k3), "1/min"),
        ("c_peptide_volume", np.asarray(p.c_peptide.volume_l), "L"),
        ("basal_u_per_h", np.asarray(p.basal_u_per_h), "U/h"),
        ("basal_fraction", np.asarray(p.basal_fraction), "-"),
        ("tdd_u_per_day", np.asarray(p.tdd_u_per_day), "U/day"),
        ("carb_ratio", np.asarray(p.carb_ratio_g_per_u), "g/U"),
        ("correction_factor", np.asarray(p.correction_mg_dl_per_u), "mg/dL/U"),
        ("carb_count_bias", np.asarray(p.count_bias), "log factor"),
        ("appetite", np.asarray(p.appetite), "-"),
        ("hba1c_offset", np.asarray(p.hba1c_offset), "%"),
        ("failed", np.asarray(cohort.failed, float), "-"),
    ]
    for name, values, unit in scalars:
        values = np.broadcast_to(values, (cohort.n,))
        parts.append(
            pd.DataFrame(
                {
                    "patient_id": ids,
                    "quantity": name,
                    "day": "",
                    "date": "",
                    "value": [_fmt_number(float(v)) for v in values],
                    "unit": unit,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def write_cohort(
    cohort: Cohort,
    out_dir: str | os.PathLike,
    *,
    start_date: str = "2024-01-01",
    enrolment_every_days: int = 7,
) -> dict[str, Path]:
    """Write the cohort's files (see the module docstring for the layout).

    Args:
        cohort: The simulated cohort.
        out_dir: Output folder (created if needed; existing files of the same names
            are replaced atomically).
        start_date: Infusion date of the first patient (YYYY-MM-DD).
        enrolment_every_days: Days between consecutive patients' infusions.

    Returns:
        Paths written: ``cgm`` (the folder of patient CSVs), ``patients``, ``labs``,
        ``truth``, ``visits``.
    """
    out = Path(out_dir)
    cgm_dir = out / "cgm"
    cgm_dir.mkdir(parents=True, exist_ok=True)
    dates = _transplant_dates(cohort, start_date, enrolment_every_days)
    for i, pid in enumerate(cohort.patient_id):
        if not np.isfinite(cohort.cgm[i]).any():
            continue  # a patient whose simulation failed at once has no CGM record
        atomic_write_text(cgm_dir / f"{pid}.csv", _patient_csv(cohort, i, dates[i]))
    p = cohort.patients
    patients = pd.DataFrame(
        {
            "patient_id": cohort.patient_id,
            "weight_kg": np.round(np.asarray(p.weight_kg, float), 1),
            "transplant_date": np.datetime_as_string(np.asarray(dates)),
            "baseline_tdd_u": np.round(
                cohort.visit_table()
                .query("visit == 0")["insulin_u_per_day"]
                .to_numpy(),
                1,
            ),
            "sex": np.where(np.asarray(p.female), "F", "M"),
            "age_years": np.round(np.asarray(p.age_years, float)).astype(int),
            "height_cm": np.round(np.asarray(p.height_cm, float)).astype(int),
            "insulin_delivery": np.where(np.asarray(p.pump), "pump", "injections"),
        }
    )
    paths = {"cgm": cgm_dir}
    paths["patients"] = out / "patients.csv"
    atomic_write_text(
        paths["patients"], patients.to_csv(index=False, lineterminator="\n")
    )
    labs = cohort.labs_table()
    date_of = dict(zip(cohort.patient_id, dates, strict=True))
    lab_dates = [
        date_of[pid] + np.timedelta64(int(day), "D")
        for pid, day in zip(labs["patient_id"], labs["day"], strict=True)
    ]
    labs_out = pd.DataFrame(
        {
            "patient_id": labs["patient_id"],
            "date": np.datetime_as_string(np.asarray(lab_dates)),
            "kind": labs["kind"],
            "value": [_fmt_number(v) for v in labs["value"]],
            "unit": labs["unit"],
        }
    )
    paths["labs"] = out / "labs.csv"
    atomic_write_text(paths["labs"], labs_out.to_csv(index=False, lineterminator="\n"))
    paths["truth"] = out / "truth.csv"
    atomic_write_text(
        paths["truth"],
        _truth_table(cohort, dates).to_csv(index=False, lineterminator="\n"),
    )
    paths["visits"] = out / "visits.csv"
    atomic_write_text(
        paths["visits"],
        cohort.visit_table().to_csv(
            index=False, lineterminator="\n", float_format="%.6g"
        ),
    )
    return paths
