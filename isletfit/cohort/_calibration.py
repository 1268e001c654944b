"""Published zimislecel outcomes and their simulated counterparts.

The full-dose cohort of the zimislecel (VX-880) phase 1/2 trial had 12 participants
with at least one year of follow-up (Reichman et al., N Engl J Med 2025; interim figures
from the 2024 conference abstract; ../shared/reference/domain.md §7). A simulated
cohort is compared with them as the trial would be: cohorts of 12 patients, the
published statistic computed for each, and the median and 95 % interval over cohorts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
import pandas as pd

from .._custom_types import PRNGKeyArray
from ._cohort import Cohort

__all__ = [
    "PUBLISHED_ZIMISLECEL",
    "Outcome",
    "compare_with_published",
    "trial_outcomes",
]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One published outcome and how to compute it for a cohort.

    Attributes:
        name: Label.
        published: The published value.
        unit: Unit of the value.
        statistic: Function of a cohort's `trial_outcomes` rows -> value.
        source: Where the published value comes from (flagged if secondary).
        calibrated: Whether `zimislecel_like` was calibrated to it (else shown only).
    """

    name: str
    published: float
    unit: str
    statistic: Callable[[pd.DataFrame], float]
    source: str
    calibrated: bool = True


def _mean(col):
    return lambda df: float(df[col].mean())


def _count(col):
    return lambda df: float(df[col].sum())


def _dependent_fraction(df: pd.DataFrame) -> float:
    dep = df[~df["insulin_independent_365"]]
    return float(100.0 * dep["insulin_fraction_365"].mean()) if len(dep) else np.nan


_NEJM = "Reichman et al. NEJM 2025"
_INTERIM = "interim, May 2024 cut (NEJM 2025 abstract)"

#: The published outcomes of the 12 full-dose participants, with their statistic.
PUBLISHED_ZIMISLECEL: tuple[Outcome, ...] = (
    Outcome("HbA1c, baseline", 7.8, "%", _mean("hba1c_0"), _INTERIM),
    Outcome("time in range, baseline", 49.5, "%", _mean("tir_0"), _INTERIM),
    Outcome("HbA1c, day 180", 6.2, "%", _mean("hba1c_180"), _INTERIM),
    Outcome("time in range, day 180", 88.3, "%", _mean("tir_180"), _INTERIM),
    Outcome("time in range, day 365", 93.0, "%", _mean("tir_365"), "ADA/EASD 2025"),
    Outcome(
        "insulin independent, day 365",
        10.0,
        "of 12",
        _count("insulin_independent_365"),
        _NEJM,
    ),
    Outcome(
        "insulin reduction, day 365",
        92.0,
        "% (mean)",
        lambda df: float(100.0 * (1.0 - df["insulin_fraction_365"]).mean()),
        "ADA 2025 coverage",
    ),
    Outcome(
        "insulin of the others, day 365",
        47.0,
        "% of baseline",
        _dependent_fraction,
        _NEJM + " (cut by 70 % and 36 %)",
    ),
    Outcome(
        "severe hypoglycaemia, days 90-365",
        0.0,
        "patients",
        lambda df: float((df["severe_hypo_90_365"] > 0).sum()),
        _NEJM,
    ),
    Outcome("HbA1c < 7 %, day 365", 12.0, "of 12", _count("hba1c_below_7_365"), _NEJM),
    Outcome(
        "stimulated C-peptide, day 90",
        0.424,
        "nmol/L",
        _mean("c_peptide_stimulated_90"),
        "secondary summary (flagged)",
        calibrated=False,
    ),
    Outcome(
        "stimulated C-peptide, day 180",
        1.036,
        "nmol/L",
        _mean("c_peptide_stimulated_180"),
        "secondary summary (flagged)",
        calibrated=False,
    ),
    Outcome(
        "stimulated C-peptide, day 365",
        1.274,
        "nmol/L",
        _mean("c_peptide_stimulated_365"),
        "secondary summary (flagged)",
        calibrated=False,
    ),
)


def trial_outcomes(cohort: Cohort) -> pd.DataFrame:
    """Per-patient outcomes at the trial's time points (baseline, days 90/180/365).

    Args:
        cohort: A cohort whose visit plan has a baseline and visits on days 90, 180
            and 365.

    Returns:
        One row per patient: ``hba1c_0``, ``tir_0``, ``hba1c_180``, ``tir_180``,
        ``tir_365``, ``hba1c_365``, ``hba1c_below_7_365``, ``insulin_independent_365``,
        ``insulin_fraction_365``, ``severe_hypo_90_365`` (events on days 90-364),
        ``c_peptide_stimulated_{90,180,365}`` and ``failed``.
    """
    vt = cohort.visit_table()
    days = list(cohort.visits.visit_days)
    missing = [d for d in (90, 180, 365) if d not in days]
    if missing:
        raise ValueError(
            f"trial_outcomes: the visit plan has no visit on day(s) {missing}"
        )

    def at(day, col):
        return vt[vt["visit_day"] == day][col].to_numpy()

    base = days[0]
    return pd.DataFrame(
        {
            "patient_id": list(cohort.patient_id),
            "hba1c_0": at(base, "hba1c_percent"),
            "tir_0": at(base, "tir_70_180_percent"),
            "hba1c_180": at(180, "hba1c_percent"),
            "tir_180": at(180, "tir_70_180_percent"),
            "tir_365": at(365, "tir_70_180_percent"),
            "hba1c_365": at(365, "hba1c_percent"),
            "hba1c_below_7_365": at(365, "hba1c_percent") < 7.0,
            "insulin_independent_365": at(365, "insulin_independent").astype(bool),
            "insulin_fraction_365": at(365, "insulin_fraction_of_baseline"),
            "severe_hypo_90_365": cohort.severe_hypo_between(90, 365),
            "c_peptide_stimulated_90": at(90, "c_peptide_stimulated_nmol_l"),
            "c_peptide_stimulated_180": at(180, "c_peptide_stimulated_nmol_l"),
            "c_peptide_stimulated_365": at(365, "c_peptide_stimulated_nmol_l"),
            "failed": cohort.failed,
        }
    )


def compare_with_published(
    cohort: Cohort,
    *,
    cohort_size: int = 12,
    resamples: int | None = None,
    key: PRNGKeyArray | None = None,
    outcomes: tuple[Outcome, ...] = PUBLISHED_ZIMISLECEL,
) -> pd.DataFrame:
    """Published vs simulated outcomes: median and 95 % interval over cohorts of 12.

    Args:
        cohort: The simulated cohort (failed patients are left out).
        cohort_size: Patients per trial cohort.
        resamples: ``None``: split the patients, in order, into disjoint cohorts (the
            remainder is dropped). A number: draw that many cohorts at random without
            replacement within each (needs ``key``).
        key: PRNG key of the resampling.
        outcomes: The outcomes to compare.

    Returns:
        One row per outcome: ``outcome``, ``unit``, ``published``, ``median``,
        ``lower``, ``upper`` (2.5 and 97.5 percentiles), ``inside`` (published within
        [lower, upper]), ``calibrated``, ``source``, ``cohorts``.
    """
    df = trial_outcomes(cohort)
    df = df[~df["failed"]].reset_index(drop=True)
    n = len(df)
    if n < cohort_size:
        raise ValueError(
            f"compare_with_published: {n} usable patients, need at least {cohort_size}"
        )
    if resamples is None:
        k = n // cohort_size
        groups = [np.arange(i * cohort_size, (i + 1) * cohort_size) for i in range(k)]
    else:
        if key is None:
            raise ValueError("compare_with_published: resamples needs a key")
        seed = np.asarray(jax.random.key_data(key)).ravel()
        rng = np.random.default_rng(seed.astype(np.uint64))
        groups = [rng.choice(n, cohort_size, replace=False) for _ in range(resamples)]
    rows = []
    for o in outcomes:
        values = np.asarray([o.statistic(df.iloc[g]) for g in groups], dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            lo, med, hi = np.percentile(values, [2.5, 50.0, 97.5])
        else:
            lo = med = hi = np.nan
        rows.append(
            {
                "outcome": o.name,
                "unit": o.unit,
                "published": o.published,
                "median": med,
                "lower": lo,
                "upper": hi,
                "inside": bool(lo <= o.published <= hi),
                "calibrated": o.calibrated,
                "source": o.source,
                "cohorts": int(values.size),
            }
        )
    return pd.DataFrame(rows)
