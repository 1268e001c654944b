"""The zimislecel-like population reproduces the published full-dose outcomes."""

import jax
import numpy as np
import pytest

from isletfit.cohort import (
    PUBLISHED_ZIMISLECEL,
    compare_with_published,
    simulate_cohort,
    trial_outcomes,
    zimislecel_like,
)


@pytest.mark.slow
def test_published_outcomes_inside_the_simulated_95_percent_intervals():
    """200 virtual recipients; cohorts of 12 resampled from them (as in the trial)."""
    cohort = simulate_cohort(zimislecel_like(), 200, key=jax.random.key(2025))
    assert cohort.failed.sum() == 0
    table = compare_with_published(
        cohort, cohort_size=12, resamples=2000, key=jax.random.key(1)
    )
    print(table.to_string())
    calibrated = table[table["calibrated"]]
    assert len(calibrated) == sum(o.calibrated for o in PUBLISHED_ZIMISLECEL)
    outside = calibrated[~calibrated["inside"]]
    assert outside.empty, outside.to_string()
    # the trial's qualitative course: C-peptide by day 90 and rising to day 365
    per_patient = trial_outcomes(cohort)
    cpep = per_patient[
        [
            "c_peptide_stimulated_90",
            "c_peptide_stimulated_180",
            "c_peptide_stimulated_365",
        ]
    ].median()
    assert 0.1 < cpep.iloc[0] < cpep.iloc[1] < cpep.iloc[2]
    assert np.median(per_patient["tir_365"]) > np.median(per_patient["tir_0"]) + 30.0


def test_compare_with_published_on_a_fake_cohort_of_outcomes(monkeypatch):
    """The comparison machinery: disjoint cohorts and resampling."""
    import pandas as pd

    from isletfit.cohort import _calibration

    rng = np.random.default_rng(0)
    n = 48
    fake = pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(n)],
            "hba1c_0": rng.normal(7.8, 0.5, n),
            "tir_0": rng.normal(49.5, 10, n),
            "hba1c_180": rng.normal(6.2, 0.4, n),
            "tir_180": rng.normal(88, 5, n),
            "tir_365": rng.normal(93, 4, n),
            "hba1c_365": rng.normal(6.0, 0.3, n),
            "hba1c_below_7_365": np.ones(n, bool),
            "insulin_independent_365": rng.uniform(size=n) < 0.83,
            "insulin_fraction_365": rng.uniform(0, 0.6, n),
            "severe_hypo_90_365": np.zeros(n, int),
            "c_peptide_stimulated_90": np.full(n, 0.4),
            "c_peptide_stimulated_180": np.full(n, 1.0),
            "c_peptide_stimulated_365": np.full(n, 1.3),
            "failed": np.zeros(n, bool),
        }
    )
    monkeypatch.setattr(_calibration, "trial_outcomes", lambda cohort: fake)
    disjoint = compare_with_published(object(), cohort_size=12)
    assert (disjoint["cohorts"] == 4).all()
    table = compare_with_published(object(), resamples=500, key=jax.random.key(0))
    row = table.set_index("outcome").loc["HbA1c, baseline"]
    assert row["lower"] < 7.8 < row["upper"] and row["inside"]
    assert (
        table.set_index("outcome").loc["severe hypoglycaemia, days 90-365", "median"]
        == 0
    )
    with pytest.raises(ValueError, match="key"):
        compare_with_published(object(), resamples=10)
