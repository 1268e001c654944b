"""The clinic's titration protocol (pure review rules) and the daily-life sampler."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.cohort import (
    DailyLife,
    ReviewData,
    TitrationProtocol,
    TitrationState,
    review,
    sample_day,
)

P = TitrationProtocol()
BASAL_FRACTION = jnp.asarray(0.5)


def _data(*, n=2016, below_70=0, below_54=0, above_180=0, fasting=(), post=()):
    fasting = np.asarray(fasting, float)
    post = np.asarray(post, float)
    return ReviewData(
        n=jnp.asarray(float(n)),
        below_70=jnp.asarray(float(below_70)),
        below_54=jnp.asarray(float(below_54)),
        above_180=jnp.asarray(float(above_180)),
        fasting_n=jnp.asarray(float(fasting.size)),
        fasting_sum=jnp.asarray(fasting.sum()),
        fasting_high=jnp.asarray(float((fasting > P.fasting_limit).sum())),
        post_n=jnp.asarray(float(post.size)),
        post_sum=jnp.asarray(post.sum()),
        post_high=jnp.asarray(float((post > P.post_meal_limit).sum())),
    )


def _state(basal=1.0, bolus=1.0, on=True):
    return TitrationState(
        basal_scale=jnp.asarray(basal),
        bolus_scale=jnp.asarray(bolus),
        on_insulin=jnp.asarray(on),
        stops=jnp.asarray(0.0),
        restarts=jnp.asarray(0.0),
    )


def _review(state, data):
    return jax.tree.map(np.asarray, review(P, state, data, BASAL_FRACTION))


def test_hypoglycaemia_cuts_both_doses():
    data = _data(below_70=0.05 * 2016, fasting=[150] * 7, post=[200] * 21)
    out = _review(_state(), data)
    assert out.basal_scale == pytest.approx(1.0 - P.hypo_cut)
    assert out.bolus_scale == pytest.approx(1.0 - P.hypo_cut)
    assert out.on_insulin
    severe = _data(below_54=0.02 * 2016, fasting=[110] * 7, post=[150] * 21)
    assert _review(_state(0.5, 0.5), severe).basal_scale == pytest.approx(0.4)


def test_insulin_is_weaned_while_glucose_is_at_target():
    data = _data(fasting=[110] * 7, post=[150] * 21)
    out = _review(_state(), data)
    assert out.basal_scale == pytest.approx(1.0 - P.wean_step)
    assert out.bolus_scale == pytest.approx(1.0 - P.wean_step)


def test_doses_rise_when_glucose_is_high_but_not_beyond_the_old_dose():
    data = _data(above_180=0.4 * 2016, fasting=[170] * 7, post=[230] * 21)
    out = _review(_state(0.5, 0.5), data)
    assert out.basal_scale == pytest.approx(0.5 * (1.0 + P.step))
    assert out.bolus_scale == pytest.approx(0.5 * (1.0 + P.step))
    capped = _review(_state(0.98, 1.0), data)
    assert capped.basal_scale == pytest.approx(P.max_scale)
    assert capped.bolus_scale == pytest.approx(P.max_scale)
    # high fasting only: basal rises, boluses stay
    out = _review(_state(0.5, 0.5), _data(fasting=[170] * 7, post=[160] * 21))
    assert out.basal_scale > 0.5 and out.bolus_scale == pytest.approx(0.5)


def test_insulin_stops_when_the_dose_is_small_and_glucose_at_target():
    data = _data(fasting=[105] * 7, post=[140] * 21)
    out = _review(_state(0.27, 0.27), data)
    assert not out.on_insulin and out.stops == 1.0
    # not at target: no stop even with a small dose
    high = _data(fasting=[150] * 7, post=[210] * 21, above_180=0.3 * 2016)
    assert _review(_state(0.2, 0.2), high).on_insulin
    # at target but a large dose: weaned, not stopped
    big = _review(_state(0.8, 0.8), data)
    assert big.on_insulin and big.basal_scale < 0.8


def test_insulin_restarts_when_glucose_worsens():
    off = _state(0.2, 0.2, on=False)
    fine = _data(
        fasting=[110, 120, 145, 100, 115, 118, 122], post=[150, 190] + [150] * 19
    )
    assert not _review(off, fine).on_insulin
    fasting_high = _data(fasting=[150, 145, 160, 141, 120, 118, 122], post=[150] * 21)
    out = _review(off, fasting_high)
    assert out.on_insulin and out.restarts == 1.0
    assert out.basal_scale == pytest.approx(P.restart_scale)
    post_high = _data(
        above_180=0.3 * 2016, fasting=[120] * 7, post=[200] * 10 + [150] * 11
    )
    assert _review(off, post_high).on_insulin


def test_review_is_jittable_and_vmappable():
    data = jax.tree.map(
        lambda x: jnp.stack([x, x]), _data(fasting=[110] * 7, post=[150] * 21)
    )
    states = jax.tree.map(lambda x: jnp.stack([x, x]), _state())
    out = jax.jit(jax.vmap(lambda s, d: review(P, s, d, BASAL_FRACTION)))(states, data)
    assert out.basal_scale.shape == (2,)


# ------------------------------------------------------------------ daily life
LIFE = DailyLife()


def _days(n, life=LIFE, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    days = jnp.arange(n, dtype=float)
    plans = jax.vmap(
        lambda d, k: sample_day(life, d, appetite=1.0, count_bias=0.0, key=k)
    )(days, keys)
    return jax.tree.map(np.asarray, plans)


def test_meals_follow_the_simglucose_scenario():
    n = 3000
    plans = _days(n)
    start = np.arange(n)[:, None] * 1440.0
    clock = plans.meal_t - start  # [min]; +inf where skipped
    eaten = np.isfinite(plans.meal_t)
    for i, slot in enumerate(LIFE.meals):
        rate = eaten[:, i].mean()
        assert rate == pytest.approx(slot.probability, abs=0.03)
        c = clock[eaten[:, i], i]
        # within the window (main meals may be delayed by a pre-bolus, snacks pushed
        # after the preceding main meal)
        lo, hi = slot.window_h
        assert (c >= lo * 60.0).all() and (c <= hi * 60.0 + 60.0).all()
        g = plans.meal_g[eaten[:, i], i]
        # normal truncated below at 5 g
        alpha = (5.0 - slot.carbs_g) / slot.carbs_sd_g
        pdf = math.exp(-0.5 * alpha**2) / math.sqrt(2.0 * math.pi)
        tail = 0.5 * math.erfc(alpha / math.sqrt(2.0))
        assert g.mean() == pytest.approx(
            slot.carbs_g + slot.carbs_sd_g * pdf / tail, rel=0.05
        )
        assert (g == np.round(g)).all() and (g >= 5.0).all()
    assert (plans.meal_g[~eaten] == 0).all()
    # every event stays inside its day
    assert (clock[eaten] < 1440.0).all()


def test_bolus_errors_and_sensitivity_variation():
    n = 4000
    b = LIFE.bolus
    plans = _days(n, seed=1)
    assert plans.missed.mean() == pytest.approx(b.p_missed, abs=0.02)
    late = plans.bolus_delay > 0
    early = plans.bolus_delay < 0
    assert late.mean() == pytest.approx(b.p_late, abs=0.02)
    assert early.mean() == pytest.approx(b.p_early, abs=0.02)
    assert plans.bolus_delay[late].min() >= b.late_min[0]
    assert plans.bolus_delay[late].max() <= b.late_min[1]
    assert np.std(np.log(plans.count_factor)) == pytest.approx(b.count_sd, rel=0.1)
    s = np.log(plans.sensitivity[:, 0])
    assert np.std(s) == pytest.approx(LIFE.sensitivity_sd, rel=0.1)
    assert plans.treat_u.shape == (n, LIFE.n_segments)


def test_same_key_same_day():
    a = _days(5, seed=7)
    b = _days(5, seed=7)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_daily_life_validates_its_checks():
    with pytest.raises(ValueError, match="check_times_h"):
        DailyLife(check_times_h=(0.0, 6.0, 12.0, 18.0))
    with pytest.raises(ValueError, match="bedtime_h"):
        dataclasses.replace(LIFE, bolus=dataclasses.replace(LIFE.bolus, bedtime_h=22.5))
