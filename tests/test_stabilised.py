"""Third-order Runge–Kutta methods with long real stability intervals."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_grid import T0, TS, _inputs, tight_solve

from isletfit.model import (
    FixedGrid,
    Params,
    StabilisedRK34,
    StabilisedRK35,
    real_stability_limit,
    simulate,
    simulate_grid,
    stable_step,
)
from isletfit.model._grid import butcher_arrays

METHODS = [(StabilisedRK34, 6.027), (StabilisedRK35, 10.535)]


#: one step per 5-min CGM interval
RK35_GRID = FixedGrid(max_step=5.0, solver=StabilisedRK35())


@pytest.mark.parametrize("method, beta", METHODS)
def test_order_conditions_and_stability_interval(method, beta):
    a, b = butcher_arrays(method.tableau)
    c = a.sum(axis=1)
    # the four conditions of order 3 (Butcher trees up to order 3)
    np.testing.assert_allclose(
        [b.sum(), b @ c, b @ c**2, b @ a @ c], [1.0, 1 / 2, 1 / 3, 1 / 6], atol=1e-12
    )
    assert np.all(b >= 0) and np.all((c >= 0) & (c <= 1))
    # the fourth-order error terms left free were minimised (module docstring)
    free = [b @ c**3 - 1 / 4, b @ (c * (a @ c)) - 1 / 8, b @ a @ c**2 - 1 / 12]
    assert np.max(np.abs(free)) < 2e-5
    # the embedded estimate is a second-order combination of the same stages
    b_hat = b - np.asarray(method.tableau.b_error)
    np.testing.assert_allclose([b_hat.sum(), b_hat @ c], [1.0, 0.5], atol=1e-12)
    assert abs(b_hat @ c**2 - 1 / 3) > 1e-3
    limit = real_stability_limit(method.tableau)
    assert limit == pytest.approx(beta, abs=2e-3)
    # against 2.51 for the three-stage Bosh3 at the same order
    assert limit / b.size > real_stability_limit(dfx.Bosh3.tableau) / 3


@pytest.mark.parametrize("method, _", METHODS)
def test_fixed_steps_converge_at_third_order(method, _):
    """y' = -2 t y, y(0) = 1: exact exp(-t^2); halving the step cuts the error 8x."""
    term = dfx.ODETerm(lambda t, y, args: -2.0 * t * y)

    def error(h):
        sol = dfx.diffeqsolve(
            term,
            method(),
            0.0,
            2.0,
            h,
            jnp.asarray(1.0),
            stepsize_controller=dfx.ConstantStepSize(),
            max_steps=4096,
        )
        return abs(float(sol.ys[-1]) - np.exp(-4.0))

    errors = [error(h) for h in (0.1, 0.05, 0.025)]
    rates = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    np.testing.assert_allclose(rates, 3.0, atol=0.25)


@pytest.mark.parametrize("b", [0.0, 1.5])
def test_one_step_per_cgm_interval_matches_a_tight_solve(b):
    """RK35 with 5-min steps (a quarter of Bosh3's steps) stays within 0.4 mg/dL."""
    params, inputs = Params(), _inputs()
    ref = tight_solve(params, b)
    sim = simulate_grid(params, inputs, TS, b=b, t0=T0, grid=RK35_GRID)
    assert bool(sim.successful)
    # CGM readings are whole mg/dL with ~8 mg/dL sensor noise
    np.testing.assert_allclose(sim.cgm, ref.cgm, atol=0.4)
    np.testing.assert_allclose(sim.glucose, ref.glucose, atol=0.4)
    n_grid = 96 + 287  # 8 h of warm-up and 287 intervals, one step each
    assert n_grid < int(sim.num_steps) <= n_grid + 8


def test_steps_beyond_the_stability_interval_are_reported():
    params, inputs = Params(), _inputs()
    limit = RK35_GRID.max_h_lambda / 5.0  # largest λ_max [1/min] these steps allow
    for b, stable in ((1.5, True), (3.0, False)):
        lam = 1.0 / float(stable_step(params, b, factor=1.0))
        assert (lam <= limit) == stable
        sim = simulate_grid(params, inputs, TS, b=b, t0=T0, grid=RK35_GRID)
        assert bool(sim.successful) == stable


def test_adaptive_use_with_diffrax():
    """The embedded error estimate drives diffrax's controller like any ERK."""
    params, inputs = Params(), _inputs()
    ref = tight_solve(params, 0.5)
    sim = simulate(
        params,
        inputs,
        TS,
        b=0.5,
        t0=T0,
        solver=StabilisedRK35(),
        stepsize_controller=dfx.PIDController(rtol=1e-7, atol=1e-7),
        max_steps=2**16,
    )
    np.testing.assert_allclose(sim.cgm, ref.cgm, atol=0.01)


def test_derivatives_through_the_long_steps_match_finite_differences():
    """Forward-mode tangents (what fits use) are as stable as the solution."""
    params, inputs = Params(), _inputs()

    @jax.jit
    def cgm_sum(log_b):
        sim = simulate_grid(
            params,
            inputs,
            TS,
            b=jnp.exp(log_b),
            t0=T0,
            grid=RK35_GRID,
            substeps=1,
            warmup_steps=96,
        )
        return jnp.sum(sim.cgm)

    x, eps = jnp.log(0.6), 1e-5
    fd = (cgm_sum(x + eps) - cgm_sum(x - eps)) / (2 * eps)
    tangent = jax.jit(lambda x: jax.jvp(cgm_sum, (x,), (jnp.ones_like(x),))[1])(x)
    np.testing.assert_allclose(tangent, fd, rtol=1e-6)
