"""Transplant endpoints: each category and each "not assessable" case, by hand."""

import math

import numpy as np
import pandas as pd
import pytest

import isletfit.metrics as M
from isletfit import InputError

NA = M.EndpointResult.NOT_ASSESSABLE
assert NA == "not assessable"
MMOL = 18.016  # mg/dL per mmol/L


def _assert_not_assessable(r, *missing):
    assert r.category == NA and not r.assessable and r.value is None
    for name in missing:
        assert name in r.missing, (name, r.missing)
    assert r.reason


# --- Igls 1.0 -------------------------------------------------------------------------

GRAFT = dict(c_peptide_fasting_nmol_l=0.5, baseline_c_peptide_fasting_nmol_l=0.02)


def test_igls1_optimal():
    r = M.igls_1(
        hba1c_percent=6.0, severe_hypo_per_year=0.0, insulin_u_per_day=0.0, **GRAFT
    )
    assert r.category == "optimal" and r.assessable
    assert r.details["glycaemia_source"] == "HbA1c"
    assert r.inputs["hba1c_percent"] == 6.0


def test_igls1_good():
    # 10 U/day vs baseline 40 (25 % < 50 %); 10 / 70 kg = 0.14 U/kg/day < 0.5
    r = M.igls_1(
        hba1c_percent=6.8,
        severe_hypo_per_year=0.0,
        insulin_u_per_day=10.0,
        weight_kg=70.0,
        baseline_insulin_u_per_day=40.0,
        **GRAFT,
    )
    assert r.category == "good"


def test_igls1_good_needs_both_insulin_rules():
    # 40 U/day = 40 % of baseline 100, but 40 / 70 = 0.57 U/kg/day >= 0.5 -> not good;
    # severe hypos fell (0 < 3) -> marginal
    r = M.igls_1(
        hba1c_percent=6.8,
        severe_hypo_per_year=0.0,
        insulin_u_per_day=40.0,
        weight_kg=70.0,
        baseline_insulin_u_per_day=100.0,
        baseline_severe_hypo_per_year=3.0,
        **GRAFT,
    )
    assert r.category == "marginal"


def test_igls1_marginal():
    r = M.igls_1(
        hba1c_percent=7.5,
        severe_hypo_per_year=1.0,
        insulin_u_per_day=30.0,
        weight_kg=70.0,
        baseline_insulin_u_per_day=40.0,
        baseline_severe_hypo_per_year=4.0,
        **GRAFT,
    )
    assert r.category == "marginal"


def test_igls1_failure_without_graft_c_peptide_even_with_missing_hba1c():
    # fasting C-peptide 0.1 nmol/L <= 0.17: no graft function, whatever else
    r = M.igls_1(c_peptide_fasting_nmol_l=0.1)
    assert r.category == "failure" and r.assessable


def test_igls1_failure_when_c_peptide_at_baseline():
    r = M.igls_1(
        hba1c_percent=6.0,
        severe_hypo_per_year=0.0,
        insulin_u_per_day=0.0,
        c_peptide_stimulated_nmol_l=0.4,
        baseline_c_peptide_stimulated_nmol_l=0.4,
    )
    assert r.category == "failure"


def test_igls1_failure_when_no_reduction_in_severe_hypos():
    r = M.igls_1(
        hba1c_percent=7.5,
        severe_hypo_per_year=3.0,
        insulin_u_per_day=30.0,
        baseline_severe_hypo_per_year=3.0,
        **GRAFT,
    )
    assert r.category == "failure"
    assert "severe hypos" in r.reason


def test_igls1_uses_gmi_when_hba1c_missing():
    r = M.igls_1(
        gmi_percent=6.2, severe_hypo_per_year=0.0, insulin_u_per_day=0.0, **GRAFT
    )
    assert r.category == "optimal"
    assert r.details["glycaemia_source"] == "GMI"
    # HbA1c wins when both are given
    r = M.igls_1(
        hba1c_percent=6.8,
        gmi_percent=6.2,
        severe_hypo_per_year=0.0,
        insulin_u_per_day=0.0,
        **GRAFT,
    )
    assert r.details["glycaemia_source"] == "HbA1c" and r.category != "optimal"


def test_igls1_not_assessable_cases():
    # no HbA1c and no GMI while everything else says optimal
    r = M.igls_1(severe_hypo_per_year=0.0, insulin_u_per_day=0.0, **GRAFT)
    _assert_not_assessable(r, "hba1c_percent", "gmi_percent")
    # C-peptide above 0.17 but no baseline to compare with
    r = M.igls_1(
        hba1c_percent=6.0,
        severe_hypo_per_year=0.0,
        insulin_u_per_day=0.0,
        c_peptide_fasting_nmol_l=0.5,
    )
    _assert_not_assessable(r, "baseline_c_peptide_fasting_nmol_l")
    # no C-peptide at all
    r = M.igls_1(hba1c_percent=6.0, severe_hypo_per_year=0.0, insulin_u_per_day=0.0)
    _assert_not_assessable(r, "c_peptide_fasting_nmol_l", "c_peptide_stimulated_nmol_l")
    # good needs the weight for U/kg/day
    r = M.igls_1(
        hba1c_percent=6.8,
        severe_hypo_per_year=0.0,
        insulin_u_per_day=10.0,
        baseline_insulin_u_per_day=40.0,
        **GRAFT,
    )
    _assert_not_assessable(r, "weight_kg")
    assert "weight_kg" not in r.missing or "insulin_u_per_day" not in r.missing
    # marginal needs the baseline severe-hypo rate
    r = M.igls_1(hba1c_percent=7.5, severe_hypo_per_year=1.0, **GRAFT)
    _assert_not_assessable(r, "baseline_severe_hypo_per_year")


# --- Igls 2.0 -------------------------------------------------------------------------

BASE2 = dict(
    baseline_hba1c_percent=8.0,
    baseline_tir_70_180_percent=40.0,
    baseline_severe_hypo_per_year=3.0,
    baseline_tbr_below_54_percent=5.0,
)


@pytest.mark.parametrize(
    ("a1c", "tir", "she", "tbr", "expected"),
    [
        (6.2, 85.0, 0.0, 0.0, "optimal"),
        (6.8, 75.0, 0.0, 0.5, "good"),
        (6.2, 85.0, 0.0, 0.5, "good"),  # time < 54 not 0 % -> not optimal
        (7.5, 55.0, 1.0, 2.0, "marginal"),
        # TIR < 70 -> not good, but better than baseline -> marginal
        (6.8, 65.0, 0.0, 0.5, "marginal"),
        (8.2, 55.0, 1.0, 2.0, "failure"),  # HbA1c worse than baseline
        (7.5, 38.0, 1.0, 2.0, "failure"),  # TIR not above baseline
        (7.5, 55.0, 3.0, 2.0, "failure"),  # severe hypos not reduced
    ],
)
def test_igls2_categories(a1c, tir, she, tbr, expected):
    r = M.igls_2(
        hba1c_percent=a1c,
        tir_70_180_percent=tir,
        severe_hypo_per_year=she,
        tbr_below_54_percent=tbr,
        **BASE2,
    )
    assert r.category == expected, r.reason


def test_igls2_gmi_and_not_assessable():
    r = M.igls_2(
        gmi_percent=6.3,
        tir_70_180_percent=85.0,
        severe_hypo_per_year=0.0,
        tbr_below_54_percent=0.0,
    )
    assert r.category == "optimal" and r.details["glycaemia_source"] == "GMI"
    # not optimal (HbA1c 6.8), good needs TIR
    r = M.igls_2(hba1c_percent=6.8, severe_hypo_per_year=0.0, tbr_below_54_percent=0.5)
    _assert_not_assessable(r, "tir_70_180_percent")
    # marginal needs the baseline TIR
    base = dict(BASE2, baseline_tir_70_180_percent=None)
    r = M.igls_2(
        hba1c_percent=7.5,
        tir_70_180_percent=55.0,
        severe_hypo_per_year=1.0,
        tbr_below_54_percent=2.0,
        **base,
    )
    _assert_not_assessable(r, "baseline_tir_70_180_percent")
    assert "tir_70_180_percent" not in r.missing


def test_igls2_zero_baseline_counts_as_not_worse():
    # severe hypos 0 now and at baseline: "fewer than baseline" holds (none to reduce)
    r = M.igls_2(
        hba1c_percent=7.5,
        tir_70_180_percent=55.0,
        severe_hypo_per_year=0.0,
        tbr_below_54_percent=0.0,
        baseline_hba1c_percent=8.0,
        baseline_tir_70_180_percent=40.0,
        baseline_severe_hypo_per_year=0.0,
        baseline_tbr_below_54_percent=0.0,
    )
    assert r.category == "marginal"


# --- Igls 2.0 beta-cell function ------------------------------------------------------


@pytest.mark.parametrize(
    ("insulin", "fasting", "stim", "expected"),
    [
        (0.0, None, None, "optimal"),
        (5.0, None, 0.30, "good"),
        (5.0, 0.08, None, "good"),
        (5.0, None, 0.12, "marginal"),
        (5.0, 0.05, None, "marginal"),
        (5.0, None, 0.05, "failure"),
        (5.0, 0.02, None, "failure"),
        (5.0, 0.08, 0.05, "good"),  # both measured: the better category wins
        (5.0, None, 0.17, "marginal"),  # 0.17 is not > 0.17
        (5.0, 0.07, None, "good"),  # fasting >= 0.07 is good
        (5.0, None, 0.10, "marginal"),
        (5.0, 0.04, None, "marginal"),
    ],
)
def test_igls2_beta_cell_function(insulin, fasting, stim, expected):
    r = M.igls_2_beta_cell_function(
        insulin_u_per_day=insulin,
        c_peptide_fasting_nmol_l=fasting,
        c_peptide_stimulated_nmol_l=stim,
    )
    assert r.category == expected, r.reason


def test_igls2_beta_cell_function_not_assessable():
    r = M.igls_2_beta_cell_function(c_peptide_stimulated_nmol_l=0.3)
    _assert_not_assessable(r, "insulin_u_per_day")
    r = M.igls_2_beta_cell_function(insulin_u_per_day=5.0)
    _assert_not_assessable(r, "c_peptide_fasting_nmol_l", "c_peptide_stimulated_nmol_l")
    r = M.igls_2_beta_cell_function(
        insulin_u_per_day=0.0, c_peptide_stimulated_nmol_l=0.3, other_therapy=True
    )
    assert r.category == "good"


# --- beta-score -----------------------------------------------------------------------


def test_beta_score_full_marks():
    # FG 90 mg/dL = 5.00 mmol/L (2), HbA1c 5.8 (2), no insulin (2), stimulated 0.5 (2)
    r = M.beta_score(
        fasting_glucose_mg_dl=90.0,
        hba1c_percent=5.8,
        insulin_u_per_day=0.0,
        c_peptide_stimulated_nmol_l=0.5,
    )
    assert r.value == 8.0 and r.assessable
    assert r.details["points"] == {
        "fasting_glucose": 2,
        "hba1c": 2,
        "insulin": 2,
        "c_peptide": 2,
    }


def test_beta_score_middle_and_low():
    # FG 110 mg/dL = 6.11 mmol/L (1), HbA1c 6.5 (1), 14 U / 70 kg = 0.2 U/kg (1),
    # stimulated 0.2 (1) -> 4
    r = M.beta_score(
        fasting_glucose_mg_dl=110.0,
        hba1c_percent=6.5,
        insulin_u_per_day=14.0,
        weight_kg=70.0,
        c_peptide_stimulated_nmol_l=0.2,
    )
    assert r.value == 4.0
    # FG 130 = 7.22 mmol/L (0), HbA1c 7.2 (0), 21 / 70 = 0.3 U/kg (0), stim 0.15 (1)
    # -> 1
    r = M.beta_score(
        fasting_glucose_mg_dl=130.0,
        hba1c_percent=7.2,
        insulin_u_per_day=21.0,
        weight_kg=70.0,
        c_peptide_stimulated_nmol_l=0.15,
    )
    assert r.value == 1.0


@pytest.mark.parametrize(
    ("kwargs", "component", "points"),
    [
        ({"fasting_glucose_mg_dl": 5.5 * MMOL}, "fasting_glucose", 2),
        ({"fasting_glucose_mg_dl": 5.6 * MMOL}, "fasting_glucose", 1),
        ({"fasting_glucose_mg_dl": 7.0 * MMOL}, "fasting_glucose", 0),
        ({"hba1c_percent": 6.1}, "hba1c", 2),
        ({"hba1c_percent": 6.2}, "hba1c", 1),
        ({"hba1c_percent": 7.0}, "hba1c", 0),
        ({"insulin_u_per_day": 17.5, "weight_kg": 70.0}, "insulin", 0),  # 0.25 U/kg
        ({"insulin_u_per_day": 17.0, "weight_kg": 70.0}, "insulin", 1),  # 0.243
        ({"oral_agents": True}, "insulin", 1),
        ({"c_peptide_stimulated_nmol_l": 0.3}, "c_peptide", 2),
        ({"c_peptide_stimulated_nmol_l": 0.1}, "c_peptide", 1),
        (
            {"c_peptide_stimulated_nmol_l": None, "c_peptide_fasting_nmol_l": 0.3},
            "c_peptide",
            2,
        ),
    ],
)
def test_beta_score_boundaries(kwargs, component, points):
    base = dict(
        fasting_glucose_mg_dl=90.0,
        hba1c_percent=5.8,
        insulin_u_per_day=0.0,
        c_peptide_stimulated_nmol_l=0.5,
    )
    r = M.beta_score(**(base | kwargs))
    assert r.details["points"][component] == points


def test_beta_score_zero_rule_and_not_assessable():
    # stimulated C-peptide < 0.1 -> 0 by definition, even with other inputs missing
    r = M.beta_score(c_peptide_stimulated_nmol_l=0.05)
    assert r.value == 0.0 and r.assessable
    # stimulated missing and fasting < 0.3: cannot score C-peptide
    full = dict(fasting_glucose_mg_dl=90.0, hba1c_percent=5.8, insulin_u_per_day=0.0)
    r = M.beta_score(**full, c_peptide_fasting_nmol_l=0.2)
    _assert_not_assessable(r, "c_peptide_stimulated_nmol_l (or fasting ≥ 0.3)")
    r = M.beta_score(
        **(full | {"hba1c_percent": None}), c_peptide_stimulated_nmol_l=0.5
    )
    _assert_not_assessable(r, "hba1c_percent")
    r = M.beta_score(
        **(full | {"insulin_u_per_day": 10.0}), c_peptide_stimulated_nmol_l=0.5
    )
    _assert_not_assessable(r, "weight_kg")
    assert r.missing == ("weight_kg",)
    r = M.beta_score(c_peptide_stimulated_nmol_l=0.5)
    _assert_not_assessable(
        r, "fasting_glucose_mg_dl", "hba1c_percent", "insulin_u_per_day"
    )


# --- BETA-2, SUIT, SUITO --------------------------------------------------------------


def test_beta2_by_hand():
    # CP 0.6 nmol/L, FG 5.5 mmol/L, HbA1c 5.5 %, no insulin:
    # sqrt(0.6 * 1) / (5.5 * 5.5) * 1000 = 0.774597 / 30.25 * 1000 = 25.6065
    r = M.beta2_score(
        fasting_c_peptide_nmol_l=0.6,
        fasting_glucose_mg_dl=5.5 * MMOL,
        hba1c_percent=5.5,
        insulin_u_per_day=0.0,
    )
    assert r.value == pytest.approx(25.6065, rel=1e-5)
    # 14 U/day / 70 kg = 0.2 U/kg/day; CP 0.5; FG 7.0 mmol/L; HbA1c 6.5:
    # sqrt(0.5 * 0.8) / (7 * 6.5) * 1000 = 0.632456 / 45.5 * 1000 = 13.9001
    r = M.beta2_score(
        fasting_c_peptide_nmol_l=0.5,
        fasting_glucose_mg_dl=7.0 * MMOL,
        hba1c_percent=6.5,
        insulin_u_per_day=14.0,
        weight_kg=70.0,
    )
    assert r.value == pytest.approx(13.9001, rel=1e-5)
    assert "unverified" in r.reason


def test_beta2_not_assessable():
    full = dict(
        fasting_c_peptide_nmol_l=0.5,
        fasting_glucose_mg_dl=100.0,
        hba1c_percent=6.0,
        insulin_u_per_day=0.0,
    )
    _assert_not_assessable(
        M.beta2_score(**(full | {"fasting_c_peptide_nmol_l": None})),
        "fasting_c_peptide_nmol_l",
    )
    _assert_not_assessable(
        M.beta2_score(**(full | {"insulin_u_per_day": 10.0})), "weight_kg"
    )
    _assert_not_assessable(
        M.beta2_score(**(full | {"insulin_u_per_day": None})), "insulin_u_per_day"
    )
    # insulin >= 1 U/kg/day is outside the formula (negative square root)
    r = M.beta2_score(**(full | {"insulin_u_per_day": 70.0, "weight_kg": 70.0}))
    assert r.category == NA and r.missing == () and "domain" in r.reason


def test_suit_suito_by_hand():
    # SUIT = 250 * 0.5 / (5.5 - 3.43) = 125 / 2.07 = 60.386
    r = M.suit_index(fasting_c_peptide_nmol_l=0.5, fasting_glucose_mg_dl=5.5 * MMOL)
    assert r.value == pytest.approx(60.386, rel=1e-4)
    # SUITO = 1500 * (0.331 nmol/L = 1 ng/mL) / (93 - 63) = 1500 / 30 = 50
    r = M.suito_index(fasting_c_peptide_nmol_l=0.331, fasting_glucose_mg_dl=93.0)
    assert r.value == pytest.approx(50.0)
    assert "> 26" in r.reason


def test_suit_suito_not_assessable():
    _assert_not_assessable(
        M.suit_index(fasting_glucose_mg_dl=100.0), "fasting_c_peptide_nmol_l"
    )
    _assert_not_assessable(
        M.suito_index(fasting_c_peptide_nmol_l=0.3), "fasting_glucose_mg_dl"
    )
    r = M.suit_index(fasting_c_peptide_nmol_l=0.5, fasting_glucose_mg_dl=3.43 * MMOL)
    assert r.category == NA and "3.43" in r.reason
    r = M.suito_index(fasting_c_peptide_nmol_l=0.5, fasting_glucose_mg_dl=63.0)
    assert r.category == NA and "63" in r.reason


# --- insulin independence -------------------------------------------------------------


def test_insulin_independence_ever():
    x = np.r_[[5.0, 5.0], np.zeros(14), [3.0], np.zeros(3)]
    r = M.insulin_independence(x)
    assert r.category == "insulin independent" and r.value == 14.0
    assert r.details["first_day"] == 15  # the 14th insulin-free day (index 2..15)
    r = M.insulin_independence(np.r_[np.zeros(13), [2.0], np.zeros(13)])
    assert r.category == "insulin dependent" and r.value == 13.0
    # unknown days that could complete a run: not assessable, naming them
    r = M.insulin_independence(np.r_[np.zeros(10), [np.nan] * 4, np.zeros(5)])
    _assert_not_assessable(r, "insulin on day 10", "insulin on day 13")
    # unknown days that could not: dependent
    r = M.insulin_independence(np.r_[np.zeros(10), [np.nan, 5.0], np.zeros(5)])
    assert r.category == "insulin dependent"
    # too short a series
    _assert_not_assessable(M.insulin_independence(np.zeros(10)))


def test_insulin_independence_at_end_and_dates():
    assert M.insulin_independence(np.r_[[9.0], np.zeros(14)], at_end=True).category == (
        "insulin independent"
    )
    r = M.insulin_independence(np.r_[np.zeros(20), [1.0], np.zeros(5)], at_end=True)
    assert r.category == "insulin dependent"  # although a 20-day run happened earlier
    r = M.insulin_independence(np.r_[np.zeros(13), [np.nan]], at_end=True)
    _assert_not_assessable(r, "insulin on day 13")
    # a date-indexed series with a missing date: that day is unknown
    dates = pd.date_range("2024-05-01", periods=20, freq="D").delete(5)
    s = pd.Series(0.0, index=dates)
    r = M.insulin_independence(s)
    assert r.category == "insulin independent" and r.value == 14.0
    assert r.details["first_day"] == "2024-05-20"
    with pytest.raises(InputError, match="daily_insulin"):
        M.insulin_independence(np.array([1.0, -1.0] * 10))


# --- one visit ------------------------------------------------------------------------


def _labs():
    rows = [
        # pre-transplant baseline (transplant 2024-01-15)
        ("2024-01-01", "hba1c", 8.0, "%"),
        ("2024-01-01", "c_peptide_fasting", 0.02, "nmol/L"),
        ("2024-01-01", "c_peptide_stimulated", 0.03, "nmol/L"),
        ("2023-12-01", "severe_hypo", 4.0, "events/year"),
        ("2024-01-01", "fasting_glucose", 180.0, "mg/dL"),
        # far from the visit: ignored
        ("2024-03-01", "hba1c", 7.9, "%"),
        # around the visit on 2024-07-15 (tie 5 days either side: the earlier wins)
        ("2024-07-10", "hba1c", 6.0, "%"),
        ("2024-07-20", "hba1c", 6.4, "%"),
        ("2024-07-15", "c_peptide_fasting", 500.0, "pmol/L"),  # = 0.5 nmol/L
        ("2024-07-15", "c_peptide_stimulated", 1.2, "nmol/L"),
        ("2024-07-15", "fasting_glucose", 5.3, "mmol/L"),  # = 95.48 mg/dL
        ("2024-07-15", "insulin_dose", 0.0, "U/day"),
        ("2024-07-15", "severe_hypo", 0.0, "events/year"),
        ("2024-07-15", "creatinine", 80.0, "umol/L"),  # unknown kinds are ignored
    ]
    df = pd.DataFrame(rows, columns=["date", "kind", "value", "unit"])
    df.insert(0, "patient_id", "p1")
    other = df.assign(patient_id="p2", value=99.0)
    return pd.concat([df, other], ignore_index=True)


PATIENT = pd.Series(
    {
        "patient_id": "p1",
        "weight_kg": 70.0,
        "transplant_date": "2024-01-15",
        "baseline_tdd_u": 40.0,
    }
)
CGM = {"gmi_percent": 6.1, "tir_70_180_percent": 90.0, "tbr_below_54_percent": 0.0}


def test_endpoints_for_visit_optimal_patient():
    insulin = pd.Series(0.0, index=pd.date_range("2024-06-01", "2024-07-15"))
    out = M.endpoints_for_visit(
        PATIENT,
        _labs(),
        visit_date="2024-07-15",
        cgm_metrics=CGM,
        daily_insulin=insulin,
    )
    assert set(out) == {
        "igls_1",
        "igls_2",
        "igls_2_beta_cell_function",
        "beta_score",
        "beta_2",
        "suit",
        "suito",
        "insulin_independence",
    }
    assert out["igls_1"].category == "optimal"
    assert out["igls_1"].inputs["hba1c_percent"] == 6.0  # the earlier of the tie
    assert out["igls_1"].inputs["baseline_insulin_u_per_day"] == 40.0  # patient sheet
    assert out["igls_1"].inputs["baseline_severe_hypo_per_year"] == 4.0
    assert out["igls_2"].category == "optimal"
    assert out["igls_2_beta_cell_function"].category == "optimal"
    # FG 5.3 mmol/L (2), HbA1c 6.0 (2), no insulin (2), fasting CP 0.5 >= 0.3 (2)
    assert out["beta_score"].value == 8.0
    # BETA-2 = sqrt(0.5 * 1) / (5.3 * 6.0) * 1000 = 0.707107 / 31.8 * 1000 = 22.236
    assert out["beta_2"].value == pytest.approx(22.236, rel=1e-4)
    # SUITO = 1500 * (0.5 / 0.331) / (95.485 - 63) = 69.75
    expected = 1500 * (0.5 / 0.331) / (5.3 * MMOL - 63)
    assert out["suito"].value == pytest.approx(expected)
    assert out["suit"].value == pytest.approx(250 * 0.5 / (5.3 - 3.43))
    assert out["insulin_independence"].category == "insulin independent"
    assert out["beta_score"].details["lab_dates"]["hba1c"] == "2024-07-10"
    row = M.flatten_endpoints(out)
    assert row["igls_1_category"] == "optimal" and row["beta_score_value"] == 8.0


def test_endpoints_for_visit_missing_things():
    labs = _labs()
    labs = labs[labs["kind"] != "c_peptide_stimulated"]
    no_tx = PATIENT.drop("transplant_date")
    out = M.endpoints_for_visit(no_tx, labs, visit_date="2024-07-15")
    # no transplant date -> no baseline C-peptide -> Igls 1.0 cannot confirm the graft
    _assert_not_assessable(out["igls_1"], "baseline_c_peptide_fasting_nmol_l")
    # GMI used? no CGM given and HbA1c present -> HbA1c; but no TIR -> not assessable
    _assert_not_assessable(out["igls_2"], "tir_70_180_percent")
    _assert_not_assessable(out["insulin_independence"], "daily insulin series")
    # far from any lab: everything missing
    out = M.endpoints_for_visit(PATIENT, labs, visit_date="2025-06-01")
    _assert_not_assessable(out["beta_2"], "fasting_c_peptide_nmol_l", "hba1c_percent")
    assert out["beta_2"].details["lab_dates"]["hba1c"] is None
    # a mapping as baseline
    out = M.endpoints_for_visit(
        PATIENT,
        labs,
        visit_date="2024-07-15",
        baseline={"c_peptide_fasting": 0.6, "severe_hypo": 2.0, "insulin_dose": 30.0},
    )
    assert out["igls_1"].category == "failure"  # 0.5 is not above the baseline 0.6


def test_endpoints_for_visit_input_errors():
    labs = _labs()
    labs.loc[0, "unit"] = "furlongs"
    with pytest.raises(InputError, match="unit"):
        M.endpoints_for_visit(PATIENT, labs, visit_date="2024-07-15")
    with pytest.raises(InputError, match="labs"):
        M.endpoints_for_visit(
            PATIENT, labs.drop(columns="kind"), visit_date="2024-07-15"
        )
    with pytest.raises(InputError, match="baseline"):
        M.endpoints_for_visit(
            PATIENT, _labs(), visit_date="2024-07-15", baseline="last"
        )


def test_hba1c_mmol_mol_is_converted():
    labs = _labs()
    i = labs.index[(labs["patient_id"] == "p1") & (labs["date"] == "2024-07-10")][0]
    labs.loc[i, ["value", "unit"]] = [42.0, "mmol/mol"]  # 42 / 10.929 + 2.15 = 5.99 %
    out = M.endpoints_for_visit(PATIENT, labs, visit_date="2024-07-15")
    assert out["igls_1"].inputs["hba1c_percent"] == pytest.approx(42 / 10.929 + 2.15)


def test_result_is_frozen():
    r = M.suito_index(fasting_c_peptide_nmol_l=0.331, fasting_glucose_mg_dl=93.0)
    with pytest.raises(AttributeError):
        r.value = 1.0
    with pytest.raises(TypeError):
        r.inputs["x"] = 1.0
    assert math.isfinite(r.value)
