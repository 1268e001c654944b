"""A virtual zimislecel trial: published outcomes vs simulated cohorts of 12.

Simulates ``n_cohorts`` independent cohorts of 12 virtual full-dose recipients drawn
from `isletfit.cohort.zimislecel_like` — adults with type 1 diabetes, impaired
awareness of hypoglycaemia and recurrent severe events on basal–bolus insulin, one
stem-cell-derived islet infusion on day 0, CGM blocks of 14 days at baseline and on
days 30, 90, 180, 270 and 365, labs and insulin titration by the clinic — and prints,
for each published outcome, the published value next to the median and 95 % interval
of the same statistic over the simulated cohorts.

Published figures: Reichman TW et al. Stem cell-derived, fully differentiated islets for
type 1 diabetes. N Engl J Med 393:858-868, 2025 (doi:10.1056/NEJMoa2506549) and its
interim report (baseline HbA1c 7.8 %, TIR 49.5 %; day 180 HbA1c 6.2 %, TIR 88.3 %; day
365 TIR ~93 %, 10/12 insulin independent, the others on 30 % and 64 % of their insulin,
no severe hypoglycaemia after day 90, all HbA1c < 7 %); see
../shared/reference/domain.md §7. Stimulated C-peptide means are from a secondary
summary (flagged) and shown for comparison only.

Run: ``python examples/virtual_trial.py [--quick] [--cohorts N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import time

import jax

COHORT_SIZE = 12


def main(
    *,
    n_cohorts: int = 20,
    seed: int = 0,
    block_days: int = 14,
    chunk_size: int = 128,
) -> None:
    """Simulate ``n_cohorts`` cohorts of 12 and print published vs simulated.

    Args:
        n_cohorts: Number of independent cohorts of 12 patients.
        seed: Seed of the virtual trial.
        block_days: CGM days per visit (14 in the trial).
        chunk_size: Patients simulated at once.
    """
    # imported here so that ``__main__`` can choose JAX's devices before isletfit
    # touches the backend
    from isletfit.cohort import (
        VisitPlan,
        compare_with_published,
        simulate_cohort,
        zimislecel_like,
    )

    n = n_cohorts * COHORT_SIZE
    print(
        f"Simulating {n_cohorts} cohort(s) of {COHORT_SIZE} zimislecel-like recipients "
        f"({block_days} CGM days per visit, seed {seed}) ..."
    )
    start = time.perf_counter()
    cohort = simulate_cohort(
        zimislecel_like(),
        n,
        key=jax.random.key(seed),
        visits=VisitPlan(block_days=block_days),
        chunk_size=min(chunk_size, n),
    )
    seconds = time.perf_counter() - start
    table = compare_with_published(cohort, cohort_size=COHORT_SIZE)
    width = max(len(s) for s in table["outcome"]) + 2
    print()
    print(
        f"{'outcome':<{width}}{'unit':<16}{'published':>10}   "
        f"{'simulated median [95 % interval]':<34}"
    )
    for row in table.itertuples():
        mark = "" if row.inside else "  <- outside"
        note = "" if row.calibrated else "  (not calibrated)"
        print(
            f"{row.outcome:<{width}}{row.unit:<16}{row.published:>10.3g}   "
            f"{row.median:>8.3g} [{row.lower:.3g}, {row.upper:.3g}]{mark}{note}"
        )
    inside = table[table["calibrated"]]["inside"]
    print()
    print(
        f"{int(inside.sum())} of {len(inside)} calibrated outcomes inside the "
        f"simulated 95 % interval over {int(table['cohorts'].max())} cohorts; "
        f"{int(cohort.failed.sum())} failed simulations; {seconds:.0f} s."
    )


if __name__ == "__main__":
    import os

    jax.config.update("jax_enable_x64", True)
    # expose every CPU core as a device: each chunk of patients is split over them
    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="two cohorts, 3 CGM days per visit"
    )
    parser.add_argument("--cohorts", type=int, default=20, help="cohorts of 12")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trial")
    args = parser.parse_args()
    if args.quick:
        main(n_cohorts=2, seed=args.seed, block_days=3)
    else:
        main(n_cohorts=args.cohorts, seed=args.seed)
