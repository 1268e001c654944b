"""Population fits: stacking, the hierarchical fit, failures, sharding, checkpoints.

One small synthetic cohort (4 patients, baseline and day-180 visits of 2 CGM days) is
simulated per module; every in-process population fit uses the same stacked shapes, so
the vmapped solver compiles once.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from isletfit import InputError
from isletfit._cli import main
from isletfit.cohort import VisitPlan, simulate_cohort, write_cohort, zimislecel_like
from isletfit.data import read, read_patients
from isletfit.fitting import (
    Covariate,
    FitModel,
    LevenbergMarquardt,
    LinearisedEM,
    PlainEM,
    PopulationResult,
    Prior,
    SquaremEM,
    _population,
    fit_population,
    population_standard_errors,
    stack_problems,
    visual_predictive_check,
)
from isletfit.fitting._fit import _estimate_noise, _linearise
from isletfit.fitting._population import HierarchicalObjective, _Carried
from isletfit.fitting._problem import Objective
from isletfit.fitting._stacking import (
    embed_global,
    prepare_patient,
    stack_windows_host,
)

N = 4
PLAN = VisitPlan(visit_days=(-14, 180), block_days=2, checkin_every_days=0)
#: The arguments of every in-process fit (with the cohort's sheet).
FIT = dict(max_rounds=3, starts=1)
SEED = 0


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory):
    cohort = simulate_cohort(
        zimislecel_like(), N, key=jax.random.key(11), visits=PLAN, chunk_size=N
    )
    assert not cohort.failed.any()
    paths = write_cohort(cohort, tmp_path_factory.mktemp("cohort"))
    return paths, cohort


@pytest.fixture(scope="module")
def data(cohort_files):
    paths, _ = cohort_files
    patients = [read(f) for f in sorted(paths["cgm"].glob("*.csv"))]
    return patients, read_patients(paths["patients"])


@pytest.fixture(scope="module")
def population(data, tmp_path_factory):
    patients, sheet = data
    ckpt = tmp_path_factory.mktemp("run") / "state.npz"
    rounds = []
    res = fit_population(
        patients,
        sheet=sheet,
        key=jax.random.key(SEED),
        checkpoint=ckpt,
        on_round=rounds.append,
        **FIT,
    )
    return res, rounds, ckpt


def _cost(obj, g, loc, noise):
    """½‖r‖² of a single-patient objective (forward solves only)."""
    u = obj.to_window(g)
    wt = jnp.ones(obj.windows.obs.shape[1])
    r = jax.vmap(lambda uw, lw, w: obj.window_residual(uw, lw, w, noise, wt))(
        u, loc, jnp.arange(u.shape[0])
    )
    return 0.5 * (jnp.sum(r**2) + jnp.sum(obj.global_residual(g) ** 2))


def test_stacking_round_trip(data):
    """A patient padded into a stack has the same cost as on its own."""
    patients, sheet = data
    model, prior = FitModel(), Prior()
    # a second patient with only the baseline visit: fewer windows, knots, events
    short = patients[1].window(0.0, 2 * 1440.0)
    problem, infos = stack_problems([patients[0], short], model=model, sheet=sheet)
    assert problem.n_patients == 2 and bool(problem.real.all())
    assert infos[1].n_windows == 2 and infos[1].n_knots == 1
    cost = eqx.filter_jit(_cost)
    noise = (jnp.asarray(9.0), jnp.asarray(0.6))
    for i, patient in enumerate([patients[0], short]):
        windows, _ = prepare_patient(patient, model=model, sheet=sheet)
        alone = Objective(windows=windows, model=model, prior=prior)
        stacked = problem.objective(i)
        p, k, s = alone.n_params, alone.n_knots, alone.n_sessions
        key_t, key_k, key_c = jax.random.split(jax.random.key(i), 3)
        g = jnp.concatenate(
            [
                alone.prior_centre() + 0.1 * jax.random.normal(key_t, (p,)),
                jnp.where(
                    windows.knot_valid,
                    -1.0 + 0.1 * jax.random.normal(key_k, (k,)),
                    0.0,
                ),
                0.5 * jax.random.normal(key_c, (2 * s,)),
            ]
        )
        loc = jnp.full((windows.ts.shape[0], alone.n_local), 0.05)
        g_pad = embed_global(
            g,
            n_params=p,
            n_knots=(k, stacked.n_knots),
            n_sessions=(s, stacked.n_sessions),
        )
        extra = stacked.windows.ts.shape[0] - windows.ts.shape[0]
        loc_pad = jnp.concatenate([loc, jnp.zeros((extra, alone.n_local))])
        c_alone = float(cost(alone, g, loc, noise))
        c_stacked = float(cost(stacked, g_pad, loc_pad, noise))
        assert np.isfinite(c_alone)
        np.testing.assert_allclose(c_stacked, c_alone, rtol=1e-12)

    # the population prior: same residuals as the single-patient prior at its values
    obj = problem.objective(0)
    g = jnp.concatenate(
        [obj.prior_centre() + 0.2, jnp.zeros(obj.n_knots + 2 * obj.n_sessions)]
    )
    hier = HierarchicalObjective(
        windows=obj.windows,
        model=model,
        prior=prior,
        mu=obj.prior_centre(),
        omega=jnp.asarray(prior.log_sd),
    )
    np.testing.assert_allclose(hier.global_residual(g), obj.global_residual(g))
    moved = eqx.tree_at(
        lambda h: (h.mu, h.omega), hier, (hier.mu + 0.2, 2 * hier.omega)
    )
    r = moved.global_residual(g)
    np.testing.assert_allclose(r[: obj.n_params], 0.0, atol=1e-12)
    np.testing.assert_allclose(
        r[obj.n_params :], obj.global_residual(g)[obj.n_params :]
    )


def test_carried_blocks_under_a_new_prior_equal_a_fresh_linearisation(data):
    """A cut solve's blocks, moved to the next round's prior centre and SD on the host
    (`_Carried.under`), are the blocks a fresh linearisation there gives: the prior
    on θ is quadratic, so the correction is exact (no Jacobian needed)."""
    patients, sheet = data
    model, prior = FitModel(), Prior()
    problem, _ = stack_problems(patients[:2], model=model, sheet=sheet)
    p = problem.n_params
    obj = problem.objective(0)
    g = jnp.concatenate(
        [obj.prior_centre() + 0.15, jnp.zeros(obj.n_knots + 2 * obj.n_sessions)]
    )
    loc = jnp.full((obj.windows.ts.shape[0], obj.n_local), 0.05)
    noise = (jnp.asarray(9.0), jnp.asarray(0.3))
    wt = jnp.ones(obj.windows.obs.shape)

    def blocks(centre, omega):
        hier = HierarchicalObjective(
            windows=obj.windows, model=model, prior=prior, mu=centre, omega=omega
        )
        out, (pred, ok, _) = eqx.filter_jit(_linearise)(hier, g, loc, noise, wt)
        return jax.tree.map(lambda x: np.asarray(x)[None], out), pred, ok

    c0, w0 = np.asarray(obj.prior_centre()), np.asarray(prior.log_sd)
    c1, w1 = c0 - 0.3, 0.6 * w0
    old, pred, ok = blocks(jnp.asarray(c0), jnp.asarray(w0))
    carried = _Carried(
        on=np.ones(1, bool),
        blocks=old,
        pred=np.asarray(pred)[None],
        ok=np.asarray(ok)[None],
        centre=c0[None],
        omega=w0,
    )
    moved = carried.under(np.asarray(g[:p])[None], c1[None], w1)
    fresh, _, _ = blocks(jnp.asarray(c1), jnp.asarray(w1))
    assert float(moved.blocks.cost[0]) != pytest.approx(float(old.cost[0]))
    for a, b in zip(jax.tree.leaves(moved.blocks), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-9)
    np.testing.assert_array_equal(moved.centre, c1[None])


def test_host_stack_consumes_the_prepared_patients(data, monkeypatch):
    """Stacking with ``consume`` (freed memory handed back) gives the same stack."""
    from isletfit.fitting import _stacking

    patients, sheet = data
    model = FitModel()
    prepared = [prepare_patient(p, model=model, sheet=sheet)[0] for p in patients]
    kept = stack_windows_host(list(prepared), model=model, prior=Prior())
    monkeypatch.setattr(_stacking, "_TRIM_EVERY", 1)  # hand back after each patient
    consumed = list(prepared)
    del prepared
    stack = stack_windows_host(consumed, model=model, prior=Prior(), consume=True)
    assert consumed == [None] * N
    for a, b in zip(
        jax.tree.leaves(stack.windows), jax.tree.leaves(kept.windows), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_population_fit(population, data, cohort_files):
    """The fit converges towards typical values between the individual estimates."""
    res, rounds, ckpt = population
    patients, sheet = data
    _, cohort = cohort_files
    assert isinstance(res, PopulationResult)
    assert res.failures == {} and set(res.results) == set(res.patient_id)
    assert res.rounds == len(rounds) >= 1 and res.history_mu.shape == (res.rounds, 6)
    assert [r.round for r in rounds] == list(range(1, res.rounds + 1))
    # mu and omega settle: the last round changes them less than the first
    assert rounds[-1].change < rounds[0].change
    assert np.all(res.omega >= 0.02) and np.all(np.isfinite(res.mu))
    assert np.all((res.shrinkage >= 0.0) & (res.shrinkage <= 1.0))
    # independent fits: the same program with the single-patient prior, no EM round
    alone = fit_population(
        patients, sheet=sheet, key=jax.random.key(SEED), **{**FIT, "max_rounds": 0}
    )
    assert alone.rounds == 0 and not alone.converged
    lo, hi = alone.theta.min(axis=0), alone.theta.max(axis=0)
    assert np.all((lo <= res.mu) & (res.mu <= hi)), (lo, res.mu, hi)
    # EBEs are pulled towards mu, relative to the independent estimates
    spread = np.abs(res.theta - res.mu).sum()
    assert spread < np.abs(alone.theta - res.mu).sum()
    # insulin sensitivity of each patient is recovered to within a factor of 1.5
    true_vmx = np.asarray(cohort.patients.params.vmx)
    k = res.estimated.index("vmx")
    np.testing.assert_array_less(
        np.abs(res.theta[:, k] - np.log(true_vmx)), np.log(1.5)
    )

    table = res.parameters()
    assert list(table["name"]) == list(res.estimated)
    assert np.all(table["lower"] < table["typical_value"])
    assert np.all(table["typical_value"] < table["upper"])
    # standard errors from the patients' Laplace covariances (first-order conditional
    # Fisher information): never below the values for exactly known EBEs
    cov = res.theta_cov
    mu_se, omega_se = population_standard_errors(res.omega, cov)
    np.testing.assert_allclose(
        np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), res.theta_sd, rtol=1e-12
    )
    # each patient's band is fit_patient's: the Laplace covariance widened where the
    # day-windows scatter more than the noise model says, never narrower
    for i, pid in enumerate(res.patient_id):
        excess = res.results[pid].cov[:6, :6] - cov[i]
        assert np.linalg.eigvalsh(excess).min() > -1e-9 * np.abs(cov[i]).max()
    np.testing.assert_allclose(table["mu_se"], mu_se, rtol=1e-12)
    np.testing.assert_allclose(table["omega_se"], omega_se, rtol=1e-12)
    assert np.all(mu_se >= res.omega / np.sqrt(N) * (1 - 1e-12))
    assert np.all(omega_se >= res.omega / np.sqrt(2 * N) * (1 - 1e-12))
    assert np.all(np.isfinite(mu_se)) and np.all(np.isfinite(omega_se))
    np.testing.assert_allclose(table["rse_percent"], 100 * mu_se, rtol=1e-12)
    np.testing.assert_allclose(
        table["omega_rse_percent"], 100 * omega_se / res.omega, rtol=1e-12
    )
    np.testing.assert_allclose(
        table["shrinkage_percent"], 100 * res.shrinkage, rtol=1e-12
    )
    sd_shrinkage = 1 - np.std(res.theta, axis=0) / res.omega
    np.testing.assert_allclose(table["shrinkage_sd_percent"], 100 * sd_shrinkage)
    traj = res.graft_trajectory()
    assert traj["study_day"].iloc[0] == 0.0 and np.all(traj["n_patients"] == N)
    assert np.all(np.diff(traj["study_day"]) == 7.0)
    visits = res.visits()
    assert len(visits) == 2 * N
    after = visits[visits["study_day_start"] > 0]
    assert np.all(after["graft_b_lower"] < after["graft_b"])
    assert np.all(after["graft_b"] < after["graft_b_upper"])
    assert np.all(visits.loc[visits["study_day_start"] < 0, "graft_b"] == 0.0)
    assert len(res.estimates()) == N * 6
    one = res.results[res.patient_id[0]]
    band = one.graft_band()
    assert np.all(band["lower"] <= band["estimate"])
    assert one.sensor is not None and one.sigma_mg_dl > 0
    json.dumps(res.summary())
    # the checkpoint holds the last round
    with np.load(ckpt) as z:
        assert int(z["round"]) == res.rounds
        np.testing.assert_array_equal(z["mu"], res.mu)


def test_chunked_fit_equals_unchunked(population, data, monkeypatch):
    """3 lanes (the fourth patient takes the first lane freed) give the 4-lane fit.

    Each patient's solve runs in the same segments whichever lane it is in and
    whichever patients share its calls, so the result depends neither on the lanes
    nor on the order the E-steps take the patients in (here the reverse of
    `_Engine.longest_first`'s), to rounding.
    """
    res, _, _ = population
    patients, sheet = data
    orders, longest_first = [], _population._Engine.longest_first

    def reverse(state):
        orders.append(longest_first(state)[::-1])
        return orders[-1]

    monkeypatch.setattr(_population._Engine, "longest_first", staticmethod(reverse))
    chunked = fit_population(
        patients, sheet=sheet, key=jax.random.key(SEED), chunk_size=3, **FIT
    )
    assert len(orders) == chunked.e_steps - 1  # every E-step after the screening
    assert chunked.chunk_size == 3 and res.chunk_size == N
    assert chunked.rounds == res.rounds and chunked.e_steps == res.e_steps
    _assert_same_fit(chunked, res)


def _assert_same_fit(a_fit: PopulationResult, b_fit: PopulationResult) -> None:
    for name in ["mu", "omega", "theta", "theta_sd", "history_mu", "history_omega"]:
        np.testing.assert_allclose(
            getattr(a_fit, name), getattr(b_fit, name), rtol=0, atol=1e-10, err_msg=name
        )
    for pid in b_fit.patient_id:
        a, b = a_fit.results[pid], b_fit.results[pid]
        np.testing.assert_allclose(a.log_b, b.log_b, rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.cov, b.cov, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(a.predicted, b.predicted, rtol=0, atol=1e-8)
        assert a.sigma_mg_dl == pytest.approx(b.sigma_mg_dl, rel=1e-10)
        assert a.iterations == b.iterations


def test_narrowed_e_steps_equal_the_wide_ones(data, monkeypatch):
    """An E-step's last solves moved to a narrower program give the same fit.

    Forced here from 4 lanes to 2 (by default from 32 lanes on, 8 times narrower),
    with segments of 2 iterations so that the solves end in different calls: the last
    two solves of an E-step run in a 2-lane program, each patient in the same
    segments, so the fit is the 4-lane one.
    """
    patients, sheet = data
    monkeypatch.setattr(_population, "_SEGMENT", {"cpu": 2})
    fit = dict(FIT, max_rounds=1)
    wide = fit_population(patients, sheet=sheet, key=jax.random.key(SEED), **fit)
    monkeypatch.setattr(_population, "_NARROW_FROM", {"cpu": 4})
    monkeypatch.setattr(_population, "_NARROW_RATIO", 2)
    widths = []
    call = _population._Engine._call

    def spy(self, centre, *args, **kwargs):
        widths.append(len(centre))
        return call(self, centre, *args, **kwargs)

    monkeypatch.setattr(_population._Engine, "_call", spy)
    narrowed = fit_population(patients, sheet=sheet, key=jax.random.key(SEED), **fit)
    assert narrowed.chunk_size == wide.chunk_size == N
    assert set(widths) == {N, N // 2}
    assert narrowed.rounds == wide.rounds and narrowed.e_steps == wide.e_steps
    _assert_same_fit(narrowed, wide)


def test_bad_arguments(data):
    patients, sheet = data
    for bad in [0, -1, 2.5, True]:
        with pytest.raises(InputError, match="chunk_size"):
            fit_population(patients, sheet=sheet, key=jax.random.key(0), chunk_size=bad)
    with pytest.raises(InputError, match="tol_se"):
        fit_population(patients, sheet=sheet, key=jax.random.key(0), tol_se=-1.0)
    with pytest.raises(InputError, match="em must"):
        fit_population(patients, sheet=sheet, key=jax.random.key(0), em="squarem")
    with pytest.raises(InputError, match="mstep"):
        SquaremEM(mstep=1.0)
    with pytest.raises(InputError, match="step_min"):
        SquaremEM(step_max0=0.5)


def _iterate(strategy, fmap, x0, *, tol, floor=0.02, limit=500):
    """Run an EM strategy on a map -> (fixed point, evaluations of the map)."""
    p = x0.shape[0] // 2
    state = strategy.init(x0[:p], x0[p:])
    for k in range(1, limit + 1):
        fx = fmap(state.point)
        if np.max(np.abs(fx - state.point)) < tol:
            return fx, k
        state = strategy.update(state, fx, floor=floor)
    raise AssertionError("no convergence")


#: Fixed point (μ, ω) of the affine maps below.
_FIXED = np.array([0.3, -1.0, 0.8, 0.5])


def _on_affine_map(a, *strategies):
    """Each strategy on x -> x* + a (x − x*) from one start: (fixed point, maps)."""
    fmap = lambda x: _FIXED + a @ (x - _FIXED)  # noqa: E731
    x0 = np.array([0.0, 0.0, 0.3, 0.3])
    return [_iterate(em, fmap, x0, tol=1e-8) for em in strategies]


def test_squarem_on_a_slow_linear_map():
    """A contraction with rate 0.95: SQUAREM needs a fraction of the EM's steps."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    (plain, n_plain), (fast, n_fast) = _on_affine_map(
        q @ np.diag([0.95, 0.9, 0.5, 0.2]) @ q.T, PlainEM(), SquaremEM()
    )
    np.testing.assert_allclose(plain, _FIXED, atol=1e-6)
    np.testing.assert_allclose(fast, _FIXED, atol=1e-6)
    assert n_fast < n_plain / 3, (n_fast, n_plain)
    # an extrapolation to a negative omega falls back to the plain EM point x2
    state = SquaremEM(step_max0=8.0).init(np.zeros(1), np.array([1.0]))
    state = SquaremEM(step_max0=8.0).update(state, np.array([0.0, 0.6]), floor=0.02)
    x2 = np.array([0.0, 0.3])
    state = SquaremEM(step_max0=8.0).update(state, x2, floor=0.02)
    assert int(state.rejected) == 1 and int(state.phase) == 0
    np.testing.assert_array_equal(state.point, x2)
    # an extrapolated point whose EM step is longer than the plain one is rejected
    em = SquaremEM(step_max0=4.0)
    state = em.init(np.zeros(1), np.array([1.0]))
    state = em.update(state, np.array([0.1, 1.0]), floor=0.02)
    state = em.update(state, np.array([0.15, 1.0]), floor=0.02)
    assert int(state.phase) == 2 and float(state.alpha) == pytest.approx(2.0)
    state = em.update(state, state.point + 1.0, floor=0.02)
    assert int(state.rejected) == 1 and float(state.step_max) == 4.0
    np.testing.assert_array_equal(state.point, [0.15, 1.0])


def test_linearised_em_relaxes_an_oscillating_map():
    """Rounds that reverse their residual are under-relaxed by a secant step.

    A map with rate −0.9 along one direction (the quadratic models overshooting)
    oscillates for 171 plain rounds; the relaxed ones cancel the rate (22 rounds),
    and a map without reversals is followed whole (the point is the map's value).
    """
    (_, n_plain), (relaxed, n_relaxed) = _on_affine_map(
        np.diag([-0.9, 0.3, 0.0, 0.0]), PlainEM(), LinearisedEM()
    )
    np.testing.assert_allclose(relaxed, _FIXED, atol=1e-7)
    assert n_plain > 150 and n_relaxed < n_plain / 5, (n_plain, n_relaxed)  # 171, 22
    em = LinearisedEM()
    state = em.init(np.zeros(2), np.ones(2))
    for value in [0.5, 0.7, 0.8]:  # a monotone approach
        mapped = np.array([value, 0.0, 1.0, 1.0])
        state = em.update(state, mapped, floor=0.02)
        np.testing.assert_array_equal(state.point, mapped)
        assert float(state.relax) == 1.0


def test_secant_noise_update_lands_on_a_linear_maps_fixed_point():
    """The CGM error's secant step solves F(x) = x at once when F is linear.

    F(x) = x* + s (x − x*) per component (slope s = 0.34 and 0.25, as measured on a
    14-day record): two plain re-estimates, then one secant step, reach x* to
    rounding; two plain re-estimates leave 6–12 % of the way to go.
    """
    fixed = np.array([np.log(11.85), 0.958])
    slope = np.array([0.34, 0.25])
    fmap = lambda x: fixed + slope * (x - fixed)  # noqa: E731
    x0 = np.array([[np.log(10.0), 0.9]])
    none = np.full((1, 2, 2), np.nan)
    x1 = _population._secant_noise(x0, fmap(x0), none)  # no history: plain
    np.testing.assert_array_equal(x1, fmap(x0))
    last = np.stack([x0, fmap(x0)], axis=1)
    x2 = _population._secant_noise(x1, fmap(x1), last)
    np.testing.assert_allclose(x2[0], fixed, rtol=0, atol=1e-12)
    plain = fmap(fmap(x0))  # as many evaluations of F
    assert np.all(np.abs(plain - fixed) > 0.05 * np.abs(x0 - fixed))
    # a fixed point stays put (the step is F(x) − x = 0 whatever the slope)
    here = fixed[None]
    np.testing.assert_array_equal(_population._secant_noise(here, here, last), here)
    # an oscillating or too steep component takes the plain re-estimate; bounds hold
    for s in [-0.5, 0.9]:
        f = lambda x, s=s: fixed + s * (x - fixed)  # noqa: E731
        out = _population._secant_noise(x1, f(x1), np.stack([x0, f(x0)], axis=1))
        np.testing.assert_allclose(out, f(x1), rtol=0, atol=1e-15)
    far = np.array([[np.log(1.0), 0.98]])
    jump, before = np.array([-5.0, 0.5]), np.array([-4.0, 0.6])
    out = _population._secant_noise(
        far, far + jump, np.stack([far + 0.1, far + before], axis=1)
    )
    assert out[0, 0] >= np.log(0.5) and 0.0 <= out[0, 1] <= 0.99


def _reported_noise(res: PopulationResult) -> np.ndarray:
    """(log σ, φ) that each patient's fit reports ``[n, 2]``."""
    return np.array(
        [
            [np.log(res.results[p].sigma_mg_dl), res.results[p].ar1]
            for p in res.patient_id
        ]
    )


def _noise_gap(res: PopulationResult) -> np.ndarray:
    """|Δ(log σ, φ)| between each patient's reported CGM error and the one
    re-estimated from its reported fit's residuals ``[n, 2]``."""
    again = []
    for pid in res.patient_id:
        r = res.results[pid]
        use = np.asarray(r.mask) & (np.asarray(r.censored) == 0)
        resid = np.asarray(r.predicted) - np.asarray(r.observed)
        s, f = _estimate_noise(resid, use, np.ones(resid.shape), True)
        again.append([np.log(float(s)), float(f)])
    return np.abs(np.array(again) - _reported_noise(res))


def test_cgm_error_reaches_the_fixed_point_of_its_re_estimate(data, monkeypatch):
    """After complete rounds each patient's CGM error re-estimates to itself.

    The secant updates bring (σ, φ) to the fixed point of the re-estimate from the
    MAP's residuals; the plain re-estimate (secant disabled) reaches the same point,
    more slowly. Compared after 3 rounds (measured: largest log-σ gap 0.0021 with the
    secant, 0.0076 without); after 4 both are at the E-steps' own noise, about 1e-3,
    where either can be ahead.
    """
    patients, sheet = data
    kwargs = dict(sheet=sheet, key=jax.random.key(SEED), starts=1, tol=0.0)
    kwargs.update(tol_se=0.0, e_step_iterations=None, max_rounds=3)
    fast = fit_population(patients, **kwargs)
    gap_fast = _noise_gap(fast)
    assert np.all(gap_fast[:, 0] < 0.005) and np.all(gap_fast[:, 1] < 0.005), gap_fast
    monkeypatch.setattr(_population, "_SECANT_MAX_SLOPE", -1.0)  # never a secant step
    slow = fit_population(patients, **kwargs)
    gap_slow = _noise_gap(slow)
    assert gap_slow[:, 0].max() > gap_fast[:, 0].max(), (gap_slow, gap_fast)
    np.testing.assert_allclose(
        _reported_noise(slow), _reported_noise(fast), rtol=0, atol=0.02
    )


def _residual_noise_gap(problem, z) -> np.ndarray:
    """|Δ log σ| and |Δ log σ√(1 − φ²)| between a checkpoint's CGM errors and their
    re-estimates from the residuals at its points ``[n, 2]``."""
    out = []
    lin = eqx.filter_jit(_linearise)
    for i in range(problem.n_patients):
        obj = problem.objective(i)
        win = obj.windows
        noise = (jnp.asarray(z["sigma"][i]), jnp.asarray(z["phi"][i]))
        _, (pred, _, _) = lin(
            obj, z["g"][i], z["loc"][i], noise, jnp.ones(win.obs.shape)
        )
        use = np.asarray(win.mask & (win.censor == 0) & win.valid[:, None])
        resid = np.asarray(pred) - np.asarray(win.obs)
        s, f = _estimate_noise(resid, use, np.ones(resid.shape), True)
        d_sigma = np.log(s / z["sigma"][i])
        d_innov = d_sigma + 0.5 * np.log((1 - f**2) / (1 - z["phi"][i] ** 2))
        out.append([abs(d_sigma), abs(d_innov)])
    return np.array(out)


def test_cut_solves_follow_their_residuals_cgm_error(data, tmp_path, monkeypatch):
    """A cut solve's CGM error is re-estimated once its residuals are far from it.

    The first error comes from the screened starts' residuals (far from a MAP). After a
    cut round, each patient's (σ, φ) is within `_RENOISE_CUT` of the re-estimate from
    the residuals at its point (in log σ and in the log innovation SD); without the
    re-estimates of cut solves the screened error stays, farther off. The same rule
    holds where the blocks are not carried (over `_CARRY_BYTES`): a cut point, no
    MAP, starts no secant history.
    """
    patients, sheet = data
    kwargs = dict(sheet=sheet, key=jax.random.key(SEED), starts=1, tol=0.0)
    kwargs.update(tol_se=0.0, e_step_iterations=2, max_rounds=1)
    problem, _ = stack_problems(patients, model=FitModel(), sheet=sheet)

    def gap(name):
        rounds = []
        fit_population(
            patients, checkpoint=tmp_path / name, on_round=rounds.append, **kwargs
        )
        assert [r.cut for r in rounds] == [N]  # every solve cut
        with np.load(tmp_path / name) as z:
            assert np.all(np.isnan(z["noise_last"]))
            return _residual_noise_gap(problem, z)

    tau = _population._RENOISE_CUT
    followed = gap("follow.npz")
    assert followed.max() <= tau + 1e-9, followed
    with monkeypatch.context() as patch:
        patch.setattr(_population, "_CARRY_BYTES", 0)  # nothing carried
        uncarried = gap("uncarried.npz")
    assert uncarried.max() <= tau + 1e-9, uncarried
    monkeypatch.setattr(_population, "_RENOISE_CUT", np.inf)
    screened = gap("screened.npz")
    assert screened.max() > 2 * tau, screened


def test_squarem_resumes_mid_cycle(data, tmp_path):
    """Stopped with an extrapolated point pending, the fit resumes to the same result."""
    patients, sheet = data
    kwargs = dict(sheet=sheet, key=jax.random.key(SEED), starts=1, em=SquaremEM())
    kwargs["tol_se"] = 0.0  # runs all 6 rounds (with 0.05 SE it stops after 5)
    ckpt = tmp_path / "squarem.npz"
    fit_population(patients, max_rounds=4, checkpoint=ckpt, **kwargs)
    with np.load(ckpt) as z:
        assert int(z["round"]) == 4 and int(z["em_phase"]) == 2
        assert float(z["em_alpha"]) > 1.0
    resumed = fit_population(
        patients, max_rounds=6, checkpoint=ckpt, resume=True, **kwargs
    )
    whole = fit_population(patients, max_rounds=6, **kwargs)
    assert resumed.rounds == whole.rounds == 6 and resumed.e_steps == whole.e_steps
    for name in ["mu", "omega", "theta", "theta_sd", "history_mu", "history_omega"]:
        np.testing.assert_allclose(
            getattr(resumed, name), getattr(whole, name), rtol=0, atol=1e-10
        )


def _refused(patients, checkpoint, match, **kwargs):
    """Resuming from ``checkpoint`` with other settings is an `InputError`."""
    with pytest.raises(InputError, match=match):
        fit_population(patients, checkpoint=checkpoint, resume=True, **kwargs)


def test_incomplete_e_steps(data, tmp_path):
    """A round runs each solve for at most ``e_step_iterations``; the rest carries on.

    The cut solves continue in the next round from their point and damping (both in
    the checkpoint, so a resumed run equals an uninterrupted one). Once the population
    has settled in a round with cut solves, the next round solves every patient to its
    end, and the fit stops there if the population settles again.
    """
    patients, sheet = data
    kwargs = dict(sheet=sheet, key=jax.random.key(SEED), starts=1, e_step_iterations=1)
    moving = dict(tol=0.0, tol_se=0.0)  # the population never settles
    first, second = tmp_path / "one.npz", tmp_path / "two.npz"
    fit_population(patients, max_rounds=1, checkpoint=first, **moving, **kwargs)
    second.write_bytes(first.read_bytes())
    fit_population(
        patients, max_rounds=2, checkpoint=second, resume=True, **moving, **kwargs
    )
    with np.load(first) as a, np.load(second) as b:
        assert int(a["round"]) == 1 and int(b["round"]) == 2 and not bool(b["done"])
        assert not bool(a["complete"]) and not bool(b["complete"])
        step = b["iterations"] - a["iterations"]
        assert step.max() == 1 and step.min() >= 0, step
        assert np.any(b["damping"] != LevenbergMarquardt().lambda0)

    # with a loose tolerance the population settles in round 1 while solves are cut:
    # round 2 solves them to their end (complete), settles again and stops
    settling = dict(tol=10.0, **kwargs)
    rounds = []
    whole = fit_population(patients, max_rounds=40, on_round=rounds.append, **settling)
    assert [(r.complete, r.cut > 0) for r in rounds] == [(False, True), (True, False)]
    assert whole.converged and whole.rounds == 2
    third = tmp_path / "three.npz"
    fit_population(patients, max_rounds=1, checkpoint=third, **settling)
    with np.load(third) as z:
        assert bool(z["complete"]) and not bool(z["done"])
        before = z["iterations"]
    resumed = fit_population(
        patients, max_rounds=40, checkpoint=third, resume=True, **settling
    )
    with np.load(third) as z:
        assert (z["iterations"] - before).max() > 1  # the complete round
    assert resumed.rounds == whole.rounds
    for name in ["mu", "omega", "theta", "history_mu", "history_omega"]:
        np.testing.assert_allclose(
            getattr(resumed, name), getattr(whole, name), rtol=0, atol=1e-10
        )
    # the setting is part of what a checkpoint must match
    _refused(patients, second, "EM s", **{**kwargs, "e_step_iterations": 2})
    for bad in [0, 1.5, True]:
        with pytest.raises(InputError, match="e_step_iterations"):
            fit_population(
                patients, sheet=sheet, key=jax.random.key(0), e_step_iterations=bad
            )


def test_settled_relative_to_the_standard_errors(data):
    """A parameter has settled when it moved by less than ``tol_se`` of its SE.

    The round's standard errors come from its Laplace covariances (those of
    `population_standard_errors`); the rule stops the fit exactly at the threshold.
    """
    patients, sheet = data
    kwargs = dict(sheet=sheet, key=jax.random.key(SEED), starts=1, tol=0.0)
    kwargs["e_step_iterations"] = None  # every solve settles in its round
    rounds = []
    free = fit_population(
        patients, max_rounds=2, tol_se=0.0, on_round=rounds.append, **kwargs
    )
    assert not free.converged and free.rounds == 2
    first = rounds[0]
    assert np.isfinite(first.change_se) and first.change_se > 0
    # every SE is below one log unit here, so the change in SEs is the larger number
    assert first.change_se > first.change
    for factor, stops in [(1.01, True), (0.99, False)]:
        res = fit_population(
            patients, max_rounds=1, tol_se=factor * first.change_se, **kwargs
        )
        assert res.converged is stops
        np.testing.assert_allclose(res.mu, first.mu, rtol=0, atol=1e-10)


def test_covariates_on_the_typical_values(data, tmp_path):
    """Body weight on vmx and kp1: each patient's prior centre is μ + β·log(w/w̃).

    β comes with its standard error, the other parameters' β stay 0, shrinkage is
    that of the random effects around the centres, and β is in the checkpoint.
    """
    patients, sheet = data
    kwargs = dict(
        sheet=sheet,
        key=jax.random.key(SEED),
        starts=1,
        em=SquaremEM(),
        covariates=(Covariate("weight_kg", ("vmx", "kp1")),),
    )
    ckpt = tmp_path / "covariates.npz"
    res = fit_population(patients, max_rounds=3, checkpoint=ckpt, **kwargs)
    p = len(res.estimated)
    assert res.beta.shape == res.beta_se.shape == (p, 1)
    effects = res.covariate_effects()
    assert sorted(effects["name"]) == ["kp1", "vmx"]
    assert set(effects["covariate"]) == {"weight_kg"}
    assert np.all(np.isfinite(effects["beta_se"])) and np.all(effects["beta_se"] > 0)
    acting = np.isin(res.estimated, ["vmx", "kp1"])
    assert np.all(res.beta[~acting] == 0.0) and np.all(res.beta[acting] != 0.0)
    assert np.all(np.isnan(res.beta_se[~acting]))
    rows = sheet.set_index("patient_id").loc[list(res.patient_id)]
    weight = rows["weight_kg"].to_numpy(float)
    assert res.covariate_reference[0] == pytest.approx(np.median(weight))
    log_w = np.log(weight / np.median(weight))
    np.testing.assert_allclose(res.centres(), res.mu + log_w[:, None] * res.beta.T)
    eta = res.theta - res.centres()
    np.testing.assert_allclose(res.shrinkage, 1 - eta.var(axis=0) / res.omega**2)
    assert len(res.summary()["covariate_effects"]) == 2
    # the coefficients are part of the saved state
    with np.load(ckpt) as z:
        assert z["beta"].shape == (p, 1) and np.any(z["beta"] != 0.0)
    resumed = fit_population(
        patients, max_rounds=3, checkpoint=ckpt, resume=True, **kwargs
    )
    np.testing.assert_allclose(resumed.beta, res.beta, rtol=0, atol=1e-10)
    np.testing.assert_allclose(resumed.theta, res.theta, rtol=0, atol=1e-10)
    _refused(patients, ckpt, "covariates", **{**kwargs, "covariates": ()})
    with pytest.raises(InputError, match="LinearisedEM"):
        fit_population(patients, **{**kwargs, "em": LinearisedEM()})
    with pytest.raises(InputError, match="no column 'dose'"):
        fit_population(patients, **{**kwargs, "covariates": (Covariate("dose"),)})


@pytest.mark.slow
def test_squarem_fit_needs_fewer_e_steps(data, tmp_path):
    """SQUAREM and the linearised EM: near the plain EM's μ, ω in fewer E-steps.

    An interrupted SQUAREM run resumes exactly.

    The E-steps are solved more tightly than by default (optimiser atol 1e-7) on the
    fixed-grid windows, whose cost is a smooth function of the unknowns: at the
    default tolerance the EM map is noisy at about the EM's own tolerance in the
    weakly identified directions (each E-step's optimiser stops within its own
    tolerance), and no strategy converges faster than that noise allows. Both runs
    stop on "change < tol", which the plain EM meets before the slow ω of ``kabs``
    (high shrinkage, EM rate near 1) has settled, so the two stopping points agree
    to about 1e-2, not to ``tol``.
    """
    patients, sheet = data
    kwargs = dict(
        sheet=sheet,
        key=jax.random.key(SEED),
        starts=1,
        tol=1e-3,
        optimiser=LevenbergMarquardt(atol=1e-7, rtol=1e-13),
        e_step_iterations=None,  # complete E-steps: the strategies' own rates
        tol_se=0.0,  # on the same absolute tolerance (with 0.05 SE both stop at 7)
    )
    plain = fit_population(patients, max_rounds=40, **kwargs)
    rounds = []
    fast = fit_population(
        patients, max_rounds=40, em=SquaremEM(), on_round=rounds.append, **kwargs
    )
    print(
        f"plain EM: {plain.rounds} rounds, {plain.e_steps} E-steps; SQUAREM: "
        f"{fast.rounds} rounds, {fast.e_steps} E-steps, "
        f"{fast.extrapolations} extrapolations"
    )
    assert plain.converged and fast.converged
    assert fast.e_steps < plain.e_steps and fast.extrapolations >= 1
    assert any(r.extrapolated for r in rounds)
    assert [r.e_steps for r in rounds] == list(range(2, fast.rounds + 2))
    np.testing.assert_allclose(fast.mu, plain.mu, rtol=0, atol=2e-2)
    np.testing.assert_allclose(fast.omega, plain.omega, rtol=0, atol=2e-2)
    # the EM to its fixed point on each round's quadratic models, under-relaxed where
    # its rounds oscillate (measured: 10 E-steps against the plain EM's 13 and
    # SQUAREM's 11; 40 rounds without converging, ω of kd oscillating, unrelaxed)
    linear = fit_population(patients, max_rounds=40, em=LinearisedEM(), **kwargs)
    print(f"linearised EM: {linear.rounds} rounds, {linear.e_steps} E-steps")
    assert linear.converged and linear.e_steps < plain.e_steps
    np.testing.assert_allclose(linear.mu, plain.mu, rtol=0, atol=2e-2)
    np.testing.assert_allclose(linear.omega, plain.omega, rtol=0, atol=2e-2)
    # stopped with an extrapolated point pending (phase 2), then resumed
    ckpt = tmp_path / "squarem.npz"
    fit_population(patients, max_rounds=4, em=SquaremEM(), checkpoint=ckpt, **kwargs)
    with np.load(ckpt) as z:
        assert int(z["em_phase"]) == 2 and int(z["round"]) == 4
    resumed = fit_population(
        patients, max_rounds=40, em=SquaremEM(), checkpoint=ckpt, resume=True, **kwargs
    )
    assert resumed.rounds == fast.rounds and resumed.e_steps == fast.e_steps
    for name in ["mu", "omega", "theta", "history_mu", "history_omega"]:
        np.testing.assert_allclose(
            getattr(resumed, name), getattr(fast, name), rtol=0, atol=1e-10
        )
    # a checkpoint of the other strategy is refused
    with pytest.raises(InputError, match="EM strategy"):
        fit_population(patients, max_rounds=40, checkpoint=ckpt, resume=True, **kwargs)


def test_standard_errors_of_the_normal_normal_model():
    """Equal patients with data of precision 1/s²: SE(μ) = √((ω² + s²)/n) exactly."""
    n, omega, s2 = 7, np.array([0.3, 0.8, 0.05]), np.array([0.2, 0.04, 1.0])
    post = 1.0 / (1.0 / omega**2 + 1.0 / s2)  # Laplace posterior variance
    cov = np.broadcast_to(np.diag(post), (n, 3, 3))
    mu_se, omega_se = population_standard_errors(omega, cov)
    np.testing.assert_allclose(mu_se, np.sqrt((omega**2 + s2) / n), rtol=1e-12)
    # Fisher information of ω² is n/(2(ω² + s²)²); delta method to ω
    np.testing.assert_allclose(
        omega_se, (omega**2 + s2) / (omega * np.sqrt(2 * n)), rtol=1e-12
    )
    # exact data (s = 0): the classical ω/√n and ω/√(2n)
    exact = population_standard_errors(omega, np.zeros((n, 3, 3)))
    np.testing.assert_allclose(exact[0], omega / np.sqrt(n), rtol=1e-12)
    np.testing.assert_allclose(exact[1], omega / np.sqrt(2 * n), rtol=1e-12)
    # unequal patients: SE(μ)² = 1 / Σ 1/(ω² + s_i²)
    s2_i = np.array([0.01, 0.1, 0.5, 2.0])
    cov = np.stack([np.diag(1.0 / (1.0 / omega**2 + 1.0 / s)) for s in s2_i])
    mu_se, _ = population_standard_errors(omega, cov)
    expected = [1.0 / np.sqrt(np.sum(1.0 / (o**2 + s2_i))) for o in omega]
    np.testing.assert_allclose(mu_se, expected, rtol=1e-12)
    # correlated posteriors: the information is Σ V_i⁻¹ with V_i = Ω + P_i⁻¹
    rng = np.random.default_rng(0)
    big_omega = np.diag(omega**2)
    cov, info = [], np.zeros((3, 3))
    for _ in range(5):
        a = rng.standard_normal((3, 3))
        precision = a @ a.T + 0.1 * np.eye(3)  # the data's precision P_i
        cov.append(np.linalg.inv(np.linalg.inv(big_omega) + precision))
        info += np.linalg.inv(big_omega + np.linalg.inv(precision))
    mu_se, _ = population_standard_errors(omega, np.stack(cov))
    np.testing.assert_allclose(mu_se, np.sqrt(np.diag(np.linalg.inv(info))), rtol=1e-9)
    # data that say nothing about a parameter: infinite SE
    mu_se, omega_se = population_standard_errors(omega, np.stack([big_omega] * 3))
    assert np.all(np.isinf(mu_se)) and np.all(np.isinf(omega_se))


@pytest.mark.filterwarnings("ignore:visual_predictive_check. the ODE solve failed")
def test_visual_predictive_check_of_the_fit(population, data):
    """The fitted population reproduces the observed time in range; B x 4 does not."""
    res, _, _ = population
    patients, _ = data
    vpc = visual_predictive_check(res, patients, n_draws=100, key=jax.random.key(1))
    assert sorted(set(vpc["study_day"])) == [-14.0, 180.0]
    assert set(vpc["n_patients"]) == {N}
    assert vpc["inside"].mean() >= 0.8, vpc[~vpc["inside"]]
    four = {
        pid: dataclasses.replace(r, log_b=r.log_b + np.log(4.0))
        for pid, r in res.results.items()
    }
    wrong = visual_predictive_check(
        dataclasses.replace(res, results=four),
        patients,
        n_draws=100,
        key=jax.random.key(1),
    )
    after = wrong[wrong["study_day"] > 0]
    assert not after["inside"].all(), after
    assert wrong["inside"].mean() < vpc["inside"].mean()
    # the median time in range after transplant: the fit's simulation is nearer to
    # the observed one than B x 4's (4 patients give wide bands)
    tir = (vpc["study_day"] > 0) & (vpc["quantile"] == 0.5)
    tir &= vpc["metric"] == "tir_70_180_percent"
    gap = lambda v: float(np.abs(v["sim_median"] - v["observed"])[tir].iloc[0])  # noqa: E731
    assert gap(wrong) > 5.0 * gap(vpc) + 1.0, (gap(wrong), gap(vpc))


@pytest.mark.filterwarnings("ignore:too_short. body weight unknown")
def test_failed_patients_are_reported_and_the_others_fit(data):
    """A record that cannot be prepared and one whose model cannot be evaluated."""
    patients, sheet = data
    bad = patients[3]
    absurd = dataclasses.replace(
        bad,
        cgm=dataclasses.replace(bad.cgm, glucose_mg_dl=bad.cgm.glucose_mg_dl * 1e300),
    )
    empty = dataclasses.replace(patients[0].window(0.0, 120.0), patient_id="too_short")
    res = fit_population(
        [*patients[:3], absurd, empty],
        sheet=sheet,
        key=jax.random.key(SEED),
        **{**FIT, "max_rounds": 1},
    )
    assert set(res.failures) == {bad.patient_id, "too_short"}
    assert "non-finite" in res.failures[bad.patient_id]
    assert "CGM" in res.failures["too_short"]
    assert set(res.results) == {p.patient_id for p in patients[:3]}
    assert res.patient_id == tuple(p.patient_id for p in patients[:4])
    assert np.all(np.isnan(res.theta[3])) and np.all(np.isfinite(res.theta[:3]))
    assert np.all(np.isfinite(res.mu)) and res.parameters()["n_patients"].iloc[0] == 3
    with pytest.raises(InputError, match="no patient"):
        fit_population([empty], sheet=sheet, key=jax.random.key(0))


_RUN = textwrap.dedent(
    """
    import glob, os, sys
    import jax
    import numpy as np
    jax.config.update("jax_enable_x64", True)
    from isletfit.data import read, read_patients
    from isletfit.fitting import fit_population

    cgm, sheet_path, out, mode = sys.argv[1:5]
    patients = [read(f) for f in sorted(glob.glob(os.path.join(cgm, "*.csv")))]
    kwargs = dict(sheet=read_patients(sheet_path), key=jax.random.key({seed}),
                  **{fit})
    if mode == "kill":
        def stop(info):
            if info.round == 1:
                os._exit(3)  # no clean-up, as if the machine went down
        fit_population(patients, checkpoint=out, on_round=stop, **kwargs)
    else:
        mesh = jax.make_mesh((len(jax.devices()),), ("patients",))
        res = fit_population(patients, mesh=mesh, **kwargs)
        log_b = np.stack([res.results[p].log_b for p in res.patient_id])
        np.savez(out, mu=res.mu, omega=res.omega, theta=res.theta, log_b=log_b,
                 n_devices=res.n_devices)
    """
).format(seed=SEED, fit=FIT)


def _run(cohort_files, out, mode, devices=1):
    paths, _ = cohort_files
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    )
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _RUN,
            str(paths["cgm"]),
            str(paths["patients"]),
            out,
            mode,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_killed_run_resumes_to_the_same_result(
    population, data, cohort_files, tmp_path
):
    res, _, _ = population
    patients, sheet = data
    ckpt = tmp_path / "state.npz"
    proc = _run(cohort_files, str(ckpt), "kill")
    assert proc.returncode == 3, proc.stderr[-3000:]
    with np.load(ckpt) as z:
        assert int(z["round"]) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file
    resumed = fit_population(
        patients,
        sheet=sheet,
        key=jax.random.key(SEED),
        checkpoint=ckpt,
        resume=True,
        **FIT,
    )
    assert resumed.rounds == res.rounds
    np.testing.assert_allclose(resumed.mu, res.mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(resumed.omega, res.omega, rtol=0, atol=1e-10)
    np.testing.assert_allclose(resumed.theta, res.theta, rtol=0, atol=1e-10)
    np.testing.assert_allclose(resumed.history_mu, res.history_mu, rtol=0, atol=1e-10)
    # a checkpoint of other patients is refused
    with pytest.raises(InputError, match="checkpoint"):
        fit_population(
            patients[:3],
            sheet=sheet,
            key=jax.random.key(SEED),
            checkpoint=ckpt,
            resume=True,
            **FIT,
        )


@pytest.mark.parametrize("devices", [2, 3])
def test_sharded_fit_equals_unsharded(population, cohort_files, tmp_path, devices):
    """Forced host devices: 4 patients, 2 per device (+ 2 dummies with 3 devices).

    Two devices are as many as the CI machine's cores: while the solver loop used
    batched LAPACK kernels, that configuration hung in XLA's CPU thread pool at
    times (not on every run; this test passed with that code once in one try). A
    hang fails the test at the run's timeout.
    """
    res, _, _ = population
    out = tmp_path / "sharded.npz"
    proc = _run(cohort_files, str(out), "mesh", devices=devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as z:
        assert int(z["n_devices"]) == devices
        np.testing.assert_allclose(z["mu"], res.mu, rtol=0, atol=1e-8)
        np.testing.assert_allclose(z["omega"], res.omega, rtol=0, atol=1e-8)
        np.testing.assert_allclose(z["theta"], res.theta, rtol=0, atol=1e-8)
        log_b = np.stack([res.results[p].log_b for p in res.patient_id])
        np.testing.assert_allclose(z["log_b"], log_b, rtol=0, atol=1e-8)


def test_fit_command_population_uses_every_device(
    cohort_files, tmp_path, capsys, monkeypatch
):
    """Without --distributed the patients go over all of the process's devices.

    A CPU's cores are exposed as devices by the command (`_cores_as_devices`); here
    the devices are counted as two and the fit is stopped where it starts.
    """
    import isletfit.fitting
    import isletfit.fitting._distributed as distributed

    paths, _ = cohort_files
    seen = {}
    mesh = object()

    def stop(patients, **kwargs):
        seen["mesh"] = kwargs["mesh"]
        raise InputError("stopped by the test")

    monkeypatch.setattr(isletfit.fitting, "fit_population", stop)
    monkeypatch.setattr(distributed, "patient_mesh", lambda: mesh)
    argv = ["fit", str(paths["cgm"]), "--patients", str(paths["patients"])]
    argv += ["--out", str(tmp_path / "o"), "--population"]
    monkeypatch.setattr(jax, "local_device_count", lambda: 2)
    assert main(argv) != 0
    assert seen["mesh"] is mesh
    monkeypatch.setattr(jax, "local_device_count", lambda: 1)
    assert main(argv) != 0
    assert seen["mesh"] is None
    assert "stopped by the test" in capsys.readouterr().err


def test_fit_command_population(cohort_files, tmp_path, capsys):
    """`isletfit fit --population` writes the population tables and every patient's."""
    paths, _ = cohort_files
    out = tmp_path / "out"
    argv = [
        "fit",
        str(paths["cgm"]),
        "--patients",
        str(paths["patients"]),
        "--out",
        str(out),
        "--population",
        "--starts",
        "1",
        "--max-rounds",
        "1",
        "--vpc-draws",
        "100",
        "--em",
        "linearised",
        "--lanes",
        "3",
    ]
    assert main(argv) == 0
    assert f"{N} of {N} patients fitted" in capsys.readouterr().out
    table = pd.read_csv(out / "population_parameters.csv")
    assert list(table["name"]) == list(Prior().estimated)
    for column in ["mu_se", "rse_percent", "omega", "omega_se", "shrinkage_percent"]:
        assert table[column].notna().all(), column
    assert (out / "population_graft.csv").exists()
    assert len(pd.read_csv(out / "population_estimates.csv")) == 6 * N
    vpc = pd.read_csv(out / "vpc.csv")
    assert set(vpc["metric"]) == {"tir_70_180_percent", "tbr_below_70_percent"}
    assert len(vpc) == 2 * 2 * 3 and (vpc["n_draws"] == 100).all()
    page = (out / "population_report.html").read_text()
    for section in ['id="parameters"', 'id="graft"', 'id="vpc"', 'id="patients"']:
        assert section in page, section
    assert page.count("data:image/png") == 2  # graft trajectory and VPC figures
    assert "RSE %" in page and "shrinkage % (SD)" in page
    for pid in pd.read_csv(out / "summary.csv")["patient_id"].unique():
        assert f'href="report.html#{pid}"' in page
    assert "population_report.html" in (out / "report.html").read_text()
    assert not list(out.glob(".*.tmp"))  # every file written atomically
    assert (out / "population_checkpoint.npz").exists()
    summary = pd.read_csv(out / "summary.csv")
    assert summary.groupby("patient_id").size().eq(2).all() and len(summary) == 2 * N
    for pid in summary["patient_id"].unique():
        assert (out / pid / "graft_function.csv").exists()
    assert (out / "report.html").exists()
    # a second run continues from the checkpoint: same population table
    assert main(argv) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "population_parameters.csv"), table)
    with np.load(out / "population_checkpoint.npz") as z:
        assert "em_inner_rounds" in z.files  # the linearised EM's state
    # `isletfit report` rebuilds both pages from the folder
    (out / "population_report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert "Population report" in capsys.readouterr().out
    assert 'id="vpc"' in (out / "population_report.html").read_text()
    assert 'id="covariates"' not in (out / "population_report.html").read_text()
    # covariates and incomplete E-steps from the command line
    cov_out = tmp_path / "covariates"
    argv2 = [*argv[: argv.index("--out")], "--out", str(cov_out), "--population"]
    argv2 += ["--starts", "1", "--max-rounds", "2", "--vpc-draws", "0"]
    argv2 += ["--covariate", "weight_kg:vmx", "--e-step-iterations", "2"]
    assert main(argv2) == 0
    effects = pd.read_csv(cov_out / "population_covariates.csv")
    assert list(effects["name"]) == ["vmx"] and list(effects["covariate"]) == [
        "weight_kg"
    ]
    assert 'id="covariates"' in (cov_out / "population_report.html").read_text()
    capsys.readouterr()
    for bad in (["--covariate", "weight_kg:"], ["--e-step-iterations", "-1"]):
        assert main(argv2 + bad) != 0
        assert "--" in capsys.readouterr().err
    assert main([*argv[: argv.index("--population")], "--covariate", "x"]) != 0
    assert "needs --population" in capsys.readouterr().err
