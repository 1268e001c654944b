"""Fit one synthetic transplant recipient: simulate, fit, plot, compare with the truth.

A virtual adult with type 1 diabetes from the zimislecel-like population
(`isletfit.cohort.zimislecel_like`) receives a stem-cell islet infusion on day 0 and is
followed with CGM blocks at clinic visits while the clinic titrates insulin. Their record
is written as the generic CSV a clinic would export, read back, and fitted
(`isletfit.fitting.fit_patient`): the graft function B on every day with its 95 % band,
compared with the true B the simulator used, and the figure of the fit.

Run: ``python examples/fit_patient.py [--quick] [--seed S] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import numpy as np


def main(*, quick: bool = False, seed: int = 0, out: str | None = None):
    """Simulate, fit and plot one patient; return the per-visit comparison rows."""
    from isletfit.cohort import (
        VisitPlan,
        simulate_cohort,
        write_cohort,
        zimislecel_like,
    )
    from isletfit.data import read, read_patients
    from isletfit.fitting import fit_patient, visit_summary
    from isletfit.report import plot_fit

    plan = (
        VisitPlan(visit_days=(-14, 180), block_days=2)
        if quick
        else VisitPlan(visit_days=(-14, 90, 180, 365), block_days=7)
    )
    cohort = simulate_cohort(
        zimislecel_like(), 1, key=jax.random.key(seed), visits=plan
    )
    folder = Path(out or tempfile.mkdtemp(prefix="isletfit-example-"))
    paths = write_cohort(cohort, folder / "data")
    patient = read(sorted(paths["cgm"].glob("*.csv"))[0])
    row = read_patients(paths["patients"]).iloc[0]
    fit = fit_patient(
        patient,
        weight_kg=float(row["weight_kg"]),
        transplant_date=row["transplant_date"],
        starts=1 if quick else 2,
        key=jax.random.key(seed),
    )
    visits = visit_summary(fit, patient, patient_row=row)

    def truth(study_days):
        return np.interp(
            np.asarray(study_days, float) - 0.5, cohort.truth_day, cohort.b_true[0]
        )

    figure = plot_fit(fit, visits, folder / "fit.png", truth=truth)
    print(
        f"patient {patient.patient_id}: RMSE {fit.rmse_mg_dl:.1f} mg/dL, "
        f"CGM error SD {fit.sigma_mg_dl:.1f} mg/dL, {fit.seconds:.1f} s"
    )
    print(f"{'visit day':>9s} {'true B':>7s} {'estimate':>9s} {'95 % band':>13s}")
    rows = []
    for _, v in visits.iterrows():
        days = np.arange(v["study_day_start"], v["study_day_end"] + 1.0)
        true_b = float(np.mean(truth(days + 0.5)))
        rows.append(
            (
                v["study_day_start"],
                true_b,
                v["graft_b"],
                v["graft_b_lower"],
                v["graft_b_upper"],
            )
        )
        print(
            f"{v['study_day_start']:9.0f} {true_b:7.2f} {v['graft_b']:9.2f} "
            f"{v['graft_b_lower']:6.2f}-{v['graft_b_upper']:.2f}"
        )
    print(f"figure: {figure}")
    return rows


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two short visits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient")
    parser.add_argument(
        "--out", default=None, help="output folder (default: temporary)"
    )
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed, out=args.out)
