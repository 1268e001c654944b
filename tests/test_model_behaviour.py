"""The default parameters behave like people (see the Params docstring for sources)."""

import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.model import Inputs, Params, simulate, steady_state, steady_state_glucose

WEIGHT = 70.0
#: Ordinary meals (simglucose scenario means): 45 g at 07:00, 70 g at 12:00, 80 g at 18:00.
MEALS = [(7 * 60.0, 45.0), (12 * 60.0, 70.0), (18 * 60.0, 80.0)]


def test_healthy_adult_fasting_glucose_is_normal():
    g = float(steady_state_glucose(Params(), b=1.0))
    assert 75.0 <= g <= 100.0


def test_healthy_adult_tolerates_75_g_of_carbohydrate():
    t_meal = 60.0
    inputs = Inputs(weight_kg=WEIGHT, meal_times=[t_meal], meal_carbs_g=[75.0])
    ts = jnp.arange(0.0, t_meal + 6 * 60.0 + 1, 1.0)
    sim = simulate(Params(), inputs, ts, b=1.0)
    g = np.asarray(sim.glucose)
    after = ts >= t_meal
    assert g[after].max() < 180.0
    assert g[after].max() > g[0] + 30.0  # the meal does raise glucose
    # back below 140 mg/dL within 3 h (and the WHO 2-h value of normal tolerance)
    assert g[int(t_meal + 180)] < 140.0
    assert g[int(t_meal + 120)] < 140.0
    # insulin rises several-fold from fasting
    assert float(sim.insulin.max()) > 3.0 * float(sim.insulin[0])


def _basal_bolus(tdd_u_per_kg_day, days=3):
    tdd = tdd_u_per_kg_day * WEIGHT
    carb_ratio = 500.0 / tdd  # [g/U], the 500 rule
    times, grams = [], []
    for d in range(days):
        for t, c in MEALS:
            times.append(d * 1440.0 + t)
            grams.append(c)
    return Inputs(
        weight_kg=WEIGHT,
        meal_times=times,
        meal_carbs_g=grams,
        bolus_times=times,
        bolus_u=[c / carb_ratio for c in grams],
        basal_times=[0.0],
        basal_u_per_h=[0.5 * tdd / 24.0],
    )


@pytest.mark.parametrize("tdd", [0.5, 0.55, 0.6])
def test_type_1_diabetes_on_basal_bolus_stays_mostly_in_70_250(tdd):
    inputs = _basal_bolus(tdd)
    ts = jnp.arange(0.0, 3 * 1440.0 + 1, 5.0)
    sim = simulate(Params(), inputs, ts, b=0.0)
    assert sim.successful
    g = np.asarray(sim.cgm)
    assert np.mean((g >= 70) & (g <= 250)) >= 0.9
    # meals still make glucose move: this is diabetes, not a flat line
    assert g.max() - g.min() > 40.0


def test_type_1_diabetes_without_insulin_exceeds_300_within_a_day():
    p = Params()
    basal = _basal_bolus(0.55).basal_rate(0.0)
    y0 = steady_state(p, b=0.0, basal=basal)  # well controlled on basal insulin ...
    assert float(y0.gs) < 180.0
    ts = jnp.arange(0.0, 1441.0, 10.0)  # ... then all insulin stops
    sim = simulate(p, Inputs(weight_kg=WEIGHT), ts, b=0.0, y0=y0)
    assert float(sim.glucose[-1]) > 300.0


def test_graft_restores_glucose_and_removes_the_need_for_insulin():
    p = Params()
    assert float(steady_state_glucose(p, b=0.0)) > 300.0
    assert (
        float(steady_state_glucose(p, b=0.5)) < 126.0
    )  # below the diabetic fasting cut-off
    # counter-regulation: with a graft, an insulin overdose is defended better
    inputs = Inputs(weight_kg=WEIGHT, bolus_times=[0.0], bolus_u=[8.0])
    ts = jnp.arange(0.0, 8 * 60.0 + 1, 5.0)
    start = steady_state(p, b=0.0, basal=1.0)
    low_without = float(simulate(p, inputs, ts, b=0.0, y0=start).glucose.min())
    p_no_cr = p.replace(cr_max=0.0)
    low_with = float(simulate(p, inputs, ts, b=1.0, y0=start).glucose.min())
    low_with_no_cr = float(simulate(p_no_cr, inputs, ts, b=1.0, y0=start).glucose.min())
    assert low_with > low_with_no_cr > 0.0
    assert low_without < 70.0
