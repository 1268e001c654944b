"""Numerical properties: positivity, solver agreement, jit/vmap, gradients."""

import dataclasses

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.model import (
    Inputs,
    Params,
    State,
    fixed_step_controller,
    simulate,
    stable_step,
    stack_params,
    steady_state_at_glucose,
    steady_state_glucose,
)

from model_fixtures import TIGHT, WEIGHT, day_grid, one_day_inputs


def test_states_stay_non_negative_under_extreme_inputs():
    p = Params()
    inputs = Inputs(
        weight_kg=WEIGHT,
        meal_times=[60.0, 61.0, 600.0],
        meal_carbs_g=[150.0, 100.0, 0.0],
        bolus_times=[0.0, 300.0, 301.0],
        bolus_u=[40.0, 25.0, 25.0],  # a large overdose, no food after the first meals
        basal_times=[0.0],
        basal_u_per_h=[3.0],
    )
    for b in [0.0, 1.0]:
        sim = simulate(
            p,
            inputs,
            jnp.arange(0.0, 2 * 1440.0, 2.0),
            b=b,
            stepsize_controller=TIGHT,
            max_steps=10**6,
        )
        assert sim.successful
        arr = sim.state.to_array()
        assert jnp.all(jnp.isfinite(arr))
        assert jnp.min(arr) > -1e-9, State.names()[
            int(jnp.argmin(jnp.min(arr, axis=0)))
        ]
        assert jnp.min(sim.glucose) > 0.0


def test_explicit_and_implicit_solvers_agree_at_tight_tolerance():
    p = Params()
    inputs = one_day_inputs()
    ts = day_grid()
    a = simulate(
        p,
        inputs,
        ts,
        b=0.4,
        solver=dfx.Tsit5(),
        stepsize_controller=TIGHT,
        max_steps=10**6,
    )
    c = simulate(
        p,
        inputs,
        ts,
        b=0.4,
        solver=dfx.Kvaerno5(),
        stepsize_controller=TIGHT,
        max_steps=10**6,
    )
    assert a.successful and c.successful
    np.testing.assert_allclose(a.cgm, c.cgm, rtol=1e-7)
    np.testing.assert_allclose(
        a.state.to_array(), c.state.to_array(), rtol=1e-6, atol=1e-8
    )


def test_default_tolerance_is_accurate_to_a_hundredth_of_a_mg_dl():
    p = Params()
    inputs = one_day_inputs()
    ts = day_grid()
    ref = simulate(p, inputs, ts, b=0.4, stepsize_controller=TIGHT, max_steps=10**6)
    default = simulate(p, inputs, ts, b=0.4)
    assert jnp.max(jnp.abs(default.cgm - ref.cgm)) < 1e-2


FIXED = dict(stepsize_controller=fixed_step_controller(1.0), dt0=1.0)


@pytest.mark.parametrize(
    "kw,rtol",
    [(FIXED, 1e-11), (dict(stepsize_controller=TIGHT, max_steps=10**6), 1e-8)],
    ids=["fixed-steps", "adaptive-tight"],
)
def test_jit_equals_eager(kw, rtol):
    """Same steps give the same numbers to round-off; adaptive steps to their tolerance."""
    p = Params()
    inputs = one_day_inputs()
    ts = day_grid()
    eager = simulate(p, inputs, ts, b=0.7, **kw)
    jitted = jax.jit(lambda p, i, t: simulate(p, i, t, b=0.7, **kw))(p, inputs, ts)
    np.testing.assert_allclose(
        jitted.state.to_array(), eager.state.to_array(), rtol=rtol, atol=1e-10
    )


def test_vmap_equals_python_loop_over_patients_and_grafts():
    inputs = one_day_inputs()
    ts = day_grid(10.0)
    plist = [
        Params().replace(vmx=v, kp1=k)
        for v, k in [(0.03, 5.0), (0.047, 5.64), (0.08, 6.5)]
    ]
    bs = jnp.array([0.0, 0.5, 1.2])
    batched = jax.vmap(lambda p, b: simulate(p, inputs, ts, b=b, **FIXED))(
        stack_params(plist), bs
    )
    for i, (p, b) in enumerate(zip(plist, bs, strict=True)):
        single = simulate(p, inputs, ts, b=b, **FIXED)
        np.testing.assert_allclose(batched.cgm[i], single.cgm, rtol=1e-11)
    assert batched.successful.shape == (3,) and bool(jnp.all(batched.successful))


def test_vmap_over_padded_inputs_equals_loop():
    ts = day_grid(10.0)
    a = Inputs(
        weight_kg=60.0,
        meal_times=[400.0],
        meal_carbs_g=[50.0],
        bolus_times=[400.0],
        bolus_u=[4.0],
    )
    b = Inputs(
        weight_kg=90.0,
        meal_times=[300.0, 700.0],
        meal_carbs_g=[30.0, 80.0],
        basal_times=[0.0],
        basal_u_per_h=[1.1],
    )
    stacked = Inputs.stack([a, b])
    assert stacked.meal_t.shape == (2, 2) and jnp.isinf(stacked.meal_t[0, 1])
    p = Params()
    batched = jax.vmap(lambda i: simulate(p, i, ts, b=0.2, **FIXED))(stacked)
    for k, inp in enumerate([a, b]):
        single = simulate(p, inp, ts, b=0.2, **FIXED)
        np.testing.assert_allclose(batched.cgm[k], single.cgm, rtol=1e-11)


@pytest.fixture(scope="module")
def cgm_loss():
    """Sum of squares of CGM against a synthetic record, fixed 1-min steps (smooth)."""
    inputs = Inputs(
        weight_kg=WEIGHT,
        meal_times=[120.0, 420.0],
        meal_carbs_g=[50.0, 70.0],
        bolus_times=[120.0, 420.0],
        bolus_u=[2.0, 3.0],
        basal_times=[0.0],
        basal_u_per_h=[0.4],
    )
    ts = jnp.arange(0.0, 721.0, 5.0)
    ctrl = fixed_step_controller(1.0)
    truth = Params().replace(vmx=0.05, kp1=5.5)
    data = simulate(truth, inputs, ts, b=0.7, stepsize_controller=ctrl, dt0=1.0).cgm
    data = data + 5.0 * jnp.sin(0.7 * jnp.arange(ts.shape[0], dtype=float))

    @jax.jit
    def loss(p):
        sim = simulate(p, inputs, ts, b=0.6, stepsize_controller=ctrl, dt0=1.0)
        return jnp.mean((sim.cgm - data) ** 2)

    return loss


def test_gradient_of_cgm_loss_matches_central_differences_for_every_parameter(cgm_loss):
    p = Params()
    grad = jax.grad(cgm_loss)(p)
    names = [f.name for f in dataclasses.fields(Params)]
    sens_ad, sens_fd = [], []
    for name in names:
        theta = float(getattr(p, name))
        h = 1e-5 * max(abs(theta), 1e-2)
        up = cgm_loss(p.replace(**{name: theta + h}))
        down = cgm_loss(p.replace(**{name: theta - h}))
        sens_fd.append(float((up - down) / (2 * h)) * theta)
        sens_ad.append(float(getattr(grad, name)) * theta)
    sens_ad, sens_fd = np.array(sens_ad), np.array(sens_fd)
    # relative sensitivities theta * dL/dtheta: eps = 1e-5 relative, rtol 1e-4, atol 1e-6 of the largest
    atol = 1e-6 * np.max(np.abs(sens_fd))
    bad = [
        n
        for n, a, f in zip(names, sens_ad, sens_fd, strict=True)
        if not np.isclose(a, f, rtol=1e-4, atol=atol)
    ]
    assert not bad, {
        n: (a, f) for n, a, f in zip(names, sens_ad, sens_fd, strict=True) if n in bad
    }
    # the check is not vacuous: most parameters matter
    assert np.sum(np.abs(sens_fd) > 1e-3 * np.max(np.abs(sens_fd))) > 20


def test_forward_mode_jacobian_through_the_solver():
    inputs = one_day_inputs()
    ts = day_grid(30.0)

    def cgm(vmx_b):
        p = Params().replace(vmx=vmx_b[0])
        return simulate(
            p, inputs, ts, b=vmx_b[1], adjoint=dfx.ForwardMode(), **FIXED
        ).cgm

    x = jnp.array([0.047, 0.5])
    jac = jax.jacfwd(cgm)(x)
    eps = 1e-6
    fd = jnp.stack(
        [(cgm(x + eps * e) - cgm(x - eps * e)) / (2 * eps) for e in jnp.eye(2)], axis=1
    )
    np.testing.assert_allclose(
        jac, fd, rtol=1e-6, atol=1e-8 * float(jnp.max(jnp.abs(fd)))
    )


def test_adaptive_forward_mode_derivative_from_a_steady_state_is_sound():
    """A night at steady state, then a meal: the adaptive default gives sound tangents.

    At a steady state the local error vanishes and an unbounded controller stretches its
    steps far beyond the stability region of the tangent equation (the derivative of
    CGM with respect to the initial glucose came out near 1e9 instead of about 0.7).
    `stable_step` bounds the step; the derivative then matches central differences of
    a tightly solved model.
    """
    p, b, basal = Params(), 0.3, 0.7
    inputs = Inputs(
        weight_kg=WEIGHT,
        meal_times=[600.0],
        meal_carbs_g=[50.0],
        basal_times=[0.0],
        basal_u_per_h=[basal],
    )
    ts = jnp.arange(480.0, 1441.0, 5.0)

    def cgm(log_factor, controller=None):
        g0 = steady_state_glucose(p, b=b, basal=basal) * jnp.exp(log_factor)
        y0 = steady_state_at_glucose(p, g0, b=b, basal=basal)
        return simulate(
            p,
            inputs,
            ts,
            b=b,
            y0=y0,
            t0=0.0,
            stepsize_controller=controller,
            adjoint=dfx.ForwardMode(),
            max_steps=100_000,
        ).cgm

    _, tangent = jax.jvp(cgm, (0.0,), (1.0,))
    tight = dfx.PIDController(rtol=1e-11, atol=1e-11, dtmax=stable_step(p, b))
    eps = 1e-4
    fd = (cgm(eps, tight) - cgm(-eps, tight)) / (2 * eps)
    scale = float(jnp.max(jnp.abs(fd)))
    assert 0.1 < scale < 100.0
    np.testing.assert_allclose(tangent, fd, atol=1e-3 * scale)


def test_stable_step_is_minutes_and_shrinks_with_the_graft_first_phase_loop():
    p = Params()
    h0, h1 = float(stable_step(p, 0.0)), float(stable_step(p, 1.0))
    assert 1.0 < h1 < h0 < 5.0
