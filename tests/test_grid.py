"""The fused fixed-step loop (`simulate_grid`): agreement, events, stability, derivatives."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.model import (
    FixedGrid,
    Inputs,
    Params,
    real_stability_limit,
    simulate,
    simulate_grid,
)

TIGHT = dfx.PIDController(rtol=1e-10, atol=1e-10)


def _inputs(shift: float = 0.0) -> Inputs:
    """A window with every kind of event: before t0, at t0, on and off the grid,
    a meal and a bolus at the same time, a basal change, and events after the end."""
    return Inputs(
        weight_kg=70.0,
        meal_times=[-600.0, -480.0, 7.3 * 60 + shift, 12 * 60.0, 18.6 * 60, 1500.0],
        meal_carbs_g=[50.0, 20.0, 45.0, 70.0, 80.0, 30.0],
        bolus_times=[-480.0, 7.3 * 60 + shift, 12 * 60 - 2.2, 18.6 * 60],
        bolus_u=[2.0, 3.5, 6.0, 6.5],
        basal_times=[-900.0, 3 * 60 + 0.7, 22 * 60.0],
        basal_u_per_h=[0.8, 1.1, 0.7],
    )


TS = jnp.arange(0.0, 1440.0, 5.0)
T0 = -480.0


def tight_solve(params, b, inputs=None):
    """The test window (`_inputs`, `TS` from `T0`) by an rtol-1e-10 adaptive solve."""
    inputs = _inputs() if inputs is None else inputs
    return simulate(
        params, inputs, TS, b=b, t0=T0, stepsize_controller=TIGHT, max_steps=2**18
    )


@pytest.mark.parametrize("b", [0.0, 0.8])
def test_grid_matches_a_tight_adaptive_solve(b):
    params, inputs = Params(), _inputs()
    ref = tight_solve(params, b)
    sim = simulate_grid(params, inputs, TS, b=b, t0=T0)
    assert bool(sim.successful)
    assert sim.state is None
    # 0.02 mg/dL against sensor noise of ~8: the default grid is a faithful forward model
    np.testing.assert_allclose(sim.cgm, ref.cgm, atol=0.02)
    np.testing.assert_allclose(sim.glucose, ref.glucose, atol=0.02)
    # plasma insulin right after a bolus follows the fast plasma–liver mode, which
    # 1.25-min steps resolve to about 0.6 %; it is not observed by the CGM
    np.testing.assert_allclose(sim.insulin, ref.insulin, rtol=1e-2)
    # steps: 8 h of warm-up and 287 intervals at 4 steps each, plus the events inside
    n_grid = 384 + 287 * 4
    assert n_grid < int(sim.num_steps) <= n_grid + 8


def test_cgm_only_saves_the_same_cgm_and_its_derivative():
    """``cgm_only=True`` (what fits use): the CGM and its forward-mode derivative are
    those of the full run, glucose and insulin are not saved, failures still show."""
    params, inputs = Params(), _inputs()

    def cgm(log_vmx, only):
        p = eqx.tree_at(lambda q: q.vmx, params, jnp.exp(log_vmx))
        return simulate_grid(p, inputs, TS, b=0.6, t0=T0, cgm_only=only).cgm

    x = jnp.log(params.vmx)
    full, d_full = jax.jvp(lambda v: cgm(v, False), (x,), (1.0,))
    only, d_only = jax.jvp(lambda v: cgm(v, True), (x,), (1.0,))
    np.testing.assert_array_equal(only, full)
    np.testing.assert_array_equal(d_only, d_full)
    assert float(jnp.max(jnp.abs(d_full))) > 1.0  # vmx moves the CGM
    sim = simulate_grid(params, inputs, TS, b=0.6, t0=T0, cgm_only=True)
    assert sim.glucose is None and sim.insulin is None and bool(sim.successful)
    bad = simulate_grid(params, inputs, TS, b=5.0, t0=T0, cgm_only=True)
    assert bad.result == dfx.RESULTS.breakdown


def test_events_are_not_rounded_to_the_grid():
    """A meal 40 s later changes the CGM by more than the grid's whole error."""
    params = Params()
    a = simulate_grid(params, _inputs(), TS, b=0.3, t0=T0)
    b = simulate_grid(params, _inputs(shift=40.0 / 60.0), TS, b=0.3, t0=T0)
    ref = tight_solve(params, 0.3, _inputs(shift=40.0 / 60.0))
    assert float(jnp.max(jnp.abs(a.cgm - b.cgm))) > 0.1
    np.testing.assert_allclose(b.cgm, ref.cgm, atol=0.02)


def test_error_falls_with_the_step_at_the_methods_order():
    params, inputs = Params(), _inputs()
    ref = tight_solve(params, 0.5).cgm
    err = []
    for h in (2.0, 1.0, 0.5):
        sim = simulate_grid(
            params, inputs, TS, b=0.5, t0=T0, grid=FixedGrid(max_step=h, safety=1.0)
        )
        assert bool(sim.successful)
        err.append(float(jnp.max(jnp.abs(sim.cgm - ref))))
    # Bosh3 is third order; the smooth switches of the model cost a little of it
    assert err[0] / err[1] > 4.0 and err[1] / err[2] > 4.0, err


def test_fasting_steady_state_is_kept_exactly():
    params = Params()
    inputs = Inputs(weight_kg=70.0, basal_times=[-1000.0], basal_u_per_h=[0.9])
    sim = simulate_grid(params, inputs, TS, b=0.6, t0=T0)
    assert float(jnp.ptp(sim.cgm)) < 1e-9


def test_unstable_grid_is_reported_not_returned():
    """B = 5 puts the first-phase loop at 4.2/min: 1.25-min Bosh3 steps are unstable."""
    params, inputs = Params(), _inputs()
    bad = simulate_grid(params, inputs, TS, b=5.0, t0=T0)
    assert not bool(bad.successful)
    assert bad.result == dfx.RESULTS.breakdown
    fine = simulate_grid(params, inputs, TS, b=5.0, t0=T0, grid=FixedGrid(max_step=0.5))
    assert bool(fine.successful) and bool(jnp.all(jnp.isfinite(fine.cgm)))


def test_stability_limits_of_known_tableaux():
    # 3-stage third order: R(-x) = 1 - x + x²/2 - x³/6 = -1 at x = 2.5127
    roots = np.roots([-1 / 6, 1 / 2, -1, 2])
    x = float(np.real(roots[np.abs(np.imag(roots)) < 1e-12][0]))
    assert real_stability_limit(dfx.Bosh3.tableau) == pytest.approx(x, abs=2e-3)
    assert real_stability_limit(dfx.Ralston.tableau) == pytest.approx(2.0, abs=2e-3)
    assert real_stability_limit(dfx.Tsit5.tableau) > 3.4


def _cgm_of(theta, inputs, grid=None):
    params = Params()
    params = eqx.tree_at(
        lambda p: (p.vmx, p.kp1),
        params,
        (params.vmx * jnp.exp(theta[0]), params.kp1 * jnp.exp(theta[1])),
    )
    return simulate_grid(params, inputs, TS, b=jnp.exp(theta[2]), t0=T0, grid=grid).cgm


def test_forward_and_reverse_derivatives_match_finite_differences():
    inputs = _inputs()
    theta = jnp.array([0.1, -0.05, np.log(0.4)])
    jac = jax.jacfwd(_cgm_of)(theta, inputs)
    eps = 1e-6
    fd = jnp.stack(
        [
            (_cgm_of(theta + eps * e, inputs) - _cgm_of(theta - eps * e, inputs))
            / (2 * eps)
            for e in jnp.eye(3)
        ],
        axis=1,
    )
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(jac))) > 1.0  # not a vacuous comparison
    grad = jax.grad(lambda th: jnp.sum(_cgm_of(th, inputs) ** 2) / 1e4)(theta)
    np.testing.assert_allclose(grad, 2 * _cgm_of(theta, inputs) @ jac / 1e4, rtol=1e-8)


def test_vmap_over_windows_with_padded_events_equals_single_windows():
    params = Params()
    windows = [
        _inputs(),
        Inputs(
            weight_kg=80.0,
            meal_times=[600.0],
            meal_carbs_g=[60.0],
            basal_times=[0.0],
            basal_u_per_h=[1.0],
        ),
    ]
    stacked = Inputs.stack(windows)
    b = jnp.array([0.2, 0.9])
    run = jax.jit(
        jax.vmap(
            lambda i, bb: (
                simulate_grid(
                    params, i, TS, b=bb, t0=T0, substeps=4, warmup_steps=384
                ).cgm
            )
        )
    )
    batched = run(stacked, b)
    for k, inp in enumerate(windows):
        one = simulate_grid(params, inp, TS, b=b[k], t0=T0).cgm
        np.testing.assert_allclose(batched[k], one, rtol=1e-12, atol=1e-10)


def test_traced_times_need_explicit_step_counts():
    params, inputs = Params(), _inputs()
    with pytest.raises(ValueError, match="pass substeps="):
        jax.jit(lambda ts: simulate_grid(params, inputs, ts).cgm)(TS)


def test_float32_runs_and_agrees():
    with jax.enable_x64(False):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), Params())
        inputs = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _inputs())
        sim = simulate_grid(params, inputs, TS.astype(jnp.float32), b=0.5, t0=T0)
        assert sim.cgm.dtype == jnp.float32 and bool(sim.successful)
        cgm32 = np.asarray(sim.cgm, np.float64)
    cgm64 = simulate_grid(Params(), _inputs(), TS, b=0.5, t0=T0).cgm
    np.testing.assert_allclose(cgm32, cgm64, atol=0.05)


def test_fixed_grid_validates_its_settings():
    with pytest.raises(ValueError, match="max_step"):
        FixedGrid(max_step=0.0)
    with pytest.raises(TypeError, match="explicit Runge"):
        FixedGrid(solver=dfx.Kvaerno5())
    with pytest.raises(ValueError, match="unroll"):
        FixedGrid(unroll=0)


def test_fit_model_refuses_a_tolerance_the_grid_would_ignore():
    from isletfit.fitting import FitModel

    with pytest.raises(ValueError, match="grid=None"):
        FitModel(rtol=1e-7)
    assert FitModel(rtol=1e-7, grid=None).grid is None


@pytest.mark.slow
def test_fixed_grid_fits_agree_with_the_adaptive_fit(tmp_path):
    """Solver agreement where it matters: the graft estimate of a whole fit, with the
    default grid (one `ExponentialRK4` step per 5 min) and with Bosh3 at 1.25 min."""
    from isletfit.fitting import FitModel, fit_patient

    from fit_fixtures import REFERENCE, synthetic_patient

    patient, _ = synthetic_patient(
        tmp_path / "p.csv", seed=3, blocks=((-7, 2), (60, 2), (120, 1))
    )
    kw = dict(weight_kg=70.0, transplant_date=REFERENCE, starts=1)
    adaptive = fit_patient(
        patient, key=jax.random.key(0), model=FitModel(grid=None), **kw
    )
    band = np.sqrt(np.diag(np.asarray(adaptive.cov)))
    assert adaptive.converged and float(np.max(band)) > 0.01
    # the optima differ by far less than the estimates' own uncertainty (measured:
    # log kd 0.014 off with 5-min ETDRK4 steps, CGM within about 0.1 mg/dL; with
    # 5-min ETD3RK steps, 0.3–0.5 mg/dL, log kd moved by 0.62)
    for model in (FitModel(), FitModel(grid=FixedGrid())):
        grid = fit_patient(patient, key=jax.random.key(0), model=model, **kw)
        assert grid.converged
        np.testing.assert_allclose(grid.log_b, adaptive.log_b, atol=0.02)
        np.testing.assert_allclose(grid.theta, adaptive.theta, atol=0.02)
        assert abs(grid.rmse_mg_dl - adaptive.rmse_mg_dl) < 1e-3


def test_a_warm_up_without_steps_is_refused_or_flagged():
    params, inputs = Params(), _inputs()
    with pytest.raises(ValueError, match="warmup_steps"):
        simulate_grid(params, inputs, TS, t0=T0, warmup_steps=0)
    traced = jax.jit(
        lambda t0: (
            simulate_grid(
                params, inputs, TS, t0=t0, substeps=4, warmup_steps=0
            ).successful
        )
    )
    assert not bool(traced(jnp.asarray(T0)))
    assert bool(traced(jnp.asarray(0.0)))


def test_saved_states_and_the_end_state_match_a_tight_adaptive_solve():
    """``save_state=True`` saves every compartment after the events at each output
    time (a meal and a bolus fall on one at 18:36), as `simulate` does; `grid_solve`'s
    end state is the last saved one."""
    from isletfit.model._grid import grid_solve

    params, inputs = Params(), _inputs()
    ts = jnp.asarray([0.0, 7.3 * 60, 12 * 60.0, 18.6 * 60, 1400.0, 1435.0])
    ref = simulate(
        params, inputs, ts, b=0.5, t0=T0, stepsize_controller=TIGHT, max_steps=2**18
    )
    sim, end = grid_solve(
        params,
        inputs,
        ts,
        b=0.5,
        t0=T0,
        substeps=600,
        warmup_steps=700,
        save_state=True,
    )
    assert bool(sim.successful)
    for name in ref.state.__dataclass_fields__:
        a, b = getattr(ref.state, name), getattr(sim.state, name)
        scale = float(jnp.max(jnp.abs(a))) + 1e-9
        np.testing.assert_allclose(b, a, atol=2e-3 * scale, err_msg=name)
        assert float(getattr(end, name)) == float(b[-1]), name
    # the 80-g dinner at 18:36 is in the stomach saved at 18:36 [mg/kg]
    assert float(sim.state.qsto1[3]) == pytest.approx(80e3 / 70.0, rel=1e-3)
    np.testing.assert_allclose(sim.glucose, sim.state.gp / params.vg)
    # the observables equal those of the run that saves only them
    lean = simulate_grid(
        params, inputs, ts, b=0.5, t0=T0, substeps=600, warmup_steps=700
    )
    np.testing.assert_array_equal(lean.cgm, sim.cgm)
    assert lean.state is None
