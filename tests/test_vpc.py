"""Visual predictive check: the true population passes, a wrong one is flagged.

The population here is known, not fitted, so the check is tested apart from the fit
(the fit's own VPC is checked in ``test_population.py``): a clinic design (CGM days,
meals, insulin) is written for a few patients, a `PopulationResult` is built at known
typical values, between-patient SDs and graft trajectories, and the "observed" CGM of
every patient is one draw of that population on that design (the simulator the check
itself uses, with another key). The observed percentiles are then a sample from the
distribution the prediction intervals describe.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from isletfit import InputError
from isletfit.data import read, read_patients
from isletfit.fitting import (
    FitModel,
    LatentMeals,
    PopulationResult,
    Prior,
    visual_predictive_check,
)
from isletfit.fitting._fit import assemble_result
from isletfit.fitting._problem import Objective
from isletfit.fitting._stacking import prepare_patient
from isletfit.fitting._vpc import _design, _draw, _group_visits, graft_distribution

N = 6
#: CGM days of each visit (study days; the infusion is on day 0).
VISITS = ((-7,), (60,), (120,))
REFERENCE = pd.Timestamp("2025-01-01")
DRAWS = 60


def _write_record(path, rng, glucose=None):
    """A patient's design as generic CSV: CGM every 5 min on the visit days, meals
    with boluses (halved after the infusion), basal insulin; glucose 120 mg/dL unless
    given ``[days, 288]``."""
    days = [d for visit in VISITS for d in visit]
    t = np.concatenate([d * 1440.0 + 5.0 * np.arange(288) for d in days])
    g = np.full(t.size, 120.0) if glucose is None else np.ravel(glucose)
    rows = [
        {"t": x, "glucose_mg_dl": round(float(y), 1)} for x, y in zip(t, g, strict=True)
    ]
    for d in days:
        scale = 1.0 if d < 0 else 0.5
        for hour, grams in ((7.5, 45.0), (12.5, 70.0), (18.5, 80.0)):
            when = d * 1440.0 + hour * 60.0 + float(rng.uniform(-30, 30))
            carbs = grams * float(rng.lognormal(0.0, 0.2))
            rows.append(
                {
                    "t": when,
                    "carbs_g": round(carbs, 1),
                    "bolus_u": round(scale * carbs / 12.0, 2),
                }
            )
    for visit in VISITS:
        rate = 0.8 if visit[0] < 0 else 0.4
        rows.append({"t": (visit[0] - 1) * 1440.0, "basal_u_per_h": rate})
    frame = pd.DataFrame(rows).sort_values("t", kind="stable")
    frame["time"] = [
        (REFERENCE + pd.Timedelta(minutes=float(x))).isoformat() for x in frame["t"]
    ]
    columns = ["time", "glucose_mg_dl", "carbs_g", "bolus_u", "basal_u_per_h"]
    frame.reindex(columns=columns).to_csv(path, index=False)
    return read(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("vpc")


@pytest.fixture(scope="module")
def population(folder):
    """``(patients, result)``: the design and a known population (no simulation)."""
    sheet_path = folder / "patients.csv"
    sheet_path.write_text(
        "patient_id,weight_kg,transplant_date\n"
        + "".join(f"v{i},70,2025-01-01\n" for i in range(N))
    )
    sheet = read_patients(sheet_path)
    model, prior = FitModel(), Prior()
    rng = np.random.default_rng(5)
    patients = [_write_record(folder / f"v{i}.csv", rng) for i in range(N)]

    fits, objs = {}, []
    for patient in patients:
        windows, info = prepare_patient(patient, model=model, sheet=sheet)
        obj = Objective(windows=windows, model=model, prior=prior)
        days = np.asarray(windows.knot_days)
        # each patient's graft: maturing to ~0.3 of normal, its own level
        log_b = np.log(0.3 * (1.0 - np.exp(-days / 40.0)) + 1e-3) + 0.3 * (
            rng.standard_normal()
        )
        log_b = np.where(np.asarray(windows.knot_valid), log_b, 0.0)
        g = jnp.concatenate(
            [obj.prior_centre(), jnp.asarray(log_b), jnp.zeros(2 * obj.n_sessions)]
        )
        fits[patient.patient_id] = assemble_result(
            obj,
            info,
            g,
            np.zeros((g.size, g.size)),
            pred=np.zeros(windows.obs.shape),
            ok=np.ones(windows.ts.shape[0], bool),
            noise=(8.0, 0.5),
            converged=True,
            iterations=0,
            seconds=0.0,
            cost=0.0,
        )
        objs.append(obj)
    p = len(prior.estimated)
    mu = np.asarray(objs[0].prior_centre())
    result = PopulationResult(
        estimated=tuple(prior.estimated),
        mu=mu,
        omega=np.full(p, 0.2),
        mu_se=np.zeros(p),
        omega_se=np.zeros(p),
        shrinkage=np.zeros(p),
        patient_id=tuple(fits),
        theta=np.broadcast_to(mu, (N, p)).copy(),
        theta_sd=np.zeros((N, p)),
        results=fits,
        failures={},
        rounds=0,
        converged=True,
        history_mu=np.zeros((0, p)),
        history_omega=np.zeros((0, p)),
        n_devices=1,
        seconds=0.0,
        model=model,
        prior=prior,
    )
    return patients, result


@pytest.fixture(scope="module")
def truth(population, folder):
    """``(patients, result)``: records drawn from the population ``result`` describes."""
    patients, result = population
    model, prior = result.model, result.prior
    # the observed CGM: one draw of this population on this design
    design, _ = _design(result, patients, model, prior)
    draw = eqx.filter_jit(_draw)
    readings, good = draw(design, model, prior, jax.random.key(100), True)
    assert bool(np.all(good))
    readings = np.clip(np.asarray(readings), 40.0, 400.0)
    rng = np.random.default_rng(5)  # the same meals and insulin
    observed = [
        _write_record(folder / f"v{i}.csv", rng, glucose=readings[i]) for i in range(N)
    ]
    return observed, result


def _shift_graft(result, shift):
    results = {
        k: dataclasses.replace(r, log_b=r.log_b + shift)
        for k, r in result.results.items()
    }
    return dataclasses.replace(result, results=results)


@pytest.mark.filterwarnings("ignore:visual_predictive_check. the ODE solve failed")
def test_true_population_passes_and_a_wrong_graft_is_flagged(truth):
    patients, result = truth
    vpc = visual_predictive_check(
        result, patients, n_draws=DRAWS, key=jax.random.key(0)
    )
    assert list(vpc.columns) == [
        "visit",
        "study_day",
        "n_patients",
        "metric",
        "quantile",
        "observed",
        "sim_lower",
        "sim_median",
        "sim_upper",
        "inside",
        "level",
        "n_draws",
    ]
    # 3 visits x 2 metrics x 3 percentiles, every patient at every visit
    assert len(vpc) == 18 and set(vpc["n_patients"]) == {N}
    np.testing.assert_array_equal(sorted(set(vpc["study_day"])), [-7.0, 60.0, 120.0])
    assert np.all(vpc["sim_lower"] <= vpc["sim_median"])
    assert np.all(vpc["sim_median"] <= vpc["sim_upper"])
    assert vpc["inside"].mean() >= 0.8, vpc[~vpc["inside"]]

    # four times the graft function: every visit after the infusion is flagged (a
    # median outside its interval) and most of its percentiles are outside; before
    # the infusion (no graft) nothing changes (the same key gives the same draws)
    wrong = visual_predictive_check(
        _shift_graft(result, np.log(4.0)),
        patients,
        n_draws=DRAWS,
        key=jax.random.key(0),
    )
    after = wrong["study_day"] > 0
    assert wrong.loc[after, "inside"].mean() <= 0.5, wrong[after]
    medians = wrong[after & (wrong["quantile"] == 0.5)]
    assert not medians.groupby("visit")["inside"].all().any(), medians
    pd.testing.assert_frame_equal(wrong[~after], vpc[~after])


@pytest.mark.slow
def test_draws_do_not_depend_on_the_batch_size(truth):
    """Each draw has its own key: batches of 7 (not a divisor) give the same check."""
    patients, result = truth
    kwargs = dict(n_draws=DRAWS, key=jax.random.key(0))
    pd.testing.assert_frame_equal(
        visual_predictive_check(result, patients, batch_size=7, **kwargs),
        visual_predictive_check(result, patients, **kwargs),
    )


def test_graft_distribution_and_visit_groups(population):
    _, result = population
    dist = graft_distribution(result)
    assert list(dist.columns) == ["study_day", "n_patients", "mean_log_b", "sd_log_b"]
    assert dist["study_day"].iloc[0] == 0.0 and np.all(np.diff(dist["study_day"]) == 7)
    # with exact (zero-variance) estimates the SD is the spread of the patients' log B
    row = dist[dist["study_day"] == 63.0].iloc[0]
    log_b = [r.log_b[r.knot_days == 63.0][0] for r in result.results.values()]
    assert row["n_patients"] == N
    np.testing.assert_allclose(row["mean_log_b"], np.mean(log_b), rtol=1e-12)
    np.testing.assert_allclose(row["sd_log_b"], np.std(log_b), rtol=1e-12)
    # Laplace variances add to the spread (as the M-step adds them to ω²)
    wider = dataclasses.replace(
        result,
        results={
            k: dataclasses.replace(r, cov=r.cov + 0.04 * np.eye(r.cov.shape[0]))
            for k, r in result.results.items()
        },
    )
    row = graft_distribution(wider).set_index("study_day").loc[63.0]
    np.testing.assert_allclose(row["sd_log_b"] ** 2, np.var(log_b) + 0.04, rtol=1e-12)

    starts = np.array([-14.0, -13.0, 29.0, 33.0, 90.0, -14.0, 88.0])
    group, days = _group_visits(starts, None, 14.0)
    np.testing.assert_array_equal(group, [0, 0, 1, 1, 2, 0, 2])
    np.testing.assert_array_equal(days, [-14.0, 31.0, 89.0])
    group, days = _group_visits(starts, [-14, 30, 90, 180], 14.0)
    np.testing.assert_array_equal(group, [0, 0, 1, 1, 2, 0, 2])
    np.testing.assert_array_equal(days, [-14.0, 30.0, 90.0])


def test_bad_arguments_are_clear_errors(population):
    patients, result = population
    key = jax.random.key(0)
    with pytest.raises(InputError, match="n_draws"):
        visual_predictive_check(result, patients, n_draws=1, key=key)
    with pytest.raises(InputError, match="level"):
        visual_predictive_check(result, patients, n_draws=10, level=1.0, key=key)
    with pytest.raises(InputError, match="no record for the fitted patient"):
        visual_predictive_check(result, patients[1:], n_draws=10, key=key)
    with pytest.raises(InputError, match="latent meals"):
        visual_predictive_check(
            result,
            patients,
            n_draws=10,
            key=key,
            model=FitModel(meals=LatentMeals()),
        )
    with pytest.raises(InputError, match="prior"):
        visual_predictive_check(
            result,
            patients,
            n_draws=10,
            key=key,
            prior=Prior(estimated=("vmx",), log_sd=(0.4,)),
        )
    empty = dataclasses.replace(result, results={})
    with pytest.raises(InputError, match="no fitted patient"):
        visual_predictive_check(empty, patients, n_draws=10, key=key)
