"""Virtual-cohort simulation speed and memory: patient-days per second, peak RSS.

Simulates the zimislecel-like cohort (`isletfit.cohort.simulate_cohort`) with the
default visit plan — 6 visits x 14 CGM days, plus one-day titration check-ins every
14 days between visits (25 more days) — in float64 with the default solver (the fixed
grid, `isletfit.model.FixedGrid`). Reports:

- ``compile_s``: the first chunk's compilation (measured on a first call of one chunk);
- ``block_patient_days_per_s``: CGM-block patient-days (the 6 x 14 days reported per
  patient) per second of the compiled simulation of all patients, and
  ``simulated_patient_days_per_s`` counting the check-in days too;
- ``peak_rss_mib``: the process's peak resident memory (``resource.getrusage``);
- ``failed_patients``;
- without ``--quick``, the same with the adaptive solver (diffrax Tsit5, rtol = atol =
  1e-6; ``adaptive_*``) in the same process, the ratio, and the CGM readings of the
  two cohorts compared (same patients and days; they differ by integration only).

Default: 1,000 patients in chunks of 250. ``--quick``: 32 patients in chunks of 16.
On a CPU every core is exposed as a JAX device (``jax_num_cpu_devices``) and each
chunk is split over them.

Run: ``python benchmarks/cohort.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import diffrax as dfx
import jax
import numpy as np

from common import machine, report

jax.config.update("jax_enable_x64", True)
# On a CPU, expose every core as a device: simulate_cohort splits each chunk over
# the devices (shard_map), so both cores of the CI machine work.
jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)

from isletfit.cohort import VisitPlan, simulate_cohort, zimislecel_like  # noqa: E402


def _peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small version, < 1 min")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--patients", type=int, default=None, help="override n")
    parser.add_argument("--chunk", type=int, default=None, help="override chunk size")
    args = parser.parse_args()
    n = args.patients or (32 if args.quick else 1000)
    chunk = args.chunk or (16 if args.quick else 250)
    plan = VisitPlan()
    sched = plan.schedule()
    block_days = int((sched["visit"] >= 0).sum())
    all_days = len(sched["day"])
    population = zimislecel_like()

    def run(**kw):
        """Compilation [s] (first chunk), simulation [s] of all n, and the cohort."""
        start = time.perf_counter()
        simulate_cohort(
            population, chunk, key=jax.random.key(1), chunk_size=chunk, **kw
        )
        first = time.perf_counter() - start
        start = time.perf_counter()
        cohort = simulate_cohort(
            population, n, key=jax.random.key(0), chunk_size=chunk, **kw
        )
        seconds = time.perf_counter() - start
        return max(first - seconds * chunk / n, 0.0), seconds, cohort

    compile_s, seconds, cohort = run()
    figures: dict = {f"machine_{k}": v for k, v in machine().items()}
    figures.update(
        {
            "patients": n,
            "chunk_size": chunk,
            "visits": len(plan.visit_days),
            "block_days_per_visit": plan.block_days,
            "simulated_days_per_patient": all_days,
            "compile_s": compile_s,
            "simulate_s": seconds,
            "block_patient_days_per_s": n * block_days / seconds,
            "simulated_patient_days_per_s": n * all_days / seconds,
            "solver_steps_per_patient_day": float(cohort.num_steps.mean()) / all_days,
            "peak_rss_mib": _peak_rss_mib(),
            "failed_patients": int(cohort.failed.sum()),
        }
    )
    if not args.quick:
        compile_a, seconds_a, adaptive = run(solver=dfx.Tsit5())
        both = ~(cohort.failed | adaptive.failed)
        diff = np.abs(cohort.cgm[both] - adaptive.cgm[both])
        figures.update(
            {
                "adaptive_compile_s": compile_a,
                "adaptive_simulate_s": seconds_a,
                "adaptive_block_patient_days_per_s": n * block_days / seconds_a,
                "adaptive_failed_patients": int(adaptive.failed.sum()),
                "grid_over_adaptive_speed_ratio": seconds_a / seconds,
                "cgm_max_difference_mg_dl": float(np.nanmax(diff)),
                "cgm_fraction_of_readings_differing": float(np.nanmean(diff > 0)),
            }
        )
    report(figures, as_json=args.json, title="isletfit virtual cohort simulation")


if __name__ == "__main__":
    main()
