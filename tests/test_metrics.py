"""isletfit.metrics (numpy path and tables) against hand-computed values."""

import itertools
import types
import warnings

import numpy as np
import pandas as pd
import pytest

import isletfit.metrics as M
from isletfit import InputError

# A 12-reading profile that puts readings on every consensus boundary:
#   < 54: 50                       -> 1 reading
#   54 <= G < 70: 54, 69           -> 2
#   70 <= G <= 180: 70 100 140 141 180 -> 5   (of which 70 <= G <= 140: 70 100 140 -> 3)
#   180 < G <= 250: 181, 250       -> 2
#   > 250: 251, 300                -> 2
EDGES = np.array([50, 54, 69, 70, 100, 140, 141, 180, 181, 250, 251, 300], float)


def _bad_input(field):
    # InputError naming the field; with jaxtyping's runtime checks switched on
    # (--jaxtyping-packages) a TypeCheckError (a TypeError) may come first.
    return pytest.raises((InputError, TypeError), match=field)


def _f(g):
    # Kovatchev 1997: f(G) = 1.509 [(ln G)^1.084 - 5.381]
    return 1.509 * (np.log(g) ** 1.084 - 5.381)


# --- location, spread, GMI, eAG -------------------------------------------------------


def test_mean_sd_cv_j_gmi_by_hand():
    g = np.array([100.0, 120.0, 140.0, 160.0, 180.0])
    # mean = 700 / 5 = 140
    # squared deviations 1600 + 400 + 0 + 400 + 1600 = 4000; / (n - 1 = 4) = 1000
    sd = np.sqrt(1000.0)  # 31.6228
    assert M.mean_glucose(g) == pytest.approx(140.0)
    assert M.sd_glucose(g) == pytest.approx(sd)
    assert M.cv_percent(g) == pytest.approx(100 * sd / 140)  # 22.588 %
    assert M.j_index(g) == pytest.approx(0.001 * (140 + sd) ** 2)  # 29.454
    assert M.gmi_percent(g) == pytest.approx(3.31 + 0.02392 * 140)  # 6.6588 %


def test_gmi_published_value():
    # Bergenstal 2018: mean 154 mg/dL -> GMI 3.31 + 0.02392 * 154 = 6.99 %
    assert M.gmi_percent(np.full(10, 154.0)) == pytest.approx(6.99, abs=0.005)


def test_eag_adag_relation():
    # ADAG (Nathan 2008): eAG = 28.7 A1c - 46.7; 7 % -> 154.2 mg/dL, 6 % -> 125.5
    assert M.eag_from_hba1c(7.0) == pytest.approx(154.2)
    assert M.eag_from_hba1c(6.0) == pytest.approx(125.5)
    np.testing.assert_allclose(M.eag_from_hba1c(np.array([5.0, 8.0])), [96.8, 182.9])
    # GMI and eAG nearly invert each other around 7 %
    assert M.gmi_percent(np.full(3, M.eag_from_hba1c(7.0))) == pytest.approx(
        7.0, abs=0.01
    )


# --- time in ranges -------------------------------------------------------------------


def test_time_in_ranges_by_hand():
    b = M.time_in_ranges(EDGES)
    assert b["tbr_below_54_percent"] == pytest.approx(100 * 1 / 12)
    assert b["tbr_54_69_percent"] == pytest.approx(100 * 2 / 12)
    assert b["tbr_below_70_percent"] == pytest.approx(100 * 3 / 12)
    assert b["tir_70_180_percent"] == pytest.approx(100 * 5 / 12)
    assert b["titr_70_140_percent"] == pytest.approx(100 * 3 / 12)
    assert b["tar_181_250_percent"] == pytest.approx(100 * 2 / 12)
    assert b["tar_above_250_percent"] == pytest.approx(100 * 2 / 12)
    assert b["tar_above_180_percent"] == pytest.approx(100 * 4 / 12)
    partition = (
        b["tbr_below_54_percent"]
        + b["tbr_54_69_percent"]
        + b["tir_70_180_percent"]
        + b["tar_181_250_percent"]
        + b["tar_above_250_percent"]
    )
    assert partition == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("value", "inside", "outside"),
    [
        (54.0, ["tbr_54_69_percent", "tbr_below_70_percent"], ["tbr_below_54_percent"]),
        (53.9, ["tbr_below_54_percent", "tbr_below_70_percent"], ["tbr_54_69_percent"]),
        (70.0, ["tir_70_180_percent", "titr_70_140_percent"], ["tbr_below_70_percent"]),
        (69.9, ["tbr_54_69_percent"], ["tir_70_180_percent"]),
        (140.0, ["titr_70_140_percent", "tir_70_180_percent"], []),
        (140.1, ["tir_70_180_percent"], ["titr_70_140_percent"]),
        (
            180.0,
            ["tir_70_180_percent"],
            ["tar_above_180_percent", "tar_181_250_percent"],
        ),
        (
            180.1,
            ["tar_above_180_percent", "tar_181_250_percent"],
            ["tir_70_180_percent"],
        ),
        (
            250.0,
            ["tar_181_250_percent", "tar_above_180_percent"],
            ["tar_above_250_percent"],
        ),
        (250.1, ["tar_above_250_percent"], ["tar_181_250_percent"]),
    ],
)
def test_boundary_inclusivity(value, inside, outside):
    b = M.time_in_ranges(np.array([value]))
    for k in inside:
        assert b[k] == 100.0, k
    for k in outside:
        assert b[k] == 0.0, k


def test_percent_time_in_range_generic_bounds():
    g = np.array([70.0, 100.0, 180.0, 200.0])
    assert M.percent_time_in_range(g, lower=70.0, upper=180.0) == 75.0
    assert (
        M.percent_time_in_range(g, lower=70.0, upper=180.0, include_lower=False) == 50.0
    )
    assert (
        M.percent_time_in_range(g, lower=70.0, upper=180.0, include_upper=False) == 50.0
    )
    assert M.percent_time_in_range(g, upper=100.0) == 50.0
    assert M.percent_time_in_range(g) == 100.0


def test_censored_readings_count_at_their_limit():
    # Dexcom Low is stored at 40 mg/dL, High at 400 mg/dL (censored = -1 / +1)
    g = np.array([40.0, 40.0, 120.0, 400.0])
    b = M.time_in_ranges(g)
    assert b["tbr_below_54_percent"] == 50.0
    assert b["tar_above_250_percent"] == 25.0


# --- GRI ------------------------------------------------------------------------------


def test_gri_klonoff_definitions():
    # 100 readings: 1 < 54, 3 in 54-69, 81 in range, 10 in 181-250, 5 > 250
    g = np.r_[[45.0], [60.0] * 3, [120.0] * 81, [200.0] * 10, [300.0] * 5]
    out = M.gri(g)
    # hypo = VLow + 0.8 Low = 1 + 2.4 = 3.4; hyper = VHigh + 0.5 High = 5 + 5 = 10
    # GRI = 3.0*1 + 2.4*3 + 1.6*5 + 0.8*10 = 3 + 7.2 + 8 + 8 = 26.2 = 3*3.4 + 1.6*10
    assert out["gri_hypo"] == pytest.approx(3.4)
    assert out["gri_hyper"] == pytest.approx(10.0)
    assert out["gri"] == pytest.approx(26.2)


def test_gri_is_capped_at_100():
    # EDGES: VLow 8.33, Low 16.67, High 16.67, VHigh 16.67 %
    # hypo = 8.333 + 0.8 * 16.667 = 21.667; hyper = 16.667 + 0.5 * 16.667 = 25
    # 3 * 21.667 + 1.6 * 25 = 105 -> capped at 100
    out = M.gri(EDGES)
    assert out["gri_hypo"] == pytest.approx(21.6667, rel=1e-4)
    assert out["gri_hyper"] == pytest.approx(25.0)
    assert out["gri"] == 100.0


# --- Kovatchev risk -------------------------------------------------------------------


def test_risk_function_published_values():
    # f(112.5) ~ 0 by construction; r = 10 f^2 ~ 100 at both 20 and 600 mg/dL
    assert abs(M.risk_function(112.5)) < 1e-3
    assert 10 * M.risk_function(20.0) ** 2 == pytest.approx(100.0, abs=0.5)
    assert 10 * M.risk_function(600.0) ** 2 == pytest.approx(100.0, abs=0.5)
    assert M.risk_function(50.0) < 0 < M.risk_function(200.0)


def test_lbgi_hbgi_by_hand():
    g = np.array([50.0, 200.0])
    # f(50) = 1.509 ((ln 50)^1.084 - 5.381) = -1.50001 -> rl = 10 * 2.25004 = 22.5004
    # f(200) = 1.07725 -> rh = 11.6047
    # LBGI = (22.5004 + 0) / 2 = 11.2502; HBGI = (0 + 11.6047) / 2 = 5.8024
    assert M.lbgi(g) == pytest.approx(11.2502, rel=1e-4)
    assert M.hbgi(g) == pytest.approx(5.8024, rel=1e-4)
    assert M.lbgi(np.full(5, 112.5)) == pytest.approx(0.0, abs=1e-5)
    assert M.hbgi(np.full(5, 100.0)) == 0.0


def test_adrr_by_hand():
    # 60-min grid, day 0 = [50, 200], day 1 = [100, 300] (at 0 h and 1 h of each day)
    t = np.array([0.0, 60.0, 1440.0, 1500.0])
    g = np.array([50.0, 200.0, 100.0, 300.0])
    # day 0: max rl = r(50) = 22.5004, max rh = r(200) = 11.6047 -> 34.1052
    # day 1: max rl = r(100) = 0.48205, max rh = r(300) = 33.9520 -> 34.4340
    day0 = 10 * _f(50.0) ** 2 + 10 * _f(200.0) ** 2
    day1 = 10 * _f(100.0) ** 2 + 10 * _f(300.0) ** 2
    assert M.adrr(g, time_min=t) == pytest.approx((day0 + day1) / 2)
    assert M.adrr(g, time_min=t) == pytest.approx(34.2696, rel=1e-4)
    # a day whose readings are all masked does not count
    m = np.array([True, True, False, False])
    assert M.adrr(g, m, time_min=t) == pytest.approx(day0)


# --- MAGE -----------------------------------------------------------------------------


def _mage_reference(values):
    """Sequential MAGE of one day's observed values (smallest excursion first)."""
    v = np.asarray(values, float)
    if v.size < 2:
        return np.nan
    sd = np.std(v, ddof=1)
    v = [v[0], *[b for a, b in itertools.pairwise(v) if b != a]]
    tp = [v[0]]
    for i in range(1, len(v) - 1):
        if (v[i] - v[i - 1]) * (v[i + 1] - v[i]) < 0:
            tp.append(v[i])
    if len(v) > 1:
        tp.append(v[-1])
    while len(tp) >= 2:
        amps = [abs(b - a) for a, b in itertools.pairwise(tp)]
        k = int(np.argmin(amps))
        if amps[k] > sd:
            break
        if k == 0:
            del tp[0]
        elif k == len(amps) - 1:
            del tp[-1]
        else:
            del tp[k : k + 2]
    if len(tp) < 2:
        return np.nan
    return float(np.mean(np.abs(np.diff(tp))))


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        # all excursions 100 > SD (= sqrt(12000 / 4) = 54.8)
        ([100, 200, 100, 200, 100], 100.0),
        # turning points 100 200 190 210 100, amplitudes 100 10 20 110, SD = 55.2:
        # remove the smallest (10: 200 and 190) -> 100 210 100 -> MAGE = 110
        ([100, 200, 190, 210, 100], 110.0),
        # first excursion 105 -> 100 is 5 <= SD (49.2): drop the first point -> 100
        ([105, 100, 200, 100], 100.0),
        # plateaus collapse: 100 100 200 200 100 -> 100 200 100
        ([100, 100, 200, 200, 100], 100.0),
        # monotone interior points are not turning points: 100 150 200 100
        ([100, 150, 200, 100], 100.0),
    ],
)
def test_mage_by_hand(day, expected):
    g = np.asarray(day, float)
    assert M.mage(g, step_min=60.0) == pytest.approx(expected)
    assert _mage_reference(g) == pytest.approx(expected)


def test_mage_averages_days():
    # day 0: MAGE 100, day 1: MAGE 110 -> 105
    t = np.r_[np.arange(5) * 60.0, 1440 + np.arange(5) * 60.0]
    g = np.r_[[100, 200, 100, 200, 100], [100, 200, 190, 210, 100]].astype(float)
    assert M.mage(g, time_min=t) == pytest.approx(105.0)


def test_mage_undefined_cases():
    assert np.isnan(M.mage(np.full(10, 120.0)))  # flat day: no excursion
    assert np.isnan(M.mage(np.array([120.0])))
    assert np.isnan(M.mage(np.full(10, np.nan)))


@pytest.mark.parametrize("seed", range(6))
def test_mage_vectorised_equals_sequential_reference(seed):
    rng = np.random.default_rng(seed)
    n_days, per_day = 3, 96  # 15-min grid
    g = 140 + np.cumsum(rng.normal(0, 8, n_days * per_day))
    g = np.clip(g, 40, 400).round()  # rounding makes plateaus
    mask = rng.uniform(size=g.size) > 0.15
    daily = [
        _mage_reference(
            g[d * per_day : (d + 1) * per_day][mask[d * per_day : (d + 1) * per_day]]
        )
        for d in range(n_days)
    ]
    expected = np.nanmean(daily)
    assert M.mage(g, mask, step_min=15.0) == pytest.approx(expected, rel=1e-12)


# --- MODD and CONGA -------------------------------------------------------------------


def test_modd_by_hand():
    # 60-min grid: day 1 is day 0 + 10 mg/dL -> every 24-h difference is 10
    day0 = 100.0 + np.arange(24)
    g = np.r_[day0, day0 + 10.0]
    assert M.modd(g, step_min=60.0) == pytest.approx(10.0)
    # masking a reading removes its pair only
    m = np.ones(g.size, bool)
    m[30] = False
    assert M.modd(g, m, step_min=60.0) == pytest.approx(10.0)
    # differences of opposite sign: |+10| and |-30| -> mean 20
    g2 = np.r_[[100.0, 100.0], [110.0, 70.0]]
    assert M.modd(g2, step_min=720.0) == pytest.approx(20.0)


def test_modd_irregular_times_pairs_within_half_a_step():
    t = np.array([0.0, 5.0, 10.0, 1441.0, 1446.0, 1452.6])
    g = np.array([100.0, 110.0, 120.0, 130.0, 150.0, 999.0])
    # 1441 pairs with 0 (|1 min| <= 2.5), 1446 with 5; 1452.6 is 2.6 min from 10 -> none
    # MODD = (|130 - 100| + |150 - 110|) / 2 = 35
    assert M.modd(g, time_min=t, step_min=5.0) == pytest.approx(35.0)


def test_conga_by_hand():
    g = np.array([100.0, 110.0, 130.0, 160.0])
    # 1-h differences on a 60-min grid: 10, 20, 30; mean 20;
    # SD = sqrt((100 + 0 + 100) / 2) = 10
    assert M.conga(g, step_min=60.0) == pytest.approx(10.0)
    # 2-h differences: 30, 50; SD = sqrt((100 + 100) / 1) = 14.142
    assert M.conga(g, n_hours=2.0, step_min=60.0) == pytest.approx(np.sqrt(200.0))
    with _bad_input("n_hours"):
        M.conga(g, n_hours=0.0)


# --- masks, empty input, errors -------------------------------------------------------


def test_mask_and_nan_are_left_out():
    g = np.array([100.0, 1000.0, np.nan, 120.0])
    m = np.array([True, False, True, True])
    assert M.mean_glucose(g, m) == pytest.approx(110.0)
    assert M.cgm_metrics(g, m)["n_readings"] == 2


def test_all_masked_gives_nan_without_warnings():
    g = np.full(288, 120.0)
    m = np.zeros(288, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = M.cgm_metrics(g, m)
        batch = M.cgm_metrics_batch(np.stack([g, g]), np.stack([m, ~m]))
    assert out["percent_data"] == 0.0
    assert out["sufficient"] is False
    assert out["n_readings"] == 0
    for k, v in out.items():
        if k not in {"percent_data", "sufficient", "n_readings", "days"}:
            assert np.isnan(v), k
    assert np.isnan(batch["mean_mg_dl"][0]) and batch["mean_mg_dl"][1] == 120.0


def test_empty_input():
    out = M.cgm_metrics(np.zeros(0))
    assert out["percent_data"] == 0.0 and np.isnan(out["mean_mg_dl"])


def test_input_errors_name_the_argument():
    with _bad_input("glucose_mg_dl"):
        M.mean_glucose(np.array([100.0, -5.0]))
    with _bad_input("mask"):
        M.mean_glucose(np.ones(3) * 100, np.ones(4, bool))
    with _bad_input("time_min"):
        M.modd(np.ones(3) * 100, time_min=np.arange(4.0))
    with _bad_input("step_min"):
        M.modd(np.ones(3) * 100, step_min=0.0)
    with _bad_input("glucose_mg_dl"):
        M.cgm_metrics(np.ones((2, 3)) * 100)
    with _bad_input("glucose_mg_dl"):
        M.mean_glucose(5.0)


def test_unsorted_times_are_sorted():
    rng = np.random.default_rng(1)
    t = np.arange(0, 3 * 1440, 15.0)
    g = 140 + 40 * np.sin(t / 200) + rng.normal(0, 5, t.size)
    order = rng.permutation(t.size)
    a = M.cgm_metrics(g, time_min=t, step_min=15.0)
    b = M.cgm_metrics(g[order], time_min=t[order], step_min=15.0)
    for k in a:
        assert a[k] == pytest.approx(b[k], nan_ok=True), k


# --- data sufficiency -----------------------------------------------------------------


def test_data_sufficiency_rules():
    n = 20 * 288  # 20 days of 5-min readings; 70 % = 4032 readings
    g = np.full(n, 120.0)
    m = np.zeros(n, bool)
    m[:4032] = True  # exactly 70 %
    s = M.data_sufficiency(g, m)
    assert s["percent_data"] == pytest.approx(70.0)
    assert s["days"] == pytest.approx(20.0)
    assert s["sufficient"] is True
    m[4031] = False  # 69.98 %
    assert M.data_sufficiency(g, m)["sufficient"] is False
    # 13 days at 100 % is too short
    assert M.data_sufficiency(np.full(13 * 288, 120.0))["sufficient"] is False
    # 15-min sensor over 14 days
    assert M.data_sufficiency(np.full(14 * 96, 120.0), step_min=15.0)["sufficient"]
    # judged against a given period: one day of readings in a 2-day span -> 50 %
    s = M.data_sufficiency(np.full(288, 120.0), span_min=2880.0)
    assert s["percent_data"] == pytest.approx(50.0) and s["days"] == 2.0
    # all masked -> 0 %
    assert M.data_sufficiency(g, np.zeros(n, bool))["percent_data"] == 0.0


# --- everything at once, batch --------------------------------------------------------


def _random_cohort(n_patients, days, seed=0, step=5.0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(days * 1440 / step)) * step
    phase = rng.uniform(0, 1440, (n_patients, 1))
    g = 150 + 60 * np.sin(2 * np.pi * (t[None] + phase) / 360)
    g = g + np.cumsum(rng.normal(0, 2, (n_patients, t.size)), axis=1)
    g = np.clip(g, 40, 400)
    m = rng.uniform(size=g.shape) > 0.2
    return t, g, m


def test_batch_equals_loop():
    t, g, m = _random_cohort(4, 3, seed=2)
    m[1] = False  # one all-masked patient
    batch = M.cgm_metrics_batch(g, m, time_min=t)
    for i in range(g.shape[0]):
        single = M.cgm_metrics(g[i], m[i], time_min=t)
        assert set(single) == set(batch)
        for k, v in single.items():
            assert batch[k][i] == pytest.approx(v, nan_ok=True), k


def test_cgm_metrics_keys_and_single_functions_agree():
    t, g, m = _random_cohort(1, 2, seed=3)
    g, m = g[0], m[0]
    out = M.cgm_metrics(g, m, time_min=t)
    assert out["mean_mg_dl"] == pytest.approx(M.mean_glucose(g, m))
    assert out["sd_mg_dl"] == pytest.approx(M.sd_glucose(g, m))
    assert out["cv_percent"] == pytest.approx(M.cv_percent(g, m))
    assert out["lbgi"] == pytest.approx(M.lbgi(g, m))
    assert out["hbgi"] == pytest.approx(M.hbgi(g, m))
    assert out["adrr"] == pytest.approx(M.adrr(g, m, time_min=t))
    assert out["mage_mg_dl"] == pytest.approx(M.mage(g, m, time_min=t))
    assert out["modd_mg_dl"] == pytest.approx(M.modd(g, m, time_min=t))
    assert out["conga_1h_mg_dl"] == pytest.approx(M.conga(g, m, time_min=t))
    assert out["j_index"] == pytest.approx(M.j_index(g, m))
    assert "conga_2h_mg_dl" in M.cgm_metrics(g, m, conga_hours=2.0)
    # and the single functions accept [patients, times] too
    assert M.mean_glucose(np.stack([g, g]), np.stack([m, m])).shape == (2,)


# --- tables ---------------------------------------------------------------------------


def _patient(pid="p1", days=(288, 144), values=(100.0, 200.0), censored_low=0):
    t = np.concatenate([d * 1440 + np.arange(n) * 5.0 for d, n in enumerate(days)])
    g = np.concatenate([np.full(n, v) for n, v in zip(days, values, strict=True)])
    c = np.zeros(t.size, np.int8)
    if censored_low:
        g[:censored_low] = 40.0
        c[:censored_low] = -1
    cgm = types.SimpleNamespace(time_min=t, glucose_mg_dl=g, censored=c)
    return types.SimpleNamespace(
        patient_id=pid, reference_time=pd.Timestamp("2024-03-01"), cgm=cgm
    )


def test_table_by_day():
    df = M.metrics_table(_patient(censored_low=3), by="day")
    assert list(df.columns[:10]) == [
        "patient_id",
        "group",
        "start",
        "end",
        "n_readings",
        "percent_data",
        "days",
        "sufficient",
        "n_censored_low",
        "n_censored_high",
    ]
    assert list(df["group"]) == ["2024-03-01", "2024-03-02"]
    assert df["start"][1] == pd.Timestamp("2024-03-02")
    assert df["end"][1] == pd.Timestamp("2024-03-03")
    assert list(df["n_readings"]) == [288, 144]
    # day 1 holds 12 h of a 24-h day
    assert list(df["percent_data"]) == pytest.approx([100.0, 50.0])
    assert df["tar_above_180_percent"][1] == 100.0
    assert df["n_censored_low"][0] == 3
    assert df["tbr_below_54_percent"][0] == pytest.approx(100 * 3 / 288)


def test_table_all_window_visit():
    p = _patient()
    df = M.metrics_table([p, _patient("p2")], by="all")
    assert list(df["patient_id"]) == ["p1", "p2"]
    assert df["n_readings"][0] == 432
    # mean of 288 x 100 and 144 x 200 = (28800 + 28800) / 432
    assert df["mean_mg_dl"][0] == pytest.approx(57600 / 432)

    w = M.metrics_table(p, by="window", windows={"night": (0.0, 360.0)})
    assert w["group"][0] == "night" and w["n_readings"][0] == 72

    v = M.metrics_table(p, by="visit", visits=[0.0], block_days=1.0)
    assert v["group"][0] == "visit day 0" and v["n_readings"][0] == 288
    v = M.metrics_table(p, by="visit", visits=[1.0], block_days=2.0, anchor="end")
    assert v["n_readings"][0] == 432 and v["start"][0] == pd.Timestamp("2024-03-01")
    v = M.metrics_table(
        p, by="visit", visits=[0.0, 1.0], block_days=1.0, anchor="start"
    )
    assert list(v["n_readings"]) == [288, 144]
    assert list(v["percent_data"]) == pytest.approx([100.0, 50.0])


def test_group_metrics_with_plain_arrays():
    t = np.arange(2 * 96) * 15.0
    g = np.where(t < 1440, 100.0, 150.0)
    df = M.group_metrics(t, g, patient_id="x", by="day")
    assert list(df["group"]) == ["day 0", "day 1"]
    assert list(df["start"]) == [0.0, 1440.0]
    assert list(df["mean_mg_dl"]) == [100.0, 150.0]
    assert list(df["percent_data"]) == pytest.approx([100.0, 100.0])  # step inferred 15
    direct = M.cgm_metrics(g[:96], time_min=t[:96], step_min=15.0, span_min=1440.0)
    for k, v in direct.items():
        assert df[k][0] == pytest.approx(v, nan_ok=True), k


def test_table_errors():
    p = _patient()
    with _bad_input("by"):
        M.metrics_table(p, by="week")
    with _bad_input("windows"):
        M.metrics_table(p, by="window")
    with _bad_input("visits"):
        M.metrics_table(p, by="visit")
    with _bad_input("anchor"):
        M.metrics_table(p, by="visit", visits=[0.0], anchor="middle")
    with _bad_input("patients"):
        M.metrics_table([object()])


def test_infer_step_min():
    assert M.infer_step_min(np.array([0.0, 5.02, 9.98, 15.0, 40.0])) == 5.0
    assert M.infer_step_min(np.array([0.0])) == 5.0
    assert M.infer_step_min(np.arange(10) * 15.0) == 15.0


# --- the `isletfit metrics` command ---------------------------------------------------


def _write_generic_csv(path, days=2, step=5):
    times = pd.date_range(
        "2024-03-01 00:00", periods=days * 1440 // step, freq=f"{step}min"
    )
    minutes = np.arange(times.size) * step
    glucose = np.where(minutes < 1440, 100.0, 200.0)
    glucose[:3] = 60.0
    text = "time,glucose_mg_dl\n" + "".join(
        f"{t.isoformat()},{g:g}\n" for t, g in zip(times, glucose, strict=True)
    )
    path.write_text(text)
    return glucose


def test_cli_metrics_writes_csv_and_prints_table(tmp_path, capsys):
    from isletfit._cli import main

    src = tmp_path / "p017.csv"
    glucose = _write_generic_csv(src)
    out = tmp_path / "results" / "table.csv"
    assert main(["metrics", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "p017" in printed and "TIR" in printed
    df = pd.read_csv(out)
    assert len(df) == 1 and df["patient_id"][0] == "p017"
    assert df["n_readings"][0] == glucose.size
    assert df["mean_mg_dl"][0] == pytest.approx(glucose.mean())
    assert df["tbr_below_70_percent"][0] == pytest.approx(100 * 3 / glucose.size)
    assert df["tar_above_180_percent"][0] == pytest.approx(50.0)
    assert not list(out.parent.glob("*.tmp"))  # the temporary file is gone

    assert main(["metrics", str(src), "--by", "day", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df["group"]) == ["2024-03-01", "2024-03-02"]
    assert list(df["mean_mg_dl"]) == pytest.approx([(3 * 60 + 285 * 100) / 288, 200.0])

    args = [
        "metrics",
        str(src),
        "--visits",
        "0,1",
        "--block-days",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    df = pd.read_csv(out)
    assert list(df["group"]) == ["visit day 0", "visit day 1"]
    assert list(df["n_readings"]) == [288, 288]


def test_cli_metrics_reports_bad_input(tmp_path, capsys):
    from isletfit._cli import main

    src = tmp_path / "p1.csv"
    _write_generic_csv(src, days=1)
    assert main(["metrics", str(src), "--visits", "a,b"]) == 2
    assert "--visits" in capsys.readouterr().err
    assert main(["metrics", str(src), "--by", "day", "--visits", "3"]) == 2
    assert main(["metrics", str(src), "--by", "visit"]) == 2
    assert "visits" in capsys.readouterr().err
