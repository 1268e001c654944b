"""C-peptide kinetics (Van Cauter), mixed-meal test, HbA1c and severe hypoglycaemia."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.cohort import (
    CPeptideKinetics,
    HbA1cModel,
    MixedMealTest,
    SevereHypoglycaemia,
    c_peptide_concentration,
    hba1c_trajectory,
    mixed_meal_test,
    van_cauter_kinetics,
)
from isletfit.model import Params

LN2 = math.log(2.0)


def _rates(age=40.0, short=4.95, frac=0.76):
    a = LN2 / short
    b = LN2 / (0.14 * age + 29.16)
    return a, b, frac


def test_van_cauter_worked_example():
    """Male, 40 years, BSA 1.9 m² (reference/domain.md §2.4)."""
    k = van_cauter_kinetics(40.0, 1.9, False)
    assert float(k.volume_l) == pytest.approx(1.92 * 1.9 + 0.64)
    assert float(k.k1) == pytest.approx(0.054, abs=0.002)
    assert float(k.k2) == pytest.approx(0.049, abs=0.002)
    assert float(k.k3) == pytest.approx(0.057, abs=0.002)
    women = van_cauter_kinetics(40.0, 1.9, True)
    assert float(women.volume_l) == pytest.approx(1.11 * 1.9 + 2.04)


def test_eigenvalues_are_the_two_half_lives():
    k = van_cauter_kinetics(55.0, 1.7, True)
    a, b, _ = _rates(55.0)
    eig = np.sort(np.linalg.eigvals(np.asarray(k.matrix())).real)
    np.testing.assert_allclose(eig, [-a, -b], rtol=1e-10)


def test_steady_state_is_isr_over_k3_v():
    k = van_cauter_kinetics(40.0, 1.9, False)
    isr = 120.0  # [pmol/min]
    c = c_peptide_concentration(k, jnp.full(500, isr), 1.0)
    expected = isr / (float(k.k3) * float(k.volume_l))
    np.testing.assert_allclose(np.asarray(c), expected, rtol=1e-10)
    # and a start from zero converges to it
    c = c_peptide_concentration(k, jnp.full(3000, isr), 1.0, initial=jnp.zeros(2))
    assert float(c[0]) == 0.0
    assert float(c[-1]) == pytest.approx(expected, rel=1e-6)


def test_impulse_response_is_biexponential_with_fraction_f():
    """An i.v. bolus decays as F exp(-at) + (1 - F) exp(-bt) (Van Cauter 1992)."""
    age = 40.0
    k = van_cauter_kinetics(age, 1.9, False)
    a, b, frac = _rates(age)
    t = np.arange(0.0, 301.0)
    c = np.asarray(
        c_peptide_concentration(k, jnp.zeros(t.size), 1.0, jnp.array([1.0, 0.0]))
    )
    expected = frac * np.exp(-a * t) + (1.0 - frac) * np.exp(-b * t)
    np.testing.assert_allclose(c, expected, rtol=1e-9, atol=1e-12)


def test_decay_after_secretion_stops():
    """From steady state: C(t) = C_ss [A e^{-at} + (1 - A) e^{-bt}], A = (k3 - b)/(a - b)."""
    k = van_cauter_kinetics(30.0, 2.0, True)
    a, b, _ = _rates(30.0)
    t = np.arange(0.0, 241.0)
    c = np.asarray(
        c_peptide_concentration(k, jnp.zeros(t.size), 1.0, k.steady_state(100.0))
    )
    css = 100.0 / (float(k.k3) * float(k.volume_l))
    amp = (float(k.k3) - b) / (a - b)
    expected = css * (amp * np.exp(-a * t) + (1.0 - amp) * np.exp(-b * t))
    np.testing.assert_allclose(c, expected, rtol=1e-9)
    # the slow phase decays with the long half-life
    assert np.log(c[200] / c[240]) / 40.0 == pytest.approx(b, rel=1e-3)


def test_mixed_meal_test_c_peptide_in_physiological_ranges():
    p = Params()
    k = van_cauter_kinetics(40.0, 1.9, False)
    healthy = mixed_meal_test(p, k, b=1.0, basal_u_per_h=0.0, weight_kg=75.0)
    assert bool(healthy.successful)
    # normal fasting C-peptide is about 0.3-0.6 nmol/L (1-2 ng/mL)
    assert 0.2 < float(healthy.fasting_c_peptide) < 0.8
    assert float(healthy.stimulated_c_peptide) > 2.0 * float(healthy.fasting_c_peptide)
    assert float(healthy.peak_c_peptide) >= float(healthy.stimulated_c_peptide)
    assert 70.0 < float(healthy.fasting_glucose) < 100.0
    none = mixed_meal_test(p, k, b=0.0, basal_u_per_h=1.0, weight_kg=75.0)
    assert float(none.fasting_c_peptide) == 0.0
    assert float(none.stimulated_c_peptide) == 0.0
    half = mixed_meal_test(p, k, b=0.3, basal_u_per_h=0.0, weight_kg=75.0)
    assert 0.0 < float(half.stimulated_c_peptide) < float(healthy.stimulated_c_peptide)
    test = MixedMealTest()
    assert float(test.carbs_g(75.0)) == pytest.approx(360.0 * 0.17)
    assert float(test.carbs_g(50.0)) == pytest.approx(300.0 * 0.17)


def test_hba1c_follows_adag_with_glycation_kinetics():
    model = HbA1cModel()
    # ADAG: HbA1c 7 % <-> mean glucose 154 mg/dL
    assert float(model.equilibrium(28.7 * 7.0 - 46.7)) == pytest.approx(7.0)
    g = jnp.r_[jnp.full(200, 180.0), jnp.full(400, 120.0)]
    a = np.asarray(hba1c_trajectory(model, g, offset=0.1))
    hi = float(model.equilibrium(180.0)) + 0.1
    lo = float(model.equilibrium(120.0)) + 0.1
    assert a[199] == pytest.approx(hi)
    # half of the change after 30 days, a quarter left after 60
    assert (a[229] - lo) / (hi - lo) == pytest.approx(0.5, rel=1e-9)
    assert (a[259] - lo) / (hi - lo) == pytest.approx(0.25, rel=1e-9)
    assert a[-1] == pytest.approx(lo, abs=1e-3)


def test_severe_hypoglycaemia_rule():
    rule = SevereHypoglycaemia()
    assert float(rule.daily_rate(0.0, 0.0)) == 0.0
    assert float(rule.daily_rate(1.0, 0.0)) == pytest.approx(
        rule.rate_per_hour_below_54
    )
    # the graft's counter-regulation protects: e-fold per protection_b
    ratio = float(rule.daily_rate(1.0, rule.protection_b) / rule.daily_rate(1.0, 0.0))
    assert ratio == pytest.approx(math.exp(-1.0))
    keys = jax.random.split(jax.random.key(0), 2000)
    counts = np.asarray(jax.vmap(lambda k: rule.sample_prior_year(0.01, key=k))(keys))
    assert counts.min() >= rule.prior_year_minimum
    # mean of a Poisson(3.65) conditioned on >= 2
    lam = 3.65
    p0, p1 = math.exp(-lam), lam * math.exp(-lam)
    expected = (lam - p1) / (1.0 - p0 - p1)
    assert counts.mean() == pytest.approx(expected, rel=0.05)
    many = np.asarray(
        jax.vmap(lambda k: rule.sample_prior_year(0.2, key=k))(keys[:500])
    )
    assert many.mean() == pytest.approx(73.0, rel=0.05)


def test_kinetics_module_is_a_pytree():
    k = CPeptideKinetics(k1=0.05, k2=0.05, k3=0.06, volume_l=4.0)
    leaves = jax.tree.leaves(k)
    assert len(leaves) == 4


def test_mixed_meal_test_on_the_fixed_grid_matches_the_adaptive_solve():
    """The cohort's default integrator (`FixedGrid`, 1-min steps here) reads the same
    C-peptide and glucose as the adaptive solver."""
    from isletfit.model import FixedGrid

    p = Params()
    k = van_cauter_kinetics(40.0, 1.9, False)
    for b, basal in ((1.0, 0.0), (0.3, 0.6)):
        kw = dict(b=b, basal_u_per_h=basal, weight_kg=75.0)
        ref = mixed_meal_test(p, k, **kw)
        grid = mixed_meal_test(p, k, solver=FixedGrid(), **kw)
        assert bool(grid.successful)
        for name in ("fasting_c_peptide", "stimulated_c_peptide", "peak_c_peptide"):
            assert float(getattr(grid, name)) == pytest.approx(
                float(getattr(ref, name)), rel=2e-3
            ), name
        assert float(grid.glucose_stimulated) == pytest.approx(
            float(ref.glucose_stimulated), abs=0.05
        )
