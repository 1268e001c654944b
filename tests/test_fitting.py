"""Fitting: the structured optimiser, window preparation, and recovery on a synthetic patient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.fitting import FitModel, LevenbergMarquardt, fit_patient, prepare_windows
from isletfit.fitting._lm import _spd_inverse, blocks_from_jacobians, schur_covariance
from isletfit.model import MechanisticGraft

from fit_fixtures import REFERENCE, synthetic_patient


def test_structured_lm_matches_dense_least_squares():
    """A linear arrow problem: the LM solution and Schur covariance equal the dense ones."""
    rng = np.random.default_rng(0)
    n_w, m, ng, nl = 5, 12, 3, 2
    ag = rng.standard_normal((n_w, m, ng))
    al = rng.standard_normal((n_w, m, nl))
    y = rng.standard_normal((n_w, m))
    a0, y0 = rng.standard_normal((4, ng)), rng.standard_normal(4)

    def linearise(g, loc):
        rw = jnp.einsum("wmi,i->wm", ag, g) + jnp.einsum("wmi,wi->wm", al, loc) - y
        r0 = a0 @ g - y0
        return blocks_from_jacobians(
            rw, jnp.asarray(ag), jnp.asarray(al), r0, jnp.asarray(a0)
        ), rw

    lm = LevenbergMarquardt(max_iter=50, atol=0.0, rtol=1e-14)
    res = lm(linearise, jnp.zeros(ng), jnp.zeros((n_w, nl)))
    # dense problem: unknowns [g, l_1, ..., l_W]
    dense = np.zeros((n_w * m + 4, ng + n_w * nl))
    for w in range(n_w):
        dense[w * m : (w + 1) * m, :ng] = ag[w]
        dense[w * m : (w + 1) * m, ng + w * nl : ng + (w + 1) * nl] = al[w]
    dense[n_w * m :, :ng] = a0
    rhs = np.concatenate([y.ravel(), y0])
    x, *_ = np.linalg.lstsq(dense, rhs, rcond=None)
    assert bool(res.converged)
    np.testing.assert_allclose(res.g, x[:ng], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res.loc.ravel(), x[ng:], rtol=1e-6, atol=1e-9)
    cov_dense = np.linalg.inv(dense.T @ dense)[:ng, :ng]
    np.testing.assert_allclose(schur_covariance(res.blocks), cov_dense, rtol=1e-8)


def test_blocks_formed_in_window_unknowns_equal_those_of_the_global_jacobian():
    """u_w = D_w g: blocks from J_u and D (u-space products) equal those from J_u D."""
    rng = np.random.default_rng(3)
    n_w, m, nu, ng, nl = 4, 9, 3, 7, 2
    ju = rng.standard_normal((n_w, m, nu))
    du = rng.standard_normal((n_w, nu, ng)) * (rng.random((n_w, nu, ng)) < 0.5)
    jl = rng.standard_normal((n_w, m, nl))
    rw, r0 = rng.standard_normal((n_w, m)), rng.standard_normal(5)
    j0 = rng.standard_normal((5, ng))
    jg = np.einsum("wmu,wug->wmg", ju, du)
    dense = blocks_from_jacobians(rw, jg, jl, r0, j0)
    mapped = blocks_from_jacobians(rw, ju, jl, r0, j0, du=du)
    for a, b in zip(dense, mapped, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-12)
    assert mapped.hgl.shape == (n_w, ng, nl)


def test_small_spd_inverse_equals_lapack_on_ill_conditioned_blocks():
    """The local blocks' Gauss–Jordan inverse (no LAPACK) against numpy's, batched,
    condition numbers up to ~1e10, and a padding window's scaled identity."""
    rng = np.random.default_rng(1)
    j = rng.standard_normal((6, 40, 5)) * np.logspace(0, -5, 5)  # sloppy columns
    a = np.einsum("wmi,wmj->wij", j, j)
    a[-1] = 1e-11 * np.eye(5)
    inv = np.asarray(_spd_inverse(jnp.asarray(a)))
    ref = np.linalg.inv(a)
    scale = np.abs(ref).max(axis=(1, 2), keepdims=True)
    assert np.max(np.abs(inv - ref) / scale) < 1e-6
    np.testing.assert_allclose(
        np.einsum("wij,wjk->wik", a, inv)[:-1],
        np.broadcast_to(np.eye(5), (5, 5, 5)),
        atol=1e-5,
    )


def test_held_jacobian_steps_reach_the_same_optimum_with_exact_final_blocks():
    """Chord steps (held Jacobian) converge to the plain LM optimum of a nonlinear
    arrow problem, with fewer Jacobians, and the returned blocks are exact there."""
    rng = np.random.default_rng(1)
    n_w, m, ng, nl = 6, 20, 3, 2
    ag = 0.3 * rng.standard_normal((n_w, m, ng))
    al = 0.3 * rng.standard_normal((n_w, m, nl))
    truth_g, truth_l = rng.standard_normal(ng), rng.standard_normal((n_w, nl))
    y = np.exp(
        np.einsum("wmi,i->wm", ag, truth_g) + np.einsum("wmi,wi->wm", al, truth_l)
    )
    y = y + 0.05 * rng.standard_normal(y.shape)

    def residuals(g, loc):
        z = jnp.einsum("wmi,i->wm", ag, g) + jnp.einsum("wmi,wi->wm", al, loc)
        return jnp.exp(z) - y, 0.1 * g

    def linearise(g, loc):
        rw, r0 = residuals(g, loc)
        jg = jax.jacfwd(lambda gg: residuals(gg, loc)[0])(g)
        jl = jnp.einsum("wmwi->wmi", jax.jacfwd(lambda ll: residuals(g, ll)[0])(loc))
        j0 = 0.1 * jnp.eye(ng)
        return blocks_from_jacobians(rw, jg, jl, r0, j0), rw, (jg, jl, j0)

    def evaluate(g, loc, jac, held):
        jg, jl, j0 = jac
        rw, r0 = residuals(g, loc)
        blocks = held._replace(
            cost=0.5 * (jnp.sum(rw**2) + jnp.sum(r0**2)),
            bg=jnp.einsum("wmi,wm->i", jg, rw) + j0.T @ r0,
            bl=jnp.einsum("wmi,wm->wi", jl, rw),
        )
        return blocks, rw

    g0, l0 = jnp.zeros(ng), jnp.zeros((n_w, nl))
    lm = LevenbergMarquardt(max_iter=200, atol=1e-12, rtol=1e-14)
    plain = LevenbergMarquardt(max_iter=200, atol=1e-12, rtol=1e-14, reuse_jacobian=0)
    held = lm(linearise, g0, l0, evaluate=evaluate)
    ref = plain(linearise, g0, l0, evaluate=evaluate)
    assert bool(held.converged) and bool(ref.converged)
    np.testing.assert_allclose(held.g, ref.g, atol=1e-5)
    np.testing.assert_allclose(held.loc, ref.loc, atol=1e-5)
    assert int(held.jacobians) < int(ref.jacobians)
    exact, _, _ = linearise(held.g, held.loc)
    for a, b in zip(held.blocks, exact, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def _exp_arrow_problem(ag, al, y):
    """``linearise`` of the arrow problem r = exp(A_g g + A_l l_w) − y, prior 0.1·g."""
    ng = ag.shape[-1]

    def linearise(g, loc):
        def res(gg, ll):
            z = jnp.einsum("wmi,i->wm", ag, gg) + jnp.einsum("wmi,wi->wm", al, ll)
            return jnp.exp(z) - y

        jg = jax.jacfwd(lambda gg: res(gg, loc))(g)
        jl = jnp.einsum("wmwi->wmi", jax.jacfwd(lambda ll: res(g, ll))(loc))
        rw = res(g, loc)
        return blocks_from_jacobians(rw, jg, jl, 0.1 * g, 0.1 * jnp.eye(ng)), rw

    return linearise


def test_line_search_after_a_rejected_step_reaches_the_optimum_in_fewer_iterations():
    """A large-residual arrow problem whose curvature the Gauss–Newton model
    underestimates (every residual positive, Σ r ∇²r > 0: a full step overshoots):
    retrying a rejected step at the minimum of the parabola through the trial reaches
    the optimum of plain Levenberg–Marquardt in fewer iterations."""
    rng = np.random.default_rng(0)
    n_w, m, ng, nl = 6, 30, 3, 2
    ag = 0.5 * rng.standard_normal((n_w, m, ng))
    al = 0.5 * rng.standard_normal((n_w, m, nl))
    y = -rng.uniform(0.5, 2.0, (n_w, m))  # below any exp(z): residuals all positive

    linearise = _exp_arrow_problem(ag, al, y)

    g0, l0 = jnp.zeros(ng), jnp.zeros((n_w, nl))
    kw = dict(max_iter=300, atol=1e-10, rtol=1e-14)
    searched = LevenbergMarquardt(**kw)(linearise, g0, l0)
    plain = LevenbergMarquardt(**kw, line_search=False)(linearise, g0, l0)
    assert bool(searched.converged) and bool(plain.converged)
    np.testing.assert_allclose(searched.g, plain.g, atol=1e-5)
    np.testing.assert_allclose(searched.loc, plain.loc, atol=1e-5)
    assert int(searched.iterations) < 0.7 * int(plain.iterations)


def test_a_solve_continued_from_its_blocks_is_the_uninterrupted_one():
    """A solve cut after k steps and continued with its blocks, aux and damping
    (``start``, ``carried``) follows the uninterrupted iterates exactly, without
    linearising its starting point again."""
    rng = np.random.default_rng(2)
    n_w, m, ng, nl = 4, 15, 3, 2
    ag = 0.3 * rng.standard_normal((n_w, m, ng))
    al = 0.3 * rng.standard_normal((n_w, m, nl))
    y = np.exp(np.einsum("wmi,i->wm", ag, rng.standard_normal(ng)))
    y = y + 0.05 * rng.standard_normal(y.shape)

    linearise = _exp_arrow_problem(ag, al, y)

    lm = LevenbergMarquardt(atol=0.0, rtol=0.0, xtol=0.0, lambda0=1.0)
    g0, l0 = jnp.zeros(ng), jnp.zeros((n_w, nl))
    whole = lm(linearise, g0, l0, max_iter=5)
    part = lm(linearise, g0, l0, max_iter=2)
    assert int(part.iterations) == 2 and not bool(part.stopped)

    def go_on(carried):
        start = (part.blocks, part.aux)
        return lm(
            linearise,
            part.g,
            part.loc,
            max_iter=3,
            damping=part.damping,
            start=start,
            carried=carried,
        )

    rest = go_on(True)
    assert int(rest.iterations) == 3 and int(rest.jacobians) == 3
    assert int(whole.jacobians) == 6  # the start, then one per step
    np.testing.assert_allclose(rest.g, whole.g, rtol=0, atol=1e-13)
    np.testing.assert_allclose(rest.loc, whole.loc, rtol=0, atol=1e-13)
    assert float(rest.damping) == pytest.approx(float(whole.damping), rel=1e-12)
    # not carried: the start is linearised again (the iterates then differ)
    assert int(go_on(False).jacobians) == 4


def test_soft_physiological_bounds_are_smooth_and_exact_inside(tmp_path):
    """`Objective.params_from` keeps each estimated field inside its physiological
    bounds smoothly: exp(θ) inside (to 1.3e-3 at a factor e from a bound), never
    beyond a bound, and with a slope that fades without vanishing at once (a hard clip
    made the data's information jump to zero there)."""
    from isletfit.fitting import Prior
    from isletfit.fitting._problem import Objective
    from isletfit.model import param_info

    patient, _ = synthetic_patient(tmp_path / "p.csv", blocks=((-3, 1),))
    windows, _ = prepare_windows(
        patient,
        model=FitModel(),
        weight_kg=70.0,
        transplant_day=patient_day(patient, 0.0),
    )
    prior = Prior()
    obj = Objective(windows=windows, model=FitModel(), prior=prior)
    j = prior.estimated.index("kabs")
    lo, hi = next((r["lower"], r["upper"]) for r in param_info() if r["name"] == "kabs")
    centre = np.asarray(obj.prior_centre())

    def kabs(t):
        return obj.params_from(jnp.asarray(centre).at[j].set(t)).kabs

    # inside: the identity, to e^{-kd}/k on the log scale
    for t in [np.log(lo) + 1.0, np.log(0.057), np.log(hi) - 1.0]:
        assert abs(np.log(float(kabs(t))) - t) < 1.4e-3
    ts = np.linspace(np.log(lo) - 3.0, np.log(hi) + 3.0, 601)
    values = np.asarray(jax.vmap(kabs)(jnp.asarray(ts)))
    assert np.all(values > lo) and np.all(values <= hi * (1 + 1e-12))
    slope = np.asarray(jax.vmap(jax.grad(kabs))(jnp.asarray(ts)))
    assert np.all(slope > 0)
    # at the bound the slope is a fair fraction of the interior one, and it fades
    # smoothly (no jump between neighbouring points) beyond
    rel = slope / values
    at_hi = np.argmin(np.abs(ts - np.log(hi)))
    assert 0.3 < rel[at_hi] < 0.7
    assert np.max(np.abs(np.diff(rel))) < 0.05
    # the reported value (`FitResult.parameters`, numpy) is the one the model used
    from isletfit.fitting._problem import soft_bounded

    host = np.exp([soft_bounded("kabs", float(t)) for t in ts])
    np.testing.assert_allclose(host, values, rtol=1e-12)


def test_prepare_windows_cuts_days_pads_and_maps_study_days(tmp_path):
    patient, _ = synthetic_patient(tmp_path / "p.csv", blocks=((-3, 2), (10, 2)))
    windows, info = prepare_windows(
        patient,
        model=FitModel(),
        weight_kg=70.0,
        transplant_day=patient_day(patient, 0.0),
    )
    assert info.n_windows == 4 and windows.ts.shape == (8, 288)
    study = np.asarray(windows.study_day)[:4]
    np.testing.assert_allclose(study, [-2.5, -1.5, 10.5, 11.5])
    assert list(np.asarray(windows.graft_on)[:4]) == [False, False, True, True]
    assert not bool(windows.valid[4]) and not bool(windows.mask[4].any())
    # interpolation weights sum to one on graft days, zero before infusion
    np.testing.assert_allclose(np.asarray(windows.interp).sum(1)[:4], [0, 0, 1, 1])
    # each window's solve starts 8 h before its midnight
    np.testing.assert_allclose(
        np.asarray(windows.t0)[:4] % 1440.0, (1440.0 - FitModel().warmup_min) % 1440.0
    )


def test_sensor_sessions_split_at_missing_days_wear_time_and_warm_up_gaps():
    from isletfit.fitting._problem import _sensor_sessions

    model = FitModel(sensor_days=10.0, sensor_change_gap_min=100.0)
    per_day = 288
    days = np.arange(30)
    mask = np.ones((30, per_day), bool)
    mask[14] = False  # a missing day
    mask[20, 100:125] = False  # 125 min without readings: a new sensor warming up
    mask[25, 10:20] = False  # 50 min signal loss: same sensor
    keep = days[mask.any(axis=1)]
    session = _sensor_sessions(keep, mask, 0, model)
    by_day = dict(zip(keep.tolist(), session.tolist(), strict=True))
    assert by_day[0] == by_day[9] == 0
    assert by_day[10] == by_day[13] == 1  # 10 days of wear, then a new sensor
    assert by_day[15] == by_day[19] == 2  # after the missing day
    assert by_day[20] == by_day[29] == 3  # after the warm-up gap; not after 50 min


def patient_day(patient, study_day):
    """Days since the record's reference midnight of a study day."""
    return float((REFERENCE - patient.reference_time.normalize()).days) + study_day


def test_fit_recovers_graft_function_and_noise(tmp_path):
    patient, truth = synthetic_patient(tmp_path / "p.csv", seed=3)
    res = fit_patient(
        patient,
        weight_kg=70.0,
        transplant_date=REFERENCE,
        starts=1,
        key=jax.random.key(0),
    )
    assert res.converged, res.message
    # fit error close to the sensor noise (8 mg/dL)
    assert 7.0 < res.rmse_mg_dl < 9.5
    band = res.graft_band(np.array([-5.0, 31.0, 121.0]))
    true_b = np.asarray(truth["graft"](jnp.asarray(band.study_day.to_numpy() + 0.5)))
    assert band.estimate.iloc[0] == 0.0 and band.upper.iloc[0] == 0.0
    np.testing.assert_allclose(band.estimate.iloc[1:], true_b[1:], rtol=0.15)
    assert np.all(band.lower.to_numpy()[1:] < band.upper.to_numpy()[1:])
    # parameters near the truth, with finite intervals
    table = res.parameters().set_index("name")
    assert table.loc["vmx", "value"] == pytest.approx(0.04, rel=0.15)
    assert table.loc["kp1", "value"] == pytest.approx(5.9, rel=0.05)
    assert np.all(np.isfinite(table.loc[list(res.estimated), ["lower", "upper"]]))
    summary = res.summary()
    assert summary["n_readings"] == 9 * 288 and summary["converged"]
    # the simulated sensor is exact: every session's calibration interval covers it
    sensor = res.sensor
    assert list(sensor.session) == [0, 1, 2]  # one session per CGM block
    assert np.all((sensor.gain_lower < 1.0) & (1.0 < sensor.gain_upper))
    assert np.all((sensor.offset_lower < 0.0) & (0.0 < sensor.offset_upper))


def test_visit_summary_reports_b_need_and_metrics(tmp_path):
    from isletfit.fitting import visit_summary

    patient, _ = synthetic_patient(tmp_path / "p.csv", seed=3)
    res = fit_patient(
        patient,
        weight_kg=70.0,
        transplant_date=REFERENCE,
        starts=1,
        key=jax.random.key(0),
    )
    table = visit_summary(res, patient)
    assert list(table.visit) == [0, 1, 2] and list(table.n_days) == [3, 3, 3]
    assert table.graft_b.iloc[0] == 0.0 and table.insulin_u_per_day.iloc[0] > 20.0
    assert table.graft_b.is_monotonic_increasing
    assert np.all(table.need_covered_lower <= table.need_covered + 1e-12)
    assert np.all(table.need_covered <= table.need_covered_upper + 1e-12)
    # the last visit's graft (B ≈ 0.68) holds fasting glucose without insulin
    assert (
        table.p_insulin_independent.iloc[-1] > 0.9
        and table.need_covered.iloc[-1] == 1.0
    )
    assert 0 < table.tir_70_180_percent.iloc[0] <= 100


@pytest.mark.slow
def test_latent_meals_recover_the_graft_when_meal_logs_are_withheld(tmp_path):
    from isletfit.fitting import LatentMeals

    blocks = ((-7, 3), (30, 3), (90, 3), (180, 3))
    logged, truth = synthetic_patient(tmp_path / "a.csv", seed=2, blocks=blocks)
    unlogged, _ = synthetic_patient(
        tmp_path / "b.csv", seed=2, blocks=blocks, log_meals=False
    )
    assert len(unlogged.carbs) == 0 and len(logged.carbs) > 0
    days = np.array([31.0, 91.0, 181.0])
    true_b = np.asarray(truth["graft"](jnp.asarray(days + 0.5)))
    kw = dict(weight_kg=70.0, transplant_date=REFERENCE, key=jax.random.key(0))
    with_logs = fit_patient(logged, **kw).graft_band(days)
    latent = fit_patient(unlogged, model=FitModel(meals=LatentMeals()), **kw)
    band = latent.graft_band(days)
    assert latent.rmse_mg_dl < 12.0  # the latent meals explain the excursions
    assert np.all((band.lower <= true_b) & (true_b <= band.upper))
    # ignoring the missing meals instead is far worse
    ignored = fit_patient(unlogged, **kw)
    assert ignored.rmse_mg_dl > 3 * latent.rmse_mg_dl
    # the price of missing logs: wider bands
    width = lambda b: np.log(b.upper / b.lower)  # noqa: E731
    assert np.all(width(band) > 2 * width(with_logs))


@pytest.mark.slow
def test_no_graft_patient_gets_b_near_zero(tmp_path):
    graft = MechanisticGraft(infusion_day=0.0, engrafted=0.0)
    patient, _ = synthetic_patient(
        tmp_path / "p.csv", seed=5, graft=graft, blocks=((-7, 3), (90, 3), (180, 3))
    )
    res = fit_patient(
        patient, weight_kg=70.0, transplant_date=REFERENCE, key=jax.random.key(0)
    )
    band = res.graft_band(np.array([91.0, 181.0]))
    assert res.converged and res.rmse_mg_dl < 10.0
    # B near zero, and the band rules out a graft that could matter: its upper end stays
    # well below the ~0.3 that holds fasting glucose without insulin
    assert np.all(band.estimate < 0.05) and np.all(band.upper < 0.15)


@pytest.mark.slow
def test_insulin_independent_patient_without_any_insulin_record(tmp_path):
    graft = MechanisticGraft(
        infusion_day=0.0, engrafted=0.9, onset_lag=20.0, tau_maturation=30.0
    )
    patient, truth = synthetic_patient(
        tmp_path / "p.csv",
        seed=6,
        graft=graft,
        blocks=((180, 3), (270, 3)),
        insulin=False,
    )
    assert len(patient.boluses) == 0 and len(patient.basal) == 0
    res = fit_patient(
        patient, weight_kg=70.0, transplant_date=REFERENCE, key=jax.random.key(0)
    )
    days = np.array([181.0, 271.0])
    band = res.graft_band(days)
    true_b = np.asarray(truth["graft"](jnp.asarray(days + 0.5)))
    assert res.converged and res.rmse_mg_dl < 10.0
    assert np.all((band.lower <= true_b) & (true_b <= band.upper))
    assert np.all(band.estimate > 0.4)


def test_robust_covariance_widens_laplace_only_by_the_excess_score_scatter():
    from isletfit.fitting._lm import robust_covariance

    rng = np.random.default_rng(1)
    n_w, m, ng, nl = 6, 10, 3, 2
    jg = jnp.asarray(rng.standard_normal((n_w, m, ng)))
    jl = jnp.asarray(rng.standard_normal((n_w, m, nl)))
    j0 = jnp.asarray(rng.standard_normal((4, ng)))
    rw = jnp.asarray(rng.standard_normal((n_w, m)))
    blocks = blocks_from_jacobians(rw, jg, jl, jnp.zeros(4), j0)
    laplace = np.asarray(schur_covariance(blocks))
    valid = jnp.ones(n_w, bool)
    # scores that vanish after profiling the locals: nothing to widen
    hll_inv = jnp.linalg.inv(blocks.hll)
    null = jnp.einsum("wgi,wij,wj->wg", blocks.hgl, hll_inv, blocks.bl)
    np.testing.assert_allclose(
        robust_covariance(blocks, null, j0.T @ j0, valid), laplace, rtol=1e-10
    )
    # large scores: the result is the sandwich, and never narrower than Laplace
    big = 50.0 * jnp.asarray(rng.standard_normal((n_w, ng))) + null
    robust = np.asarray(robust_covariance(blocks, big, j0.T @ j0, valid))
    assert np.all(np.linalg.eigvalsh(robust - laplace) > -1e-12)
    s = np.asarray(big - null)
    meat = s.T @ s * n_w / (n_w - 1)
    h_data = np.linalg.inv(laplace) - np.asarray(j0.T @ j0)
    vals, vecs = np.linalg.eigh(meat - h_data)
    excess = (vecs * np.maximum(vals, 0.0)) @ vecs.T
    np.testing.assert_allclose(robust, laplace + laplace @ excess @ laplace, rtol=1e-8)


_SPLIT_RUN = """
import json, sys
import jax
import numpy as np
sys.path.insert(0, {tests!r})
from fit_fixtures import REFERENCE, synthetic_patient
from isletfit import InputError
from isletfit.fitting import fit_patient

patient, _ = synthetic_patient({csv!r}, seed=3, blocks=((-7, 2), (30, 3)))
kw = dict(weight_kg=70.0, transplant_date=REFERENCE, starts=1, key=jax.random.key(0))
one = fit_patient(patient, **kw)
mesh = jax.make_mesh((len(jax.devices()),), ("windows",))
split = fit_patient(patient, mesh=mesh, **kw)
try:
    fit_patient(patient, mesh=jax.make_mesh((1, 1), ("a", "b")), **kw)
    error = ""
except InputError as e:
    error = str(e)
print(json.dumps(dict(
    devices=len(jax.devices()),
    iterations=[one.iterations, split.iterations],
    log_b=[one.log_b.tolist(), split.log_b.tolist()],
    theta=[one.theta.tolist(), split.theta.tolist()],
    cov=[one.cov.tolist(), split.cov.tolist()],
    predicted=[one.predicted.tolist(), split.predicted.tolist()],
    error=error,
)))
"""


@pytest.mark.slow
def test_windows_split_over_host_devices_give_the_one_device_fit(tmp_path):
    """`fit_patient(mesh=...)`: three CPU host devices (the 5 windows padded to 24, a
    multiple of both the bucket and the devices) reach the one-device optimum."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=3"
    )
    code = _SPLIT_RUN.format(
        tests=str(Path(__file__).parent), csv=str(tmp_path / "p.csv")
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 3
    assert out["iterations"][0] == out["iterations"][1]
    for name, atol in (("log_b", 1e-6), ("theta", 1e-6), ("cov", 1e-8)):
        a, b = (np.asarray(x) for x in out[name])
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=atol, err_msg=name)
    a, b = (np.asarray(x) for x in out["predicted"])
    np.testing.assert_allclose(b, a, atol=1e-6)
    assert "one-axis mesh" in out["error"] and "'mesh'" in out["error"]


@pytest.mark.slow
def test_float32_jacobians_keep_the_cost_exact_and_the_optimum(tmp_path):
    """`FitModel(jacobian_dtype=float32)`: the window-local clock is exact, the cost
    and residuals stay float64, the Gauss–Newton blocks are within float32 rounding,
    and the fit reaches the float64 optimum well inside its standard errors."""
    import equinox as eqx

    from isletfit.fitting import Prior
    from isletfit.fitting._fit import _linearise, _pad_events, _window_local
    from isletfit.fitting._problem import Objective

    # a year into the record, where float32 minutes since the reference are coarse
    patient, _ = synthetic_patient(
        tmp_path / "p.csv", seed=4, blocks=((-7, 2), (330, 2))
    )
    kw = dict(weight_kg=70.0, transplant_day=patient_day(patient, 0.0))
    f32 = FitModel(jacobian_dtype=np.dtype(np.float32))
    windows, _ = prepare_windows(patient, model=f32, **kw)
    windows = eqx.tree_at(lambda w: w.inputs, windows, _pad_events(windows.inputs))
    obj = Objective(windows=windows, model=f32, prior=Prior())
    assert float(jnp.max(windows.ts)) > 4e5  # minutes since the reference
    p = obj.n_params
    g = jnp.concatenate(
        [
            obj.prior_centre() + 0.1,
            jnp.where(windows.knot_valid, jnp.log(0.5), 0.0),
            jnp.full(2 * obj.n_sessions, 0.3),
        ]
    )
    loc = jnp.full((windows.ts.shape[0], obj.n_local), 0.05)
    u = obj.to_window(g)
    # shifting every time of a window by its start changes nothing (in float64)
    local = _window_local(obj, jnp.float64)
    for w in range(4):
        a, _ = obj.simulate_window(u[w, : p + 1], loc[w], w)
        b, _ = local.simulate_window(u[w, : p + 1], loc[w], w)
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-9)
    noise = (jnp.asarray(8.0), jnp.asarray(0.3))
    weights = jnp.ones(windows.obs.shape)
    lin = eqx.filter_jit(lambda o, g, lo: _linearise(o, g, lo, noise, weights)[0])
    mixed = lin(obj, g, loc)
    exact = lin(eqx.tree_at(lambda o: o.model, obj, FitModel()), g, loc)
    assert mixed.hgg.dtype == jnp.float64
    assert float(mixed.cost) == pytest.approx(float(exact.cost), rel=1e-13)
    for name in ("hgg", "bg", "hll", "hgl", "bl"):
        a, b = np.asarray(getattr(exact, name)), np.asarray(getattr(mixed, name))
        assert np.max(np.abs(b - a)) <= 1e-4 * np.max(np.abs(a)), name
        assert np.max(np.abs(b - a)) > 0.0, name  # float32 tangents were used

    fit_kw = dict(
        weight_kg=70.0, transplant_date=REFERENCE, starts=1, key=jax.random.key(0)
    )
    ref = fit_patient(patient, **fit_kw)
    res = fit_patient(patient, model=f32, **fit_kw)
    assert res.converged and ref.converged
    se = np.sqrt(np.diag(ref.cov))[ref.theta.size :]
    assert np.all(np.abs(res.log_b - ref.log_b) < 0.01 * se)
    np.testing.assert_allclose(res.cov, ref.cov, rtol=0.01, atol=1e-6)


def test_grouped_tangents_give_the_jacobian_of_the_residuals(tmp_path):
    """`_linearise` takes one tangent per group of `Objective.field_groups` (plus log B,
    glucose factor, latent meals) and sums them into the unknowns' columns: its blocks
    equal those of a dense forward-mode Jacobian of every residual with respect to
    every unknown, with latent meals, AR(1) whitening and a field (kabs) scaled by
    both its θ and a daily effect."""
    import equinox as eqx

    from isletfit.fitting import LatentMeals, Prior
    from isletfit.fitting._fit import _linearise, _pad_events
    from isletfit.fitting._problem import Objective

    patient, _ = synthetic_patient(
        tmp_path / "p.csv", seed=5, blocks=((-3, 1), (30, 1))
    )
    model = FitModel(meals=LatentMeals(slot_min=240.0))
    windows, _ = prepare_windows(
        patient,
        model=model,
        weight_kg=70.0,
        transplant_day=patient_day(patient, 0.0),
        window_bucket=1,
        knot_bucket=1,
    )
    windows = eqx.tree_at(lambda w: w.inputs, windows, _pad_events(windows.inputs))
    obj = Objective(windows=windows, model=model, prior=Prior())
    groups = obj.field_groups
    assert ("ka1", "ka2") in groups and len(groups) == 7
    assert obj.n_local == 4 + windows.slots.shape[1] and windows.slots.shape[1] > 0
    rng = np.random.default_rng(0)
    g = jnp.concatenate(
        [
            obj.prior_centre() + 0.2 * rng.standard_normal(obj.n_params),
            jnp.where(windows.knot_valid, jnp.log(0.4), 0.0),
            jnp.full(2 * obj.n_sessions, 0.3),
        ]
    )
    g = g.at[2].set(
        jnp.log(1.0)
    )  # kabs near its upper bound: the soft bound's slope < 1
    nw, nl = windows.ts.shape[0], obj.n_local
    loc = jnp.asarray(0.1 * rng.standard_normal((nw, nl)))
    noise = (jnp.asarray(8.0), jnp.asarray(0.4))
    weights = jnp.ones(windows.obs.shape)
    blocks = eqx.filter_jit(lambda o, g, lo: _linearise(o, g, lo, noise, weights)[0])(
        obj, g, loc
    )

    def window(u_w, l_w, w, wt):
        return obj.window_residual(u_w, l_w, w, noise, wt)

    def residuals(g, loc):
        u = obj.to_window(g)
        rw = jax.vmap(window)(u, loc, jnp.arange(nw), weights)
        return rw, obj.global_residual(g)

    @jax.jit
    def dense_blocks(g, loc):
        rw, r0 = residuals(g, loc)
        jg = jax.jacfwd(lambda gg: residuals(gg, loc)[0])(g)
        # a window's residuals depend on its own local unknowns only
        jl = jax.vmap(jax.jacfwd(window, argnums=1))(
            obj.to_window(g), loc, jnp.arange(nw), weights
        )
        j0 = jax.jacfwd(lambda gg: residuals(gg, loc)[1])(g)
        return blocks_from_jacobians(rw, jg, jl, r0, j0)

    dense = dense_blocks(g, loc)
    assert float(blocks.cost) == pytest.approx(float(dense.cost), rel=1e-12)
    for name in ("hgg", "bg", "hll", "hgl", "bl"):
        a, b = np.asarray(getattr(dense, name)), np.asarray(getattr(blocks, name))
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-8 * np.max(np.abs(a)))
