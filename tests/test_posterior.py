"""Posterior sampling with NUTS: the log density is the MAP objective's, its gradient,
the InferenceData layout, and agreement with the MAP fit on a tiny synthetic cohort.

Two synthetic patients, one CGM day each (day 60 after an infusion the sheet does not
give: two log-B knots per patient, the first informed by the day). The sampling tests
use small models (two or three estimated fields, no day-window effects) so that NUTS
runs in minutes on a laptop CPU; the log-density tests use the default model.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from isletfit import InputError
from isletfit.fitting import (
    Covariate,
    FitModel,
    Hyperprior,
    LevenbergMarquardt,
    NUTSSampler,
    Prior,
    StudentTNoise,
    fit_population,
    sample_patient_posterior,
    sample_posterior,
    stack_problems,
)
from isletfit.fitting._population import HierarchicalObjective
from isletfit.fitting._posterior import (
    _build_posterior,
    _inference_data,
    _laplace,
    _map_start,
)
from isletfit.fitting._problem import Objective
from isletfit.model import Params

from fit_fixtures import synthetic_patient

N = 2
TRUE = (dict(vmx=0.04, kp1=5.9), dict(vmx=0.05, kp1=5.5))
#: The model of the sampling tests: three estimated fields, no day-window effects.
SMALL = Prior(
    estimated=("vmx", "kp1", "kd"),
    log_sd=(0.46, 0.18, 0.62),
    daily_sensitivity_log_sd=0.0,
    daily_meal_absorption_log_sd=0.0,
    daily_insulin_absorption_log_sd=0.0,
)
#: The model of the hierarchical sampling test: SMALL without kp1. With kp1 free too,
#: μ of vmx and kp1 lie on a ridge with each patient's log B that one CGM day leaves
#: open (measured: trees at the depth limit, R-hat 1.1-1.9 over keys and machines).
PAIR = Prior(
    estimated=("vmx", "kd"),
    log_sd=(0.46, 0.62),
    daily_sensitivity_log_sd=0.0,
    daily_meal_absorption_log_sd=0.0,
    daily_insulin_absorption_log_sd=0.0,
)
SEED = 0
#: A run that only checks shapes and names (a few iterations).
TINY = NUTSSampler(num_warmup=4, num_samples=5, num_chains=2, max_tree_depth=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("posterior")
    patients = [
        synthetic_patient(
            tmp / f"p{i}.csv",
            seed=i,
            blocks=((60, 1),),
            true=Params().replace(**TRUE[i]),
        )[0]
        for i in range(N)
    ]
    sheet = pd.DataFrame(
        {
            "patient_id": [p.patient_id for p in patients],
            "weight_kg": [70.0] * N,
            "transplant_date": [np.nan] * N,
        }
    )
    return patients, sheet


def _fit(data, prior):
    """The population fit of the sampling tests under ``prior``."""
    patients, sheet = data
    return fit_population(
        patients,
        prior=prior,
        sheet=sheet,
        key=jax.random.key(SEED),
        max_rounds=10,
        starts=1,
    )


@pytest.fixture(scope="module")
def population(data):
    return _fit(data, SMALL)


@pytest.fixture(scope="module")
def pair_population(data):
    """The population fit of the hierarchical sampling test (`PAIR`)."""
    return _fit(data, PAIR)


# ------------------------------------------------------------------ log density
@eqx.filter_jit
def _map_cost(obj, g, loc, noise):
    """½‖r‖² of one patient's MAP objective (as `fit_population` minimises it)."""
    u = obj.to_window(g)
    wt = jnp.ones(obj.windows.obs.shape[1])
    r = jax.vmap(lambda uw, lw, w: obj.window_residual(uw, lw, w, noise, wt))(
        u, loc, jnp.arange(u.shape[0])
    )
    return 0.5 * (jnp.sum(r**2) + jnp.sum(obj.global_residual(g) ** 2))


_potential = eqx.filter_jit(lambda post, z: post.potential(z))
_value_and_grad = eqx.filter_jit(lambda post, z: jax.value_and_grad(post.potential)(z))

SIGMA, PHI = np.array([8.0, 7.0]), np.array([0.3, 0.0])
HYPER = Hyperprior(mu_factor=1.5, omega_factor=2.0)


def _problem(data):
    patients, sheet = data
    problem, _ = stack_problems(patients, model=FitModel(), prior=Prior(), sheet=sheet)
    return problem


def _posterior(problem, *, mode, forward_mode=True):
    centre = problem.objective(0).prior_centre()
    log_sd = jnp.asarray(problem.prior.log_sd)
    return _build_posterior(
        problem,
        sigma=SIGMA,
        phi=PHI,
        mu=centre if mode == "fixed" else centre + 0.1,
        omega=log_sd if mode == "fixed" else 0.5 * log_sd,
        hyperprior=HYPER,
        sample_hyper=mode != "fixed",
        noncentred=mode == "noncentred",
        forward_mode=forward_mode,
    )


def _random_parts(post, key):
    """A random point (padding entries at 0) as the parts of the full vector."""
    pr = post.problem
    win = pr.windows
    k = jax.random.split(key, 6)
    shapes = post.shapes
    centre = pr.objective(0).prior_centre()
    log_sd = jnp.asarray(pr.prior.log_sd)
    used = (
        np.einsum("nws,nw->ns", np.asarray(win.session), np.asarray(win.valid) * 1.0)
        > 0
    )
    normal = lambda i, name: jax.random.normal(k[i], shapes[name])  # noqa: E731
    theta = normal(2, "theta")
    if not post.noncentred:
        theta = centre[None, :] + 0.2 * theta
    return {
        "mu": centre + 0.1 * normal(0, "mu"),
        "log_omega": jnp.log(0.5 * log_sd) + 0.1 * normal(1, "log_omega"),
        "theta": theta,
        "knots": jnp.where(win.knot_valid, -1.0 + 0.1 * normal(3, "knots"), 0.0),
        "cal": jnp.where(used[:, :, None], 0.5 * normal(4, "cal"), 0.0),
        "loc": jnp.where(win.valid[:, :, None], 0.05 * normal(5, "loc"), 0.0),
    }


@pytest.mark.parametrize("mode", ["noncentred", "centred", "fixed"])
def test_potential_is_the_map_objective_plus_hyperpriors(data, mode):
    """−log density = Σ_i ½‖r_i‖² of the MAP objective at (μ, ω) + hyperprior terms."""
    problem = _problem(data)
    post = _posterior(problem, mode=mode)
    parts = _random_parts(post, jax.random.key(3))
    z = post.pack(parts)
    if mode == "fixed":
        # only the per-patient unknowns are sampled; μ and ω are the prior's
        assert z.shape[0] == post.size < sum(np.prod(s) for s in post.shapes.values())
        parts = {**parts, "mu": jnp.zeros_like(parts["mu"])}
        parts = {**parts, "log_omega": jnp.zeros_like(parts["log_omega"])}
    back = post.unpack(z)
    for name in parts:
        np.testing.assert_array_equal(back[name], parts[name], err_msg=name)

    if mode == "fixed":
        mu, omega = post.mu0, post.omega0
    else:
        mu, omega = parts["mu"], jnp.exp(parts["log_omega"])
    theta = parts["theta"]
    if mode == "noncentred":
        theta = mu[None, :] + omega[None, :] * theta
    expected = 0.0
    for i in range(N):
        windows = jax.tree.map(lambda x, i=i: x[i], problem.windows)
        if mode == "fixed":
            obj = Objective(windows=windows, model=problem.model, prior=problem.prior)
        else:
            obj = HierarchicalObjective(
                windows=windows,
                model=problem.model,
                prior=problem.prior,
                mu=mu,
                omega=omega,
            )
        g = jnp.concatenate([theta[i], parts["knots"][i], parts["cal"][i].ravel()])
        noise = (jnp.asarray(SIGMA[i]), jnp.asarray(PHI[i]))
        expected += float(_map_cost(obj, g, parts["loc"][i], noise))
    if mode != "fixed":
        log_sd = jnp.asarray(problem.prior.log_sd)
        centre = problem.objective(0).prior_centre()
        expected += float(
            0.5 * jnp.sum(((mu - centre) / (HYPER.mu_factor * log_sd)) ** 2)
            + 0.5 * jnp.sum((omega / (HYPER.omega_factor * log_sd)) ** 2)
            - jnp.sum(jnp.log(omega))  # Jacobian of ω = exp(log ω)
        )
        if mode == "centred":
            expected += float(N * jnp.sum(jnp.log(omega)))  # normaliser of N(μ, ω²)
    value = float(_potential(post, z))
    assert np.isfinite(value)
    np.testing.assert_allclose(value, expected, rtol=1e-10)


def test_gradient_matches_central_differences(data):
    """Forward-mode window gradients (custom VJP) vs central differences of the cost.

    With the fits' fixed-grid windows (the default) the cost is a smooth function of
    the parameters and the derivative is exactly that of the discretisation. (With the
    adaptive solver at the fits' rtol = 1e-5 its step choices add about 0.5 % to a
    finite difference, so that solver needs a tight tolerance for this check.)
    """
    patients, sheet = data
    problem, _ = stack_problems(patients, model=FitModel(), prior=Prior(), sheet=sheet)
    post = _posterior(problem, mode="noncentred")
    z = post.pack(_random_parts(post, jax.random.key(4)))
    value, grad = _value_and_grad(post, z)
    np.testing.assert_allclose(float(value), float(_potential(post, z)), rtol=1e-12)
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad))
    eps, rtol, atol = 1e-5, 1e-4, 1e-3
    keys = jax.random.split(jax.random.key(5), 3)
    directions = [jax.random.normal(k, z.shape) for k in keys]
    # and the directions of μ and log ω of the first field (through every patient)
    for j in (0, problem.n_params):
        directions.append(jnp.zeros_like(z).at[j].set(1.0))
    for v in directions:
        v = v / jnp.linalg.norm(v)
        fd = (
            float(_potential(post, z + eps * v)) - float(_potential(post, z - eps * v))
        ) / (2 * eps)
        np.testing.assert_allclose(
            float(grad @ np.asarray(v)), fd, rtol=rtol, atol=atol
        )


# ---------------------------------------------------------------- InferenceData
def test_inference_data_has_named_groups_and_dims(data, population, tmp_path):
    """The InferenceData of some draws (no NUTS run: compiling it takes ~40 s)."""
    import arviz as az

    patients, sheet = data
    ids = list(population.patient_id)
    fits = [population.results[p] for p in ids]
    start = _map_start(
        patients,
        fits,
        model=FitModel(),
        prior=SMALL,
        sheet=sheet,
        mu=population.mu,
        omega=population.omega,
        mu_se=population.mu_se,
        optimiser=LevenbergMarquardt(),
    )
    # the polished MAP start is the population fit's, within the optimiser's
    # precision along the flat directions (measured: at most 0.007 Laplace SD; 0.0023
    # in log kd)
    moved = np.abs(start.g[:, :3] - population.theta) / population.theta_sd
    assert np.all(moved < 0.05), moved
    post = _build_posterior(
        start.problem,
        sigma=start.sigma,
        phi=start.phi,
        mu=start.mu,
        omega=start.omega,
        hyperprior=Hyperprior(),
        sample_hyper=True,
        noncentred=True,
        forward_mode=True,
    )
    chains, draws = 2, 5
    z0, variance, _, _ = _laplace(post, start, dense=False)
    noise = jax.random.normal(jax.random.key(1), (chains, draws, z0.shape[0]))
    z = np.asarray(z0)[None, None, :] + np.sqrt(variance)[None, None, :] * np.asarray(
        noise
    )
    stats = {
        name: np.zeros((chains, draws))
        for name in ("energy", "n_steps", "tree_depth", "acceptance_rate", "lp")
    }
    stats["step_size"] = np.full((chains, draws), 0.5)
    stats["diverging"] = np.zeros((chains, draws), bool)
    idata = _inference_data(
        post,
        start,
        z,
        stats,
        patient_id=ids,
        sampler=NUTSSampler(num_samples=draws, num_chains=chains),
        seconds=1.0,
    )
    assert isinstance(idata, az.InferenceData)
    assert {"posterior", "sample_stats", "constant_data"} <= set(idata.groups())
    pos = idata.posterior
    assert pos.theta.dims == ("chain", "draw", "patient", "param")
    assert pos.theta.shape == (chains, draws, N, 3)
    assert list(pos.param.values) == list(SMALL.estimated)
    assert list(pos.patient.values) == ids
    assert pos.mu.dims == ("chain", "draw", "param")
    assert pos.omega.dims == ("chain", "draw", "param")
    assert bool((pos.omega > 0).all())
    # θ = μ + ω η of the sampled coordinates
    parts = post.unpack(jnp.asarray(z[0, 0]))
    expected = (
        parts["mu"][None, :] + jnp.exp(parts["log_omega"])[None, :] * parts["theta"]
    )
    np.testing.assert_allclose(pos.theta.values[0, 0], expected, rtol=1e-12)
    assert pos.log_b.dims == ("chain", "draw", "patient", "knot")
    assert pos.log_b.shape[-1] == max(f.log_b.shape[0] for f in fits)
    assert pos.sensor_gain.dims == ("chain", "draw", "patient", "session")
    # one sensor session each: the padding sessions are NaN
    assert np.all(np.isfinite(pos.sensor_gain.values[..., 0]))
    assert np.all(np.isnan(pos.sensor_gain.values[..., 1:]))
    assert np.all(np.isnan(pos.sensor_offset.values[..., 1:]))
    for name in ("diverging", "lp", "energy", "n_steps", "tree_depth", "step_size"):
        assert idata.sample_stats[name].shape == (chains, draws), name
    const = idata.constant_data
    np.testing.assert_allclose(const.knot_day.values[:, 0], 0.0)
    np.testing.assert_allclose(const.sigma_mg_dl.values, [f.sigma_mg_dl for f in fits])
    np.testing.assert_allclose(const.mu_map.values, population.mu)
    np.testing.assert_allclose(
        const.log_b_map.values, np.stack([f.log_b for f in fits]), atol=2e-3
    )
    assert idata.attrs["inference_library"] == "numpyro"
    # netCDF round trip
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    np.testing.assert_array_equal(back.posterior.theta.values, pos.theta.values)


def test_bad_arguments_raise_input_errors(data, population):
    patients, sheet = data
    with pytest.raises(InputError, match="num_chains"):
        NUTSSampler(num_chains=0)
    with pytest.raises(InputError, match="target_accept"):
        NUTSSampler(target_accept=1.0)
    with pytest.raises(InputError, match="chain_method"):
        NUTSSampler(chain_method="threads")
    with pytest.raises(InputError, match="omega_factor"):
        Hyperprior(omega_factor=0.0)
    with pytest.raises(InputError, match="2 entries for 3"):
        Hyperprior(mu_factor=(1.0, 2.0)).scales(jnp.asarray(SMALL.log_sd))
    kwargs = dict(prior=SMALL, sheet=sheet, sampler=TINY, key=jax.random.key(0))
    with pytest.raises(InputError, match="missing"):
        sample_posterior(patients[:1], population, **kwargs)
    with pytest.raises(InputError, match="Student-t"):
        sample_posterior(
            patients, population, model=FitModel(noise=StudentTNoise()), **kwargs
        )
    with pytest.raises(InputError, match=r"prior\.estimated"):
        sample_posterior(patients, population, **{**kwargs, "prior": Prior()})
    with pytest.raises(InputError, match="PopulationResult"):
        sample_posterior(patients, population.results[patients[0].patient_id], **kwargs)
    with_weight = dataclasses.replace(population, covariates=(Covariate("weight_kg"),))
    with pytest.raises(InputError, match="covariates"):
        sample_posterior(patients, with_weight, **kwargs)


@pytest.mark.slow
def test_single_patient_posterior_end_to_end(data, population):
    """A few NUTS iterations through the public API (most of the ~70 s is compiling)."""
    patients, _ = data
    pid = patients[0].patient_id
    idata = sample_patient_posterior(
        patients[0],
        population.results[pid],
        prior=SMALL,
        sampler=TINY,
        key=jax.random.key(2),
    )
    assert "mu" not in idata.posterior and "omega" not in idata.posterior
    assert idata.posterior.theta.shape == (TINY.num_chains, TINY.num_samples, 1, 3)
    assert list(idata.posterior.patient.values) == [pid]
    assert np.all(np.isfinite(idata.posterior.theta.values))
    assert np.all(np.isfinite(idata.sample_stats.lp.values))


# ---------------------------------------------------------------- vs the MAP fit
def _compare(idata):
    """Posterior medians and SDs of θ and log B, and the MAP and Laplace SDs."""
    post, const = idata.posterior, idata.constant_data
    out = {}
    for name in ("theta", "log_b"):
        draws = post[name]
        out[name] = (
            draws.median(("chain", "draw")).values,
            draws.std(("chain", "draw")).values,
            const[f"{name}_map"].values,
            const[f"{name}_sd_laplace"].values,
        )
    return out


@pytest.mark.slow
def test_nuts_matches_laplace_under_the_fitted_population(data, population):
    """With μ, ω at their fitted values the posterior is what the Laplace band
    approximates: NUTS medians at the MAP, SDs as the Laplace SDs."""
    import arviz as az

    patients, sheet = data
    sampler = NUTSSampler(
        num_warmup=100, num_samples=100, num_chains=2, dense_mass=True, max_tree_depth=6
    )
    idata = sample_posterior(
        patients,
        population,
        prior=SMALL,
        sheet=sheet,
        sampler=sampler,
        fixed_population=True,
        key=jax.random.key(7),
    )
    rhat = az.rhat(idata, var_names=["theta", "log_b"])
    worst = max(float(np.nanmax(rhat[v].values)) for v in ("theta", "log_b"))
    print(f"R-hat max {worst:.3f}; {idata.attrs['sampling_time']:.0f} s sampling")
    assert worst < 1.1
    assert int(idata.sample_stats.diverging.sum()) == 0
    for name, (median, sd, map_, laplace) in _compare(idata).items():
        real = np.isfinite(map_)
        z = (median - map_)[real] / sd[real]
        ratio = (sd / laplace)[real]
        print(
            name, "median-MAP in SDs", np.round(z, 2), "SD/Laplace", np.round(ratio, 2)
        )
        assert np.all(np.abs(z) < 1.0), name
        assert np.all((ratio > 0.67) & (ratio < 1.5)), name


@pytest.mark.slow
def test_nuts_hierarchical_agrees_with_map(data, pair_population):
    """μ and ω sampled too, with ω's prior scaled to the fitted between-patient SD.

    Two patients cannot bound ω: a half-normal scaled to the fitted ω keeps the test
    about the sampler and the density (μ, log ω, the non-centred θ). The model is
    `PAIR` (vmx and kd), which one CGM day per patient identifies; about 4 min on 2
    CPU cores.
    """
    import arviz as az

    patients, sheet = data
    population = pair_population
    omega_factor = tuple(float(x) for x in population.omega / np.asarray(PAIR.log_sd))
    sampler = NUTSSampler(
        num_warmup=80, num_samples=100, num_chains=2, dense_mass=True, max_tree_depth=5
    )
    idata = sample_posterior(
        patients,
        population,
        prior=PAIR,
        sheet=sheet,
        sampler=sampler,
        hyperprior=Hyperprior(omega_factor=omega_factor),
        key=jax.random.key(8),
    )
    rhat = az.rhat(idata, var_names=["mu", "omega", "theta", "log_b"])
    each = {v: float(np.nanmax(rhat[v].values)) for v in rhat.data_vars}
    worst = max(each.values())
    steps = float(idata.sample_stats.n_steps.mean())
    shown = {v: round(r, 3) for v, r in each.items()}
    print(
        f"R-hat max {worst:.3f} {shown}; {steps:.1f} gradients per draw; "
        f"{idata.attrs['sampling_time']:.0f} s sampling"
    )
    # 100 draws of 2 chains: measured 1.032, 1.063 and 1.050 with keys 8, 9 and 10
    # (2026-11-29; with 60 draws 1.016 and 1.10)
    assert worst < 1.2
    for name, (median, sd, map_, laplace) in _compare(idata).items():
        real = np.isfinite(map_)
        z = (median - map_)[real] / sd[real]
        ratio = (sd / laplace)[real]
        print(
            name, "median-MAP in SDs", np.round(z, 2), "SD/Laplace", np.round(ratio, 2)
        )
        # measured |z| <= 0.37 and log-B SD ratios 0.93-1.61 (keys 8, 9 and 10)
        assert np.all(np.abs(z) < 1.5), name
        # θ is not held to its Laplace SD, which conditions on ω (measured: 1.36-1.88)
        if name == "log_b":
            assert np.all((ratio > 0.5) & (ratio < 2.5)), name
