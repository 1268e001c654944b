"""Synthetic patients with known truth, written as generic CSV and read back."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd

from isletfit import read
from isletfit.model import (
    Inputs,
    MechanisticGraft,
    Params,
    basal_for_fasting_glucose,
    day_windows,
    simulate_followup,
)

REFERENCE = pd.Timestamp("2025-01-01")  # the infusion day (study day 0)


def synthetic_patient(
    path,
    *,
    seed=0,
    blocks=((-7, 3), (30, 3), (120, 3)),
    true: Params | None = None,
    graft: MechanisticGraft | None = None,
    noise_sd=8.0,
    weight=70.0,
    tdd=0.55,
    insulin=True,
    log_meals=True,
):
    """Simulate CGM blocks of a transplant recipient; return its PatientData and truth.

    Insulin is titrated at each block to the basal need given the true graft (stopped
    when the graft holds fasting glucose at 110 mg/dL), boluses by the 500 rule.
    """
    rng = np.random.default_rng(seed)
    true = true or Params().replace(vmx=0.04, kp1=5.9)
    graft = graft or MechanisticGraft(
        infusion_day=0.0, engrafted=0.7, onset_lag=30.0, tau_maturation=50.0
    )
    carb_ratio = 500.0 / (tdd * weight)
    meal_t, meal_g, bol_t, bol_u, bas_t, bas_r, days = [], [], [], [], [], [], []
    need0 = float(basal_for_fasting_glucose(true, b=0.0, target=110.0))
    for start, n in blocks:
        b_mid = float(graft(jnp.array([start + n / 2]))[0])
        need = float(basal_for_fasting_glucose(true, b=b_mid, target=110.0))
        scale = need / need0 if (insulin and need / need0 > 0.05) else 0.0
        bas_t.append((start - 1) * 1440.0)
        bas_r.append(0.5 * tdd * weight / 24.0 * scale)
        for d in range(start - 1, start + n):
            if d >= start:
                days.append(d)
            for hour, grams in [(7.5, 45.0), (12.5, 70.0), (18.5, 80.0)]:
                t = d * 1440.0 + hour * 60.0 + rng.uniform(-30, 30)
                g = grams * rng.lognormal(0.0, 0.2)
                meal_t.append(t)
                meal_g.append(g)
                if scale > 0:
                    bol_t.append(t)
                    bol_u.append(scale * g / carb_ratio)
    inputs = Inputs(
        weight_kg=weight,
        meal_times=meal_t,
        meal_carbs_g=meal_g,
        bolus_times=bol_t,
        bolus_u=bol_u,
        basal_times=bas_t,
        basal_u_per_h=bas_r,
    )
    days = np.asarray(days, float)
    ts = day_windows(jnp.asarray(days), step_min=5.0)[:, :-1]
    sims, b = simulate_followup(
        true, graft, inputs, ts, warmup_min=1440.0, save_state=False
    )
    cgm = np.asarray(sims.cgm) + noise_sd * rng.standard_normal(ts.shape)
    events = {}
    if log_meals:
        for t, g in zip(meal_t, meal_g, strict=True):
            events.setdefault(round(t), {})["carbs_g"] = round(g, 1)
    for t, u in zip(bol_t, bol_u, strict=True):
        events.setdefault(round(t), {})["bolus_u"] = round(u, 2)
    if insulin:
        for t, r in zip(bas_t, bas_r, strict=True):
            events.setdefault(round(t), {})["basal_u_per_h"] = round(r, 3)
    rows = pd.DataFrame(
        {"t": np.asarray(ts).ravel(), "glucose_mg_dl": np.round(cgm.ravel(), 1)}
    )
    rows = pd.concat(
        [rows, pd.DataFrame([{"t": float(t), **v} for t, v in events.items()])],
        ignore_index=True,
    ).sort_values("t", kind="stable")
    rows["time"] = [
        (REFERENCE + pd.Timedelta(minutes=float(t))).isoformat() for t in rows["t"]
    ]
    columns = ["time", "glucose_mg_dl", "carbs_g", "bolus_u", "basal_u_per_h"]
    rows.reindex(columns=columns).to_csv(path, index=False)
    return read(path), {
        "params": true,
        "graft": graft,
        "days": days,
        "b": np.asarray(b),
    }


def write_meal_day_records(
    folder, patients: list[dict], days: list[pd.Timestamp], *, seed: int = 7
) -> None:
    """Quick synthetic records (no model): days of 5-minute glucose with 3 meals.

    Each patient's glucose is a level (110 + 10·i mg/dL) plus a gamma-shaped rise
    after each logged meal (50, 70, 80 g with a 1 U per 15 g bolus) and 6 mg/dL
    noise; a basal rate of 0.4 U/h is logged once a day. Writes
    ``folder/cgm/<patient_id>.csv`` (generic CSV) and ``folder/patients.csv``.

    Args:
        folder: Output folder (created).
        patients: Rows of the patient sheet (``patient_id``, ``weight_kg``,
            ``transplant_date``), one per patient, in order.
        days: The calendar days with CGM, the same for every patient.
        seed: Seed of the noise.
    """
    (folder / "cgm").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    t = np.arange(0, 1440, 5.0)
    meals = [(7.5 * 60, 50.0), (12.5 * 60, 70.0), (18.5 * 60, 80.0)]
    for i, row in enumerate(patients):
        tables = []
        for day in days:
            glucose = np.full_like(t, 110.0 + 10.0 * i)
            for when, carbs in meals:
                dt = np.clip(t - when, 0.0, None)
                glucose += carbs * (dt / 45.0) * np.exp(1.0 - dt / 45.0) * (dt > 0)
            glucose += rng.normal(0.0, 6.0, t.size)
            table = pd.DataFrame(
                {
                    "time": [day + pd.Timedelta(minutes=m) for m in t],
                    "glucose_mg_dl": np.round(glucose),
                    "carbs_g": np.nan,
                    "bolus_u": np.nan,
                    "basal_u_per_h": np.nan,
                }
            )
            table.loc[0, "basal_u_per_h"] = 0.4
            for when, carbs in meals:
                k = int(when // 5)
                table.loc[k, "carbs_g"] = carbs
                table.loc[k, "bolus_u"] = round(carbs / 15.0, 1)
            tables.append(table)
        table = pd.concat(tables, ignore_index=True)
        table["time"] = table["time"].dt.strftime("%Y-%m-%dT%H:%M:%S")
        table.to_csv(folder / "cgm" / f"{row['patient_id']}.csv", index=False)
    pd.DataFrame(patients).to_csv(folder / "patients.csv", index=False)
