"""On a CUDA GPU: the same simulation and fit as on the CPU (skipped without a GPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.model import Inputs, Params, simulate, stack_params

pytestmark = pytest.mark.gpu


def _batch(n):
    keys = jax.random.split(jax.random.key(3), n)
    vmx = 0.047 * jnp.exp(0.3 * jax.vmap(lambda k: jax.random.normal(k))(keys))
    params = stack_params([Params(vmx=float(v)) for v in vmx])
    day = Inputs(
        weight_kg=70.0,
        meal_times=[420.0, 750.0, 1110.0],
        meal_carbs_g=[45.0, 70.0, 80.0],
        bolus_times=[420.0, 750.0, 1110.0],
        bolus_u=[3.5, 5.5, 6.2],
        basal_times=[0.0],
        basal_u_per_h=[0.8],
    )
    b = jnp.linspace(0.0, 1.0, n)
    return params, day, b


def _on_both(run, *args):
    """``run(*args)`` on the GPU and on the CPU, as numpy (the GPU's checked finite)."""
    out = [
        np.asarray(run(*jax.device_put(args, jax.devices(kind)[0])))
        for kind in ("gpu", "cpu")
    ]
    assert np.all(np.isfinite(out[0]))
    return out


def test_vmapped_simulation_on_gpu_matches_cpu():
    params, day, b = _batch(64)
    ts = jnp.arange(0.0, 1441.0, 5.0)
    run = jax.jit(
        jax.vmap(lambda p, bb: simulate(p, day, ts, b=bb).cgm, in_axes=(0, 0))
    )
    on_gpu, on_cpu = _on_both(run, params, b)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-6, atol=1e-6)


def test_patient_fit_on_gpu_matches_cpu(tmp_path):
    from isletfit.cohort import (
        VisitPlan,
        simulate_cohort,
        write_cohort,
        zimislecel_like,
    )
    from isletfit.data import read, read_patients
    from isletfit.fitting import fit_patient

    with jax.default_device(jax.devices("cpu")[0]):
        cohort = simulate_cohort(
            zimislecel_like(),
            1,
            key=jax.random.key(5),
            visits=VisitPlan(visit_days=(-14, 180), block_days=2),
        )
    paths = write_cohort(cohort, tmp_path)
    row = read_patients(paths["patients"]).iloc[0]
    patient = read(sorted(paths["cgm"].glob("*.csv"))[0])
    results = {}
    for kind in ("cpu", "gpu"):
        with jax.default_device(jax.devices(kind)[0]):
            results[kind] = fit_patient(
                patient,
                weight_kg=float(row["weight_kg"]),
                transplant_date=row["transplant_date"],
                starts=1,
                key=jax.random.key(0),
            )
    g, c = results["gpu"], results["cpu"]
    assert g.converged and c.converged
    np.testing.assert_allclose(g.log_b, c.log_b, atol=1e-3)
    np.testing.assert_allclose(g.theta, c.theta, atol=1e-3)


def test_fixed_grid_simulation_on_gpu_matches_cpu():
    from isletfit.model import simulate_grid

    params, day, b = _batch(256)
    ts = jnp.arange(0.0, 1441.0, 5.0)
    run = jax.jit(
        jax.vmap(
            lambda p, bb: simulate_grid(p, day, ts, b=bb, substeps=4).cgm,
            in_axes=(0, 0),
        )
    )
    on_gpu, on_cpu = _on_both(run, params, b)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-9, atol=1e-9)


def test_population_fit_on_gpu_matches_cpu(tmp_path):
    """The population fit's batched solves and bands on the GPU, against the CPU."""
    import dataclasses

    from isletfit.fitting import SquaremEM, fit_population

    from fit_fixtures import synthetic_patient

    patients = []
    for i in range(4):
        patient, _ = synthetic_patient(
            tmp_path / f"p{i}.csv", seed=i, blocks=((-7, 1), (30, 1), (90, 1))
        )
        patients.append(dataclasses.replace(patient, patient_id=f"p{i}"))
    fits = {}
    for kind in ("cpu", "gpu"):
        with jax.default_device(jax.devices(kind)[0]):
            fits[kind] = fit_population(
                patients,
                key=jax.random.key(0),
                starts=1,
                max_rounds=3,
                em=SquaremEM(),
            )
    g, c = fits["gpu"], fits["cpu"]
    np.testing.assert_allclose(g.mu, c.mu, atol=1e-3)
    np.testing.assert_allclose(g.omega, c.omega, atol=1e-3)
    for pid, fit in c.results.items():
        np.testing.assert_allclose(g.results[pid].log_b, fit.log_b, atol=1e-3)
        np.testing.assert_allclose(g.results[pid].cov, fit.cov, rtol=1e-2, atol=1e-5)
