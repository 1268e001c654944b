"""The built-in demonstration: one virtual transplant recipient, simulated end to end.

An adult with type 1 diabetes on basal–bolus insulin receives an islet infusion on day 0.
The graft engrafts and matures (`MechanisticGraft`); at each clinic visit the insulin is
titrated to what the person still needs (the basal rate that holds fasting glucose at
110 mg/dL given the graft, from the steady state of the fast model, with boluses cut in
proportion) and stopped when the graft alone holds that target. Each visit's CGM block
is simulated, day by day, in one vmapped solve.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .metrics import cgm_metrics
from .model import (
    MIN_PER_DAY,
    Inputs,
    MechanisticGraft,
    Params,
    basal_for_fasting_glucose,
    day_windows,
    simulate_followup,
)

__all__ = ["DemoPatient", "DemoResult", "run_demo"]

#: Daily meals: (clock time [h], carbohydrate [g], bolused?) — simglucose scenario means
#: plus an unannounced afternoon snack.
DAILY_MEALS = (
    (7.5, 45.0, True),
    (12.5, 70.0, True),
    (15.5, 15.0, False),
    (18.5, 80.0, True),
)


@dataclasses.dataclass(frozen=True)
class DemoPatient:
    """The virtual recipient.

    Attributes:
        weight_kg: Body weight [kg].
        tdd_u_per_kg: Total daily insulin dose before transplant [U/kg/day].
        basal_fraction: Basal share of that dose [-].
        target_mg_dl: Fasting glucose the clinic titrates basal insulin to [mg/dL].
        visits: Visit days relative to the infusion (day 0) [day]; negative = baseline.
        block_days: Days of CGM simulated at each visit [day].
        graft: The true graft trajectory.
    """

    weight_kg: float = 75.0
    tdd_u_per_kg: float = 0.55
    basal_fraction: float = 0.5
    target_mg_dl: float = 110.0
    visits: tuple[float, ...] = (-14.0, 30.0, 90.0, 180.0, 365.0)
    block_days: int = 7
    graft: MechanisticGraft = dataclasses.field(
        default_factory=lambda: MechanisticGraft(
            infusion_day=0.0,
            engrafted=0.9,
            onset_lag=45.0,
            onset_width=10.0,
            tau_maturation=70.0,
            loss_rate=2e-4,
        )
    )


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What the demo computed (numpy arrays; one row of ``table`` per visit)."""

    table: list[dict[str, float]]
    window_days: np.ndarray
    ts: np.ndarray
    cgm: np.ndarray
    graft_days: np.ndarray
    graft_b: np.ndarray
    seconds: float


def _visit_inputs(
    patient: DemoPatient, params: Params, b_visits: np.ndarray, rng: np.random.Generator
):
    """Meals, boluses and titrated basal insulin for every visit block.

    Daily life varies: meal times ±30 min, meal sizes ±25 % (log-normal), carbohydrate
    counting errors of ±30 % on the bolus, and one bolus in ten forgotten.
    """
    tdd = patient.tdd_u_per_kg * patient.weight_kg
    carb_ratio = 500.0 / tdd  # [g/U], the 500 rule
    need = jax.vmap(
        lambda b: basal_for_fasting_glucose(params, b=b, target=patient.target_mg_dl)
    )
    needs = np.asarray(need(jnp.concatenate([jnp.zeros(1), jnp.asarray(b_visits)])))
    scale = needs[1:] / needs[0]
    scale = np.where(scale < 0.05, 0.0, np.clip(scale, 0.0, 1.0))  # stop insulin
    basal0 = patient.basal_fraction * tdd / 24.0  # [U/h]
    meal_t, meal_g, bolus_t, bolus_u, basal_t, basal_r = [], [], [], [], [], []
    for visit, s in zip(patient.visits, scale, strict=True):
        start = (visit - 1.0) * MIN_PER_DAY  # the day before the block: warm-up
        basal_t.append(start)
        basal_r.append(basal0 * s)
        for d in range(patient.block_days + 1):
            for hour, grams, bolused in DAILY_MEALS:
                t = start + d * MIN_PER_DAY + hour * 60.0 + rng.uniform(-30.0, 30.0)
                eaten = grams * rng.lognormal(0.0, 0.25)
                meal_t.append(t)
                meal_g.append(eaten)
                if bolused and s > 0 and rng.uniform() > 0.1:
                    counted = eaten * rng.lognormal(0.0, 0.3)
                    bolus_t.append(t)
                    bolus_u.append(s * counted / carb_ratio)
    inputs = Inputs(
        weight_kg=patient.weight_kg,
        meal_times=meal_t,
        meal_carbs_g=meal_g,
        bolus_times=bolus_t,
        bolus_u=bolus_u,
        basal_times=basal_t,
        basal_u_per_h=basal_r,
    )
    return inputs, scale


def run_demo(
    patient: DemoPatient | None = None, *, quick: bool = False, seed: int = 0
) -> DemoResult:
    """Simulate the demo recipient before and after transplant.

    Args:
        patient: The virtual recipient (default `DemoPatient()`).
        quick: One CGM day per visit instead of seven.
        seed: Seed of the day-to-day variation of meals and boluses.

    Returns:
        The per-visit table (B, mean glucose, time in ranges, GMI, insulin) and the
        traces for the figure.
    """
    patient = patient or DemoPatient()
    if quick:
        patient = dataclasses.replace(patient, block_days=1)
    start = time.perf_counter()
    params = Params()
    visits = np.asarray(patient.visits, dtype=float)
    b_visits = np.asarray(patient.graft(jnp.asarray(visits + 0.5 * patient.block_days)))
    inputs, scale = _visit_inputs(
        patient, params, b_visits, np.random.default_rng(seed)
    )
    window_days = (visits[:, None] + np.arange(patient.block_days)[None, :]).ravel()
    ts = day_windows(jnp.asarray(window_days), step_min=5.0)
    sims, b = jax.jit(
        lambda ts: simulate_followup(
            params, patient.graft, inputs, ts, warmup_min=720.0
        )
    )(ts)
    if not bool(jnp.all(sims.successful)):
        raise RuntimeError("the demo simulation failed; please report this as a bug")
    cgm = np.asarray(sims.cgm)
    table = []
    for k, visit in enumerate(patient.visits):
        rows = slice(k * patient.block_days, (k + 1) * patient.block_days)
        glucose = cgm[rows, :-1].ravel()  # drop each day's closing 24:00 sample
        m = cgm_metrics(glucose, step_min=5.0)
        t0, t1 = visit * MIN_PER_DAY, (visit + patient.block_days) * MIN_PER_DAY
        insulin = float(inputs.total_insulin_u(t0, t1)) / patient.block_days
        table.append(
            {
                "visit_day": float(visit),
                "graft_b": float(np.mean(np.asarray(b)[rows])),
                "mean_glucose_mg_dl": m["mean_mg_dl"],
                "tir_70_180_percent": m["tir_70_180_percent"],
                "tbr_below_70_percent": m["tbr_below_70_percent"],
                "gmi_percent": m["gmi_percent"],
                "insulin_u_per_day": insulin,
                "insulin_u_per_kg_day": insulin / patient.weight_kg,
                "insulin_fraction_of_baseline": float(scale[k]),
            }
        )
    graft_days = np.arange(visits.min() - 16.0, visits.max() + 30.0, 1.0)
    graft_b = np.asarray(patient.graft(jnp.asarray(graft_days)))
    return DemoResult(
        table=table,
        window_days=window_days,
        ts=np.asarray(ts),
        cgm=cgm,
        graft_days=graft_days,
        graft_b=graft_b,
        seconds=time.perf_counter() - start,
    )


def plot_demo(result: DemoResult, path: str | Path) -> Path:
    """Save the demo figure (glucose per visit, graft function, insulin) atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ._io import atomic_path

    fig, axes = plt.subplots(3, 1, figsize=(9, 10), constrained_layout=True)
    ax = axes[0]
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(result.table)))
    block = len(result.window_days) // len(result.table)
    for k, (row, colour) in enumerate(zip(result.table, colours, strict=True)):
        trace = result.cgm[k * block : (k + 1) * block, :-1].ravel()
        hours = np.arange(trace.size) * 5.0 / 60.0
        ax.plot(hours, trace, color=colour, lw=1.2, label=f"day {row['visit_day']:.0f}")
    ax.axhspan(70, 180, color="tab:green", alpha=0.08)
    ax.set(xlabel="hours into the visit's CGM block", ylabel="CGM glucose [mg/dL]")
    ax.set_title("Glucose at each visit (shaded: 70–180 mg/dL)")
    ax.legend(ncol=len(result.table), fontsize=8)
    ax = axes[1]
    ax.plot(result.graft_days, result.graft_b, color="tab:purple")
    for row in result.table:
        ax.axvline(row["visit_day"], color="grey", ls=":", lw=0.8)
    ax.set(xlabel="days since infusion", ylabel="graft function B [× healthy]")
    ax.set_title("Graft functional capacity (dotted: visits)")
    ax = axes[2]
    days = [f"{row['visit_day']:.0f}" for row in result.table]
    ax.bar(days, [row["insulin_u_per_day"] for row in result.table], color="tab:orange")
    ax.set(xlabel="visit day", ylabel="exogenous insulin [U/day]")
    ax.set_title("Insulin after titration")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
