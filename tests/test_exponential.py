"""ExponentialRK3/4: φ-functions, exactness on the linear part, order, stability, derivatives."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from test_grid import T0, TS, _inputs, tight_solve

from isletfit.model import (
    ExponentialRK3,
    ExponentialRK4,
    FixedGrid,
    Params,
    State,
    simulate_grid,
)
from isletfit.model._exponential import (
    _AT_ZERO,
    exchange_matrix,
    loop_rate,
    phi_functions,
)

ETD5 = FixedGrid(max_step=5.0, solver=ExponentialRK3())
ETD4 = FixedGrid(max_step=5.0, solver=ExponentialRK4())
METHODS = [ExponentialRK3, ExponentialRK4]


def _closed_forms_longdouble(z: float) -> dict[str, float]:
    """The closed forms in extended precision (reference away from z = 0)."""
    z = np.longdouble(z)
    e, eh = np.exp(z), np.exp(z / 2)
    return {
        "exp_half": eh,
        "exp": e,
        "phi1_half": (eh - 1) / (z / 2),
        "phi1": (e - 1) / z,
        "fu": (-4 - z + e * (4 - 3 * z + z * z)) / z**3,
        "fa": 4 * (2 + z + e * (z - 2)) / z**3,
        "fb": (-4 - 3 * z - z * z + e * (4 - z)) / z**3,
    }


@pytest.mark.parametrize("z", [-6.0, -2.3, -1.0 - 1e-9, -0.999, -0.4, 0.3, 0.9, 1.7])
def test_phi_functions_match_extended_precision(z):
    got = phi_functions(jnp.asarray(z))
    ref = _closed_forms_longdouble(z)
    for name, value in ref.items():
        assert float(got[name]) == pytest.approx(float(value), rel=1e-12, abs=1e-15), (
            name
        )


def test_phi_functions_limits_and_identities():
    zero = phi_functions(jnp.asarray(0.0))
    expected = {"exp_half": 1, "exp": 1, "phi1_half": 1, "phi1": 1}
    expected.update(fu=1 / 6, fa=2 / 3, fb=1 / 6)  # Kutta's RK3 weights
    for name, value in expected.items():
        assert float(zero[name]) == pytest.approx(value, rel=1e-15)
        assert _AT_ZERO[name] == pytest.approx(value, rel=1e-15)  # the explicit weights
    assert set(_AT_ZERO) == set(zero)
    # f_u + f_a + f_b = φ1: a constant N is integrated exactly
    z = jnp.linspace(-8.0, 2.0, 41)
    f = phi_functions(z)
    np.testing.assert_allclose(f["fu"] + f["fa"] + f["fb"], f["phi1"], rtol=1e-12)
    # derivatives (custom rule) against finite differences, across the series switch
    for z0 in (-3.0, -1.0 + 1e-6, -0.5, 0.0):
        for name in ("fu", "fa", "fb", "phi1"):
            d = jax.grad(lambda x, n=name: phi_functions(x)[n])(jnp.asarray(z0))
            fd = (
                phi_functions(jnp.asarray(z0 + 1e-6))[name]
                - phi_functions(jnp.asarray(z0 - 1e-6))[name]
            ) / 2e-6
            assert float(d) == pytest.approx(float(fd), rel=1e-6, abs=1e-9), (z0, name)


def _linear_field(matrix, forcing, gut=(0.0, 0.0)):
    """A vector field that is linear on (ip, il), q_gut' = -k q_gut + c for
    ``gut = (k, c)``, and zero elsewhere."""

    def field(t, y, args):
        dv = matrix @ jnp.stack([y.ip, y.il]) + forcing
        zero = jax.tree.map(jnp.zeros_like, y)
        dq = -gut[0] * y.qgut + gut[1]
        return eqx.tree_at(lambda s: (s.ip, s.il, s.qgut), zero, (dv[0], dv[1], dq))

    return field


def _block_state(v) -> State:
    zero = State(*([jnp.asarray(0.0)] * 14))
    return eqx.tree_at(lambda s: (s.ip, s.il), zero, (jnp.asarray(v[0]), v[1]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("b", [0.0, 1.2])
def test_step_is_exact_for_the_linear_part_with_constant_input(b, method):
    """v' = L v + c (L the method's own linear part) has the solution
    e^{hL} v0 + L^{-1}(e^{hL} - I) c, which both methods reproduce to rounding; so
    for the gut's content with a constant inflow."""
    params, method, h = Params(), method(), 5.0
    kabs = float(params.kabs)
    lm = exchange_matrix(params, method.loop_in_linear * b)
    c = jnp.array([0.7, 2.5])
    y0 = eqx.tree_at(lambda s: s.qgut, _block_state(jnp.array([30.0, 55.0])), 40.0)
    field = _linear_field(lm, c, gut=(kabs, 3.0))
    y1 = method.step(field, 0.0, h, y0, (), params=params, b=b)
    e = scipy.linalg.expm(h * np.asarray(lm))
    exact = e @ np.array([30.0, 55.0]) + np.linalg.solve(lm, (e - np.eye(2)) @ c)
    np.testing.assert_allclose([y1.ip, y1.il], exact, rtol=1e-12)
    q = np.exp(-h * kabs) * 40.0 + 3.0 * -np.expm1(-h * kabs) / kabs
    assert float(y1.qgut) == pytest.approx(q, rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("slope", [0.0, 0.5, 1.0])
def test_amplification_matrix_is_the_step_on_the_linearised_block(slope, method):
    """`amplification` (the stability check) is what a step does to v' = (L0 - sμ) v."""
    params, method, b, h = Params(), method(), 1.5, 5.0
    full = exchange_matrix(params, slope * b)  # L0 - s μ E22
    amp = method.amplification(params, b, h, slope)
    field = _linear_field(full, jnp.zeros(2))
    for k, v in enumerate(np.eye(2)):
        y1 = method.step(field, 0.0, h, _block_state(v), (), params=params, b=b)
        np.testing.assert_allclose([y1.ip, y1.il], amp[:, k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", METHODS)
def test_the_stability_check_predicts_growth_of_the_linear_block(method):
    """With the whole loop explicit (loop_in_linear=0), 5-min steps at B = 2 are
    flagged, and iterating them on the linearised block with the loop on grows; with
    the default split the same steps are accepted and decay."""
    params, b, h = Params(), 2.0, 5.0
    field = _linear_field(exchange_matrix(params, b), jnp.zeros(2))  # loop fully on
    for split, stable in (
        (method(loop_in_linear=0.0), False),
        (method(), True),
    ):
        assert bool(split.stable(params, b, h)) is stable
        y = _block_state(jnp.array([1.0, 1.0]))
        for _ in range(40):
            y = split.step(field, 0.0, h, y, (), params=params, b=b)
        size = float(jnp.hypot(y.ip, y.il))
        assert (size < 1e-3) if stable else (size > 1e3), (split, size)
    # the default split is stable far beyond any graft's capacity at 5-min steps
    assert all(bool(method().stable(params, bb, h)) for bb in (0.0, 1.0, 4.0))
    assert float(loop_rate(params, 1.0)) == pytest.approx(0.734, abs=1e-3)


@pytest.mark.parametrize(
    "grid, bound", [(ETD5, (0.4, 0.5, 0.05)), (ETD4, (0.1, 0.15, 0.02))]
)
@pytest.mark.parametrize("b", [0.0, 0.8, 1.5])
def test_one_step_per_cgm_interval_matches_a_tight_solve(b, grid, bound):
    params, inputs = Params(), _inputs()
    ref = tight_solve(params, b)
    sim = simulate_grid(params, inputs, TS, b=b, t0=T0, grid=grid)
    assert bool(sim.successful)
    # measured: ETD3RK 0.19–0.34 mg/dL, ETDRK4 0.04–0.08; the CGM reports whole mg/dL
    np.testing.assert_allclose(sim.cgm, ref.cgm, atol=bound[0])
    np.testing.assert_allclose(sim.glucose, ref.glucose, atol=bound[1])
    np.testing.assert_allclose(sim.insulin, ref.insulin, rtol=bound[2])
    # one step per interval and per event inside the window
    assert 96 + 287 < int(sim.num_steps) <= 96 + 287 + 8


@pytest.mark.parametrize(
    "method, ratio", [(ExponentialRK3, 4.0), (ExponentialRK4, 8.0)]
)
def test_error_falls_at_the_method_order(method, ratio):
    """Halving the step: ETD3RK's CGM error falls by more than 4 each time, ETDRK4's
    by more than 8 and by 32 over two halvings (measured 9.4 and 38: 0.057, 0.0061,
    0.0015 mg/dL at 5, 2.5, 1.25 min)."""
    params, inputs = Params(), _inputs()
    ref = tight_solve(params, 0.8).cgm
    err = []
    for h in (5.0, 2.5, 1.25):
        grid = FixedGrid(max_step=h, solver=method())
        sim = simulate_grid(params, inputs, TS, b=0.8, t0=T0, grid=grid)
        err.append(float(jnp.max(jnp.abs(sim.cgm - ref))))
    # third order: 8 per halving, fourth 16; the model's smooth switches (and the
    # reference's own error at 1.25 min) cost some of it
    assert err[0] / err[1] > ratio and err[0] / err[2] > ratio**2 / 2, err
    assert err[1] / err[2] > 4.0, err


def test_fast_explicit_rates_are_reported_not_integrated():
    """A plasma-to-tissue glucose rate of 0.6/min is explicit: 5-min Kutta steps are
    out of its stability interval (h·rate 3.0 > 2.51), so the window is marked failed."""
    params = eqx.tree_at(lambda p: p.k2, Params(), 0.6)
    sim = simulate_grid(params, _inputs(), TS, b=0.5, t0=T0, grid=ETD5)
    assert sim.result == dfx.RESULTS.breakdown
    fine = simulate_grid(
        params,
        _inputs(),
        TS,
        b=0.5,
        t0=T0,
        grid=FixedGrid(max_step=2.5, solver=ExponentialRK3()),
    )
    assert bool(fine.successful)


@pytest.mark.parametrize("kabs, tau, bound", [(0.2, 10.0, 0.6), (0.3, 1.5, 1.5)])
def test_gut_absorption_and_sensor_lag_are_exact(kabs, tau, bound):
    """Fast gut absorption (adults with type 1 diabetes: about 0.2/min) and a short
    sensor lag are integrated exactly: 5-min steps stay stable where Kutta's method
    would take h·k_abs = 1.5 and h/τ = 3.3 (beyond its limit 2.51), and accurate."""
    params = eqx.tree_at(lambda p: (p.kabs, p.tau_sensor), Params(), (kabs, tau))
    ref = tight_solve(params, 0.8)
    sim = simulate_grid(params, _inputs(), TS, b=0.8, t0=T0, grid=ETD5)
    assert bool(sim.successful)
    # measured 0.47 and 1.37 mg/dL (the CGM follows the plasma glucose closely at
    # τ = 1.5 min, and a fast meal appearance moves it fast)
    np.testing.assert_allclose(sim.cgm, ref.cgm, atol=bound)


@pytest.mark.parametrize("grid", [ETD5, ETD4])
def test_fasting_steady_state_is_kept(grid):
    from isletfit.model import Inputs

    inputs = Inputs(weight_kg=70.0, basal_times=[-1000.0], basal_u_per_h=[0.9])
    sim = simulate_grid(Params(), inputs, TS, b=0.6, t0=T0, grid=grid)
    assert float(jnp.ptp(sim.cgm)) < 1e-9


def test_derivatives_match_finite_differences():
    """Forward and reverse mode through the fits' step (and its φ-functions of B and
    k_abs; ETD3RK shares them and `_advance`)."""
    grid = ETD4
    params, inputs, ts = Params(), _inputs(), TS[:96]  # to 8 h: the breakfast

    @jax.jit
    def cgm(x):
        p = eqx.tree_at(lambda q: (q.vmx, q.kabs), params, tuple(jnp.exp(x[:2])))
        sim = simulate_grid(
            p, inputs, ts, b=jnp.exp(x[2]), t0=T0, grid=grid, warmup_steps=96
        )
        return sim.cgm

    x = jnp.array([jnp.log(params.vmx), jnp.log(params.kabs), jnp.log(0.7)])
    jac = jax.jacfwd(cgm)(x)
    rev = jax.jacrev(lambda v: jnp.sum(cgm(v) ** 2))(x)
    eps = 1e-6
    for k in range(3):
        step = jnp.zeros(3).at[k].set(eps)
        fd = (cgm(x + step) - cgm(x - step)) / (2 * eps)
        np.testing.assert_allclose(jac[:, k], fd, rtol=1e-5, atol=1e-6)
        assert float(jnp.max(jnp.abs(fd))) > 1.0
    np.testing.assert_allclose(rev, 2 * cgm(x) @ jac, rtol=1e-9)


def test_vmap_over_graft_capacities_equals_single_runs():
    params, inputs = Params(), _inputs()
    bs = jnp.array([0.2, 1.1])
    many = jax.vmap(
        lambda b: (
            simulate_grid(
                params, inputs, TS, b=b, t0=T0, grid=ETD5, substeps=1, warmup_steps=96
            ).cgm
        )
    )(bs)
    for k, b in enumerate(bs):
        one = simulate_grid(params, inputs, TS, b=b, t0=T0, grid=ETD5).cgm
        np.testing.assert_allclose(many[k], one, rtol=1e-12)


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"ExponentialRK3\.loop_in_linear"):
        ExponentialRK3(loop_in_linear=1.5)
    with pytest.raises(ValueError, match=r"ExponentialRK4\.loop_in_linear"):
        ExponentialRK4(loop_in_linear=-0.1)
    with pytest.raises(TypeError, match="ExponentialRK4 has no single"):
        _ = ETD4.max_h_lambda
    assert ETD5.steps_for(1435.0) == 287


@pytest.mark.parametrize("grid", [ETD5, ETD4])
def test_float32_stays_float32_and_agrees(grid):
    """The fits' float32 tangents (``FitModel(jacobian_dtype=...)``) run with x64 on:
    nothing in the step may promote float32 inputs to float64."""
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), Params())
    inputs = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _inputs())
    sim = simulate_grid(
        params, inputs, TS.astype(jnp.float32), b=jnp.float32(0.5), t0=T0, grid=grid
    )
    assert sim.cgm.dtype == jnp.float32 and bool(sim.successful)
    cgm64 = simulate_grid(Params(), _inputs(), TS, b=0.5, t0=T0, grid=grid).cgm
    np.testing.assert_allclose(np.asarray(sim.cgm, np.float64), cgm64, atol=0.05)
