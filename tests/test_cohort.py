"""The virtual transplant cohort end to end: determinism, variability, titration,
failure isolation, the file round trip and the command line.

One small cohort (3 patients, 2 CGM days per visit) is simulated once per module; the
other simulations reuse its compiled program (same chunk size and configuration).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from isletfit._cli import main
from isletfit.cohort import (
    VisitPlan,
    patient_records,
    sample_patients,
    simulate_cohort,
    simulate_patients,
    write_cohort,
    zimislecel_like,
)
from isletfit.data import read_labs, read_many, read_patients

PLAN = VisitPlan(block_days=2)
SEED = 3
N = 3


def _simulate(key=SEED):
    return simulate_cohort(
        zimislecel_like(), N, key=jax.random.key(key), visits=PLAN, chunk_size=N
    )


@pytest.fixture(scope="module")
def cohort():
    return _simulate()


def test_shapes_and_truth(cohort):
    n_block = len(PLAN.visit_days) * PLAN.block_days
    assert cohort.n == N and not cohort.failed.any() and cohort.failure == ("",) * N
    assert cohort.cgm.shape == (N, n_block, 288)
    assert cohort.glucose.shape == cohort.ig.shape == cohort.cgm.shape
    assert list(np.unique(cohort.block_visit)) == list(range(len(PLAN.visit_days)))
    # check-in days between the blocks are simulated too
    assert len(cohort.day) > n_block and (cohort.day_visit == -1).any()
    # the graft is absent before the infusion and grows after it
    pre = cohort.truth_day < 0
    assert (cohort.b_true[:, pre] == 0).all()
    at = {d: int(np.searchsorted(cohort.truth_day, d)) for d in (30, 90, 365)}
    assert (cohort.b_true[:, at[365]] > cohort.b_true[:, at[30]]).all()
    # C-peptide: undetectable at baseline, present by day 90
    cpep = cohort.mmtt["stimulated_c_peptide"]
    assert (cpep[:, 0] == 0).all() and (cpep[:, 2] > 0.05).all()
    assert np.isfinite(cohort.hba1c_daily[:, cohort.truth_day >= cohort.day[0]]).all()


def test_same_key_same_cohort(cohort):
    again = _simulate()
    np.testing.assert_array_equal(cohort.cgm, again.cgm)
    np.testing.assert_array_equal(cohort.glucose, again.glucose)
    np.testing.assert_array_equal(cohort.bolus_u, again.bolus_u)
    np.testing.assert_array_equal(cohort.meal_time, again.meal_time)
    pd.testing.assert_frame_equal(cohort.labs_table(), again.labs_table())
    other = _simulate(key=SEED + 1)
    assert not np.array_equal(cohort.glucose, other.glucose)


def test_patients_and_days_vary(cohort):
    p = cohort.patients
    for name in ("vmx", "kp3", "p2u", "kabs", "tau_sensor"):
        assert np.unique(np.asarray(getattr(p.params, name))).size == N
    assert np.unique(np.asarray(p.weight_kg)).size == N
    assert np.unique(np.asarray(p.graft.engrafted)).size == N
    # day-to-day: meals and glucose differ between consecutive days of a patient
    assert not np.array_equal(
        cohort.meal_time[0, 0] - cohort.block_day[0] * 1440.0,
        cohort.meal_time[0, 1] - cohort.block_day[1] * 1440.0,
    )
    g = cohort.glucose[:, 0].astype(float)
    assert np.std(g, axis=1).min() > 5.0  # glucose moves within a day
    assert np.ptp(g.mean(axis=1)) > 1.0  # and differs between patients


def test_titration_follows_the_graft(cohort):
    vt = cohort.visit_table()
    base = vt[vt.visit == 0].set_index("patient_id")
    last = vt[vt.visit_day == 365].set_index("patient_id")
    assert (base["insulin_fraction_of_baseline"] == 1.0).all()
    for pid in cohort.patient_id:
        if last.loc[pid, "b"] > 0.3:
            assert last.loc[pid, "insulin_fraction_of_baseline"] < 0.5
    # insulin falls as B rises, across visits (rank correlation over all rows)
    post = vt[vt.visit_day > 0]
    rho = post["b"].rank().corr(post["insulin_u_per_day"].rank())
    assert rho < -0.5
    # the clinic never gives more than the pre-transplant doses
    assert (cohort.daily["basal_scale"] <= 1.0 + 1e-12).all()
    assert (cohort.daily["bolus_scale"] <= 1.0 + 1e-12).all()
    # someone with a good graft has stopped insulin by day 365
    assert last["insulin_independent"].any()
    stopped = ~cohort.daily["on_insulin"]
    assert (cohort.daily["insulin_u"][stopped] == 0).all()


def test_a_failing_patient_does_not_stop_the_others(cohort):
    pop = zimislecel_like()
    k_sample, k_sim = jax.random.split(jax.random.key(SEED))
    patients = sample_patients(pop, N, key=k_sample)
    # an absurdly fast sensor lag makes patient 1 too stiff for the explicit solver
    tau = np.asarray(patients.params.tau_sensor).copy()
    tau[1] = 1e-5
    bad = eqx.tree_at(lambda x: x.params.tau_sensor, patients, jnp.asarray(tau))
    out = simulate_patients(bad, pop, key=k_sim, visits=PLAN, chunk_size=N)
    assert list(out.failed) == [False, True, False]
    assert "day -14" in out.failure[1] and out.failure[0] == ""
    for i in (0, 2):
        np.testing.assert_array_equal(out.cgm[i], cohort.cgm[i])
        np.testing.assert_array_equal(out.bolus_u[i], cohort.bolus_u[i])
    vt = out.visit_table()
    assert vt[vt.patient_id == "p002"]["failed"].all()


def _merge_equal_rates(t, r):
    keep = np.r_[True, r[1:] != r[:-1]]
    return t[keep], r[keep]


def test_files_read_back_unchanged(cohort, tmp_path):
    paths = write_cohort(cohort, tmp_path, start_date="2024-03-04")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cgm",
        "labs.csv",
        "patients.csv",
        "truth.csv",
        "visits.csv",
    ]
    data = {p.patient_id: p for p in read_many(paths["cgm"])}
    assert sorted(data) == list(cohort.patient_id)
    sheet = read_patients(paths["patients"])
    assert list(sheet["patient_id"]) == list(cohort.patient_id)
    np.testing.assert_allclose(
        sheet["weight_kg"], np.round(np.asarray(cohort.patients.weight_kg), 1)
    )
    for i, pid in enumerate(cohort.patient_id):
        rec = patient_records(cohort, i)
        d = data[pid]
        day0 = pd.Timestamp("2024-03-04") + pd.Timedelta(days=7 * i)
        assert sheet.loc[i, "transplant_date"] == day0

        def minutes(stamps, day0=day0):
            return (pd.DatetimeIndex(stamps) - day0) / pd.Timedelta(minutes=1)

        # CGM: times, values, Low/High
        np.testing.assert_array_equal(minutes(d.cgm.timestamp), rec["cgm"]["time_min"])
        np.testing.assert_array_equal(d.cgm.glucose_mg_dl, rec["cgm"]["glucose_mg_dl"])
        np.testing.assert_array_equal(d.cgm.censored, rec["cgm"]["censored"])
        # every observed reading of the cohort is in the file
        assert len(d.cgm) == int(np.isfinite(cohort.cgm[i]).sum())
        # events
        np.testing.assert_array_equal(
            minutes(d.reference_time + pd.to_timedelta(d.carbs.time_min, "m")),
            rec["carbs"]["time_min"],
        )
        np.testing.assert_allclose(d.carbs.grams, rec["carbs"]["grams"], rtol=1e-12)
        np.testing.assert_array_equal(
            minutes(d.reference_time + pd.to_timedelta(d.boluses.time_min, "m")),
            rec["boluses"]["time_min"],
        )
        np.testing.assert_allclose(d.boluses.units, rec["boluses"]["units"], rtol=1e-12)
        t, r = _merge_equal_rates(
            rec["basal"]["time_min"].to_numpy(), rec["basal"]["rate_u_per_h"].to_numpy()
        )
        np.testing.assert_array_equal(
            minutes(d.reference_time + pd.to_timedelta(d.basal.time_min, "m")), t
        )
        np.testing.assert_allclose(d.basal.rate_u_per_h, r, rtol=1e-9)
        # the records are the simulation's own inputs
        sim_bolus = cohort.bolus_u[i][np.isfinite(cohort.bolus_time[i])]
        assert rec["boluses"]["units"].sum() == pytest.approx(sim_bolus.sum())
    labs = read_labs(paths["labs"], patients=sheet)
    expected = cohort.labs_table()
    assert len(labs) == len(expected)
    np.testing.assert_allclose(labs["value"], expected["value"], rtol=1e-12)
    assert list(labs["kind"]) == list(expected["kind"])
    lab_day = (
        labs["date"]
        - labs["patient_id"].map(
            dict(zip(sheet["patient_id"], sheet["transplant_date"], strict=True))
        )
    ).dt.days
    np.testing.assert_array_equal(lab_day, expected["day"].astype(int))
    truth = pd.read_csv(paths["truth"])
    b = truth[(truth.quantity == "graft_b") & (truth.patient_id == "p001")]
    keep = cohort.truth_day >= cohort.day[0]
    np.testing.assert_allclose(b["value"], cohort.b_true[0, keep], rtol=1e-9)
    vmx = truth[(truth.quantity == "param_vmx")]["value"].to_numpy()
    np.testing.assert_allclose(vmx, np.asarray(cohort.patients.params.vmx), rtol=1e-9)


def test_command_line_writes_the_same_cohort(cohort, tmp_path, capsys):
    out = tmp_path / "sim"
    args = ["simulate", "--patients", str(N), "--seed", str(SEED), "--out", str(out)]
    assert main([*args, "--block-days", "2"]) == 0
    text = capsys.readouterr().out
    assert f"Simulating {N} virtual transplant recipients" in text
    data = read_many(out / "cgm")
    assert [d.patient_id for d in data] == list(cohort.patient_id)
    first = patient_records(cohort, 0)["cgm"]
    np.testing.assert_array_equal(data[0].cgm.glucose_mg_dl, first["glucose_mg_dl"])
    assert main([*args, "--patients", "0"]) == 2
    assert "--patients" in capsys.readouterr().err
