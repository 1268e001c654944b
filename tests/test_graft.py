"""The slow subsystem: Topp 2000 configuration, mechanistic and flexible B(t), follow-up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.model import (
    MIN_PER_DAY,
    FastModelGlucose,
    FlexibleGraft,
    Inputs,
    MechanisticGraft,
    Params,
    ToppGlucose,
    ToppParams,
    day_windows,
    fixed_step_controller,
    simulate,
    simulate_followup,
    steady_state,
    topp_turnover,
)


# ----------------------------------------------------------------- Topp 2000
def test_topp_fixed_points():
    fp = ToppParams().fixed_points()
    np.testing.assert_allclose(fp["physiological"], [100.0, 10.0, 300.0], rtol=1e-10)
    np.testing.assert_allclose(fp["saddle"][0], 250.0, rtol=1e-10)
    np.testing.assert_allclose(fp["saddle"][1:], [2.8, 36.96], rtol=1e-3)
    np.testing.assert_allclose(fp["pathological"], [600.0, 0.0, 0.0], atol=1e-12)
    tp = ToppParams()
    for point in fp.values():
        dy = tp.vector_field(0.0, point)
        assert jnp.max(jnp.abs(dy)) < 1e-9


def test_topp_timescales_at_the_physiological_point():
    """Eigenvalues -422, -18.7, -0.0142 /day: 3.4 min, 77 min, 70 days."""
    tp = ToppParams()
    jac = jax.jacfwd(lambda y: tp.vector_field(0.0, y))(
        tp.fixed_points()["physiological"]
    )
    eig = np.sort(np.linalg.eigvals(np.asarray(jac)).real)
    np.testing.assert_allclose(eig, [-421.97, -18.659, -0.014222], rtol=1e-3)
    jac_s = jax.jacfwd(lambda y: tp.vector_field(0.0, y))(tp.fixed_points()["saddle"])
    assert np.sum(np.linalg.eigvals(np.asarray(jac_s)).real > 0) == 1  # a saddle


def test_slow_model_in_topp_configuration_reproduces_its_fixed_points():
    tp = ToppParams()
    assert jnp.isclose(tp.quasi_steady_glucose(300.0), 100.0, rtol=1e-10)
    assert jnp.isclose(
        tp.quasi_steady_glucose(tp.fixed_points()["saddle"][2]), 250.0, rtol=1e-8
    )
    assert float(topp_turnover(100.0, tp.d0, tp.r1, tp.r2)) == pytest.approx(
        0.0, abs=1e-15
    )

    def topp_graft(beta0):
        return MechanisticGraft(
            infusion_day=0.0,
            engrafted=beta0,
            initial_maturation=1.0,
            feedback=ToppGlucose(tp),
        )

    days = jnp.array([0.0, 500.0, 3000.0])
    # above the saddle: relaxes to the physiological 300 mg; below: collapses to beta = 0
    np.testing.assert_allclose(topp_graft(150.0)(days)[-1], 300.0, rtol=1e-6)
    assert float(topp_graft(30.0)(days)[-1]) < 1e-6
    # the saddle and the physiological point are fixed points of the slow model
    beta_s = float(tp.fixed_points()["saddle"][2])
    np.testing.assert_allclose(topp_graft(beta_s)(days), beta_s, rtol=1e-6)
    np.testing.assert_allclose(topp_graft(300.0)(days), 300.0, rtol=1e-8)
    # the relaxation near 300 mg has the 70-day timescale
    b = topp_graft(290.0)(jnp.array([0.0, 70.3]))
    np.testing.assert_allclose((300.0 - b[1]) / (300.0 - b[0]), np.exp(-1.0), rtol=2e-2)


# ----------------------------------------------------------------- mechanistic graft
def test_mechanistic_graft_matches_closed_form_without_turnover():
    """m = m0 e^{-k (t - ti)}; phi = 1 - exp(-(w/tau)[softplus((t-ti-lag)/w) - softplus(-lag/w)])."""
    g = MechanisticGraft(
        infusion_day=20.0,
        engrafted=0.8,
        onset_lag=30.0,
        onset_width=6.0,
        tau_maturation=50.0,
        loss_rate=0.001,
    )
    days = jnp.array([0.0, 19.9, 20.0, 35.0, 60.0, 120.0, 365.0])
    b = g(days)
    s = days - 20.0
    sp = jax.nn.softplus
    phi = 1 - jnp.exp(-(6.0 / 50.0) * (sp((s - 30.0) / 6.0) - sp(-30.0 / 6.0)))
    want = jnp.where(s >= 0, 0.8 * jnp.exp(-0.001 * s) * phi, 0.0)
    np.testing.assert_allclose(b, want, rtol=1e-7, atol=1e-12)
    assert float(b[0]) == 0.0 and float(b[1]) == 0.0


def test_mechanistic_graft_accepts_unsorted_days_and_is_differentiable():
    g = MechanisticGraft(infusion_day=0.0, engrafted=1.0)
    days = jnp.array([200.0, 10.0, 90.0])
    np.testing.assert_allclose(
        g(days), g(jnp.sort(days))[jnp.array([2, 0, 1])], rtol=1e-12
    )

    def b_at_90(tau):
        return MechanisticGraft(infusion_day=0.0, engrafted=1.0, tau_maturation=tau)(
            jnp.array([90.0])
        )[0]

    grad = jax.grad(b_at_90)(60.0)
    fd = (b_at_90(60.0 + 1e-4) - b_at_90(60.0 - 1e-4)) / 2e-4
    assert grad < 0 and np.isclose(grad, fd, rtol=1e-5)


def test_glucose_dependent_turnover_with_the_fast_model():
    """Topp turnover on the fast model: a graft grows while fasting glucose is above the
    100 mg/dL zero-growth point and shrinks below it, towards that point."""
    p = Params()
    kw = dict(
        infusion_day=0.0,
        initial_maturation=1.0,
        feedback=FastModelGlucose(p, basal=0.0),
    )
    small, large = (
        MechanisticGraft(engrafted=0.3, **kw),
        MechanisticGraft(engrafted=2.0, **kw),
    )
    days = jnp.array([0.0, 2000.0])
    b_small, b_large = small(days), large(days)
    assert b_small[1] > b_small[0] and b_large[1] < b_large[0]
    # both end where the fast model's fasting glucose is 100 mg/dL
    from isletfit.model import steady_state_glucose

    for b in (b_small[1], b_large[1]):
        np.testing.assert_allclose(steady_state_glucose(p, b=b), 100.0, rtol=1e-3)


# ----------------------------------------------------------------- flexible graft
def test_flexible_graft_interpolates_log_b_and_respects_infusion():
    g = FlexibleGraft(
        knot_days=jnp.array([0.0, 10.0, 20.0]),
        log_b=jnp.log(jnp.array([0.1, 0.4, 0.4])),
        infusion_day=5.0,
    )
    b = g(jnp.array([-1.0, 4.9, 5.0, 15.0, 30.0]))
    np.testing.assert_allclose(
        b,
        [0.0, 0.0, np.exp(0.5 * np.log(0.1) + 0.5 * np.log(0.4)), 0.4, 0.4],
        rtol=1e-12,
    )


def test_flexible_graft_random_walk_prior_closed_form():
    knots = jnp.array([0.0, 7.0, 21.0])
    log_b = jnp.array([-1.0, -0.5, -0.6])
    g = FlexibleGraft(knot_days=knots, log_b=log_b)
    sigma = 0.1
    want = sum(
        -0.5 * d**2 / (sigma**2 * dt) - 0.5 * np.log(2 * np.pi * sigma**2 * dt)
        for d, dt in [(0.5, 7.0), (-0.1, 14.0)]
    )
    np.testing.assert_allclose(g.random_walk_log_prior(sigma), want, rtol=1e-12)
    grid = FlexibleGraft.on_grid(0.0, 30.0, 7.0, b=0.5)
    assert grid.knot_days.shape == (6,) and float(grid.knot_days[-1]) >= 30.0


@pytest.mark.parametrize("knots", [[0.0, 0.0], [1.0, jnp.nan]])
def test_flexible_graft_rejects_bad_knots(knots):
    with pytest.raises(ValueError, match="knot_days"):
        FlexibleGraft(knot_days=jnp.array(knots), log_b=jnp.zeros(2))


# ----------------------------------------------------------------- follow-up
def test_followup_windows_equal_separate_simulations():
    p = Params()
    days = 60
    times = [d * 1440.0 + h * 60.0 for d in range(days) for h in (7, 12, 18)]
    inputs = Inputs(
        weight_kg=70.0,
        meal_times=times,
        meal_carbs_g=[50.0] * len(times),
        bolus_times=times,
        bolus_u=[3.0] * len(times),
        basal_times=[0.0, 30 * 1440.0],
        basal_u_per_h=[0.9, 0.4],
    )
    graft = MechanisticGraft(
        infusion_day=10.0, engrafted=0.9, onset_lag=10.0, tau_maturation=20.0
    )
    window_days = jnp.array([0.0, 20.0, 45.0])
    ts = day_windows(window_days, step_min=15.0)
    ctrl = dict(stepsize_controller=fixed_step_controller(1.0), dt0=1.0)
    sims, b = simulate_followup(p, graft, inputs, ts, **ctrl)
    assert sims.cgm.shape == ts.shape
    assert bool(jnp.all(sims.successful))
    np.testing.assert_allclose(b, graft(window_days + 0.5), rtol=1e-12)
    for w in range(3):
        y0 = steady_state(p, b=b[w], basal=inputs.basal_rate(ts[w, 0]))
        single = simulate(p, inputs, ts[w], b=b[w], y0=y0, **ctrl)
        np.testing.assert_allclose(sims.cgm[w], single.cgm, rtol=1e-11)
    # the graft lowers the day's mean glucose, and late windows use the late basal rate
    assert float(sims.glucose[2].mean()) < float(sims.glucose[0].mean())
    assert ts[2, 0] / MIN_PER_DAY == 45.0


def test_followup_warmup_carries_the_evening_before_into_the_window():
    p = Params()
    inputs = Inputs(weight_kg=70.0, meal_times=[1440.0 - 60.0], meal_carbs_g=[90.0])
    graft = FlexibleGraft(knot_days=jnp.array([0.0]), log_b=jnp.array([jnp.log(0.5)]))
    ts = day_windows(jnp.array([1.0]), step_min=30.0)
    cold, _ = simulate_followup(p, graft, inputs, ts)
    warm, _ = simulate_followup(p, graft, inputs, ts, warmup_min=120.0)
    assert float(warm.glucose[0, 0]) > float(cold.glucose[0, 0]) + 20.0
