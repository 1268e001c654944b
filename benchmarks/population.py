"""Population fit speed and accuracy: all patients at once vs one after another.

A zimislecel-like virtual cohort (`isletfit.cohort.simulate_cohort`) is written to CSV
and read back; then, in the same process and on the same patients:

- ``population_fit_s``: `isletfit.fitting.fit_population` (Laplace-EM, every E-step one
  vmapped, jit-compiled program for all patients), first call, compilation included;
  ``population_rounds`` EM rounds, ``population_round_s`` the mean wall time of a
  (compiled) round and ``population_last_change`` the largest change of μ or ω in the
  last one;
- ``population_sharded_fit_s``: the same with the patients sharded over the JAX devices
  (on a CPU, all cores but one exposed as devices with ``jax_num_cpu_devices``), when
  there are several;
- the baseline, ``independent_fits_s``: `fit_patient` on each patient in turn (the
  first call compiles), ``independent_fit_warm_s`` the mean of the compiled calls
  (``--baseline-patients k``: only the first k are fitted, and the total is the first
  call plus n − 1 times the warm mean; the accuracy figures are then over those k);
- ``population_over_independent_time_ratio`` (and the sharded one),
  ``population_round_over_independent_warm_ratio`` (one compiled E-step of all patients
  over the compiled fits of all patients one by one), and
  ``patient_days_per_s`` of each (CGM days fitted per second of wall time);
- accuracy against the simulation's truth, for both: RMS error of log B at the
  mid-day of each post-infusion visit (``*_log_b_rmse``), coverage of the true B by
  the 95 % bands there (``*_band_coverage``), and RMS error of log ``vmx``, the
  best-identified parameter (``*_log_vmx_rmse``).

``--quick``: 8 patients x 2 visits (day -14 and 180) x 2 CGM days, at most 10 rounds
(about 4 minutes on a 2-core CPU, most of it compilation). The full run is scaled
down from the 64 patients x 6 visits x 14 days of the issue to what runs in under
10 minutes on a 2-core CPU: 16 patients x 3 visits (day -14, 90, 180) x 7 days, at
most 20 rounds; pass ``--patients``/``--days`` for other sizes (on a GPU, the issue's
size).

Run: ``python benchmarks/population.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from common import machine, report

jax.config.update("jax_enable_x64", True)
# On a CPU, expose all cores but one as devices, for the sharded population fit (the
# other fits run on the first device). As many devices as cores can deadlock XLA's CPU
# runtime (see `isletfit.fitting._population._warn_cpu_mesh`), so on a 2-core machine
# there is one device and no sharded run.
jax.config.update("jax_num_cpu_devices", max(1, (os.cpu_count() or 1) - 1))

from isletfit.cohort import (  # noqa: E402
    VisitPlan,
    simulate_cohort,
    write_cohort,
    zimislecel_like,
)
from isletfit.data import read, read_patients  # noqa: E402
from isletfit.fitting import fit_patient, fit_population  # noqa: E402


def _accuracy(results: dict, cohort, index: dict) -> dict:
    """log-B RMS error and band coverage at post-infusion visits; log vmx error."""
    err, covered, vmx_err = [], [], []
    for pid, res in results.items():
        i = index[pid]
        info = res.info
        days = np.asarray(info.day_index) - info.study_day_offset
        for d in np.unique(np.floor(days)):
            if d < 0:
                continue
            mean, sd = (float(x[0]) for x in res.log_b_at(np.array([d + 0.5])))
            truth = float(np.interp(d + 0.5, cohort.truth_day, cohort.b_true[i]))
            err.append(mean - np.log(truth))
            covered.append(abs(mean - np.log(truth)) <= 1.959964 * sd)
        k = res.estimated.index("vmx")
        vmx_err.append(res.theta[k] - np.log(cohort.patients.params.vmx[i]))
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    return {
        "log_b_rmse": rms(err),
        "band_coverage": float(np.mean(covered)),
        "log_vmx_rmse": rms(vmx_err),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small version")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--patients", type=int, default=None, help="override n")
    parser.add_argument("--days", type=int, default=None, help="CGM days per visit")
    parser.add_argument(
        "--baseline-patients",
        type=int,
        default=None,
        help="fit only this many patients one by one and extrapolate the baseline",
    )
    args = parser.parse_args()
    n = args.patients or (8 if args.quick else 16)
    days = args.days or (2 if args.quick else 7)
    visits = (-14, 180) if args.quick else (-14, 90, 180)
    rounds = 10 if args.quick else 20
    figures: dict = {f"machine_{k}": v for k, v in machine().items()}
    figures.update(
        patients=n,
        visits=len(visits),
        days_per_visit=days,
        devices=jax.device_count(),
    )

    start = time.perf_counter()
    plan = VisitPlan(visit_days=visits, block_days=days, checkin_every_days=0)
    cohort = simulate_cohort(
        zimislecel_like(), n, key=jax.random.key(2024), visits=plan, chunk_size=n
    )
    figures["cohort_simulate_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_cohort(cohort, tmp)
        patients = [read(f) for f in sorted(paths["cgm"].glob("*.csv"))]
        sheet = read_patients(paths["patients"])
    index = {pid: i for i, pid in enumerate(cohort.patient_id)}
    patient_days = n * len(visits) * days
    key = jax.random.key(0)

    # ---- all patients at once
    seconds = []
    start = time.perf_counter()
    pop = fit_population(
        patients,
        sheet=sheet,
        key=key,
        starts=1,
        max_rounds=rounds,
        on_round=lambda r: seconds.append((r.seconds, r.change)),
    )
    figures["population_fit_s"] = time.perf_counter() - start
    figures["population_rounds"] = pop.rounds
    figures["population_converged"] = pop.converged
    figures["population_round_s"] = float(np.mean([t for t, _ in seconds[1:]]))
    figures["population_last_change"] = seconds[-1][1] if seconds else float("nan")
    figures["population_failed"] = len(pop.failures)
    figures["population_patient_days_per_s"] = (
        patient_days / figures["population_fit_s"]
    )
    for name, value in _accuracy(pop.results, cohort, index).items():
        figures[f"population_{name}"] = value
    for name, sh in zip(pop.estimated, pop.shrinkage, strict=True):
        figures[f"population_shrinkage_{name}"] = float(sh)

    if jax.device_count() > 1:
        mesh = jax.make_mesh((jax.device_count(),), ("patients",))
        start = time.perf_counter()
        sharded = fit_population(
            patients, sheet=sheet, key=key, starts=1, max_rounds=rounds, mesh=mesh
        )
        figures["population_sharded_fit_s"] = time.perf_counter() - start
        figures["sharded_minus_unsharded_max_abs_mu"] = float(
            np.max(np.abs(sharded.mu - pop.mu))
        )

    # ---- the baseline: one patient after another
    rows = sheet.set_index("patient_id")
    keys = jax.random.split(key, n)
    times, results = [], {}
    k_base = min(n, args.baseline_patients or n)
    figures["baseline_patients"] = k_base
    for patient, k in zip(patients[:k_base], keys[:k_base], strict=True):
        row = rows.loc[patient.patient_id]
        start = time.perf_counter()
        results[patient.patient_id] = fit_patient(
            patient,
            weight_kg=float(row["weight_kg"]),
            transplant_date=row["transplant_date"],
            starts=1,
            key=k,
        )
        times.append(time.perf_counter() - start)
    figures["independent_fit_warm_s"] = float(np.mean(times[1:] or times))
    # with --baseline-patients, the first (compiling) fit plus n - 1 warm ones
    figures["independent_fits_s"] = (
        float(np.sum(times))
        if k_base == n
        else times[0] + (n - 1) * figures["independent_fit_warm_s"]
    )
    figures["independent_patient_days_per_s"] = (
        patient_days / figures["independent_fits_s"]
    )
    for name, value in _accuracy(results, cohort, index).items():
        figures[f"independent_{name}"] = value

    # like for like, both compiled: one E-step of all patients vs a fit of each
    figures["population_round_over_independent_warm_ratio"] = figures[
        "population_round_s"
    ] / (n * figures["independent_fit_warm_s"])
    figures["population_over_independent_time_ratio"] = (
        figures["population_fit_s"] / figures["independent_fits_s"]
    )
    if "population_sharded_fit_s" in figures:
        figures["population_sharded_over_independent_time_ratio"] = (
            figures["population_sharded_fit_s"] / figures["independent_fits_s"]
        )
    report(figures, as_json=args.json, title="isletfit population fit")


if __name__ == "__main__":
    main()
