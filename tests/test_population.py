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
    FitModel,
    PopulationResult,
    Prior,
    fit_population,
    stack_problems,
)
from isletfit.fitting._population import HierarchicalObjective
from isletfit.fitting._problem import Objective
from isletfit.fitting._stacking import embed_global, prepare_patient

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
    np.testing.assert_allclose(table["mu_se"], res.omega / np.sqrt(N))
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


def test_sharded_fit_equals_unsharded(population, cohort_files, tmp_path):
    """Three forced host devices: 4 patients + 2 dummies, 2 per device."""
    res, _, _ = population
    out = tmp_path / "sharded.npz"
    proc = _run(cohort_files, str(out), "mesh", devices=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as z:
        assert int(z["n_devices"]) == 3
        np.testing.assert_allclose(z["mu"], res.mu, rtol=0, atol=1e-8)
        np.testing.assert_allclose(z["omega"], res.omega, rtol=0, atol=1e-8)
        np.testing.assert_allclose(z["theta"], res.theta, rtol=0, atol=1e-8)
        log_b = np.stack([res.results[p].log_b for p in res.patient_id])
        np.testing.assert_allclose(z["log_b"], log_b, rtol=0, atol=1e-8)


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
    ]
    assert main(argv) == 0
    assert f"{N} of {N} patients fitted" in capsys.readouterr().out
    table = pd.read_csv(out / "population.csv")
    assert list(table["name"]) == list(Prior().estimated)
    assert (out / "population_graft.csv").exists()
    assert (out / "population_checkpoint.npz").exists()
    summary = pd.read_csv(out / "summary.csv")
    assert summary.groupby("patient_id").size().eq(2).all() and len(summary) == 2 * N
    for pid in summary["patient_id"].unique():
        assert (out / pid / "graft_function.csv").exists()
    assert (out / "report.html").exists()
    # a second run continues from the checkpoint: same population table
    assert main(argv) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "population.csv"), table)
