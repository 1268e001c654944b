"""Covariates on the typical values: the M-step, standard errors, sheet values."""

import jax
import numpy as np
import pandas as pd
import pytest

from isletfit import InputError
from isletfit.fitting import (
    Covariate,
    SquaremEM,
    fit_population,
    population_standard_errors,
)
from isletfit.fitting._covariates import (
    coefficient_standard_errors,
    covariate_values,
    free_coefficients,
    regression_m_step,
)
from isletfit.fitting._em import m_step
from isletfit.model import Params

from fit_fixtures import REFERENCE, synthetic_patient


def _design(rng, n, q):
    return np.concatenate([np.ones((n, 1)), rng.normal(0.0, 0.3, (n, q))], axis=1)


def test_m_step_is_least_squares_and_reduces_to_the_plain_one():
    rng = np.random.default_rng(0)
    n, p, q = 40, 3, 2
    x = _design(rng, n, q)
    theta = rng.normal(size=(n, p))
    var = rng.uniform(0.01, 0.05, (n, p))
    free = np.ones((p, 1 + q), bool)
    free[1, 2] = False  # covariate 2 does not act on parameter 1
    coef, omega = regression_m_step(theta, var, x, free, floor=1e-3)
    for j in range(p):
        cols = free[j]
        b, *_ = np.linalg.lstsq(x[:, cols], theta[:, j], rcond=None)
        np.testing.assert_allclose(coef[j, cols], b, atol=1e-12)
        resid = theta[:, j] - x[:, cols] @ b
        assert omega[j] == pytest.approx(np.sqrt(np.mean(resid**2 + var[:, j])))
    assert coef[1, 2] == 0.0
    # without covariates: μ = mean, ω² = mean[(θ − μ)² + var]
    coef0, omega0 = regression_m_step(
        theta, var, x[:, :1], np.ones((p, 1), bool), floor=1e-3
    )
    mu, om = m_step(theta, var, floor=1e-3)
    np.testing.assert_allclose(coef0[:, 0], mu, atol=1e-12)
    np.testing.assert_allclose(omega0, om, atol=1e-12)


def test_em_with_covariates_reaches_the_maximum_likelihood_estimate():
    """Normal–normal with covariates: y_i = X_i b + η_i + ε_i, ε_i ~ N(0, s²).

    The EM (exact E-step, this M-step) converges to the ML estimate of the marginal
    model y_i ~ N(X_i b, ω² + s²): b = OLS of y on X, ω² = RSS/n − s².
    """
    rng = np.random.default_rng(1)
    n, s = 200, 0.2
    x = _design(rng, n, 1)
    y = x @ np.array([0.5, 0.75]) + rng.normal(0, 0.4, n) + rng.normal(0, s, n)
    coef, omega = np.zeros((1, 2)), np.ones(1)
    free = np.ones((1, 2), bool)
    for _ in range(2000):
        prec = 1 / s**2 + 1 / omega[0] ** 2
        centre = x @ coef[0]
        theta = ((y / s**2 + centre / omega[0] ** 2) / prec)[:, None]
        new, omega = regression_m_step(
            theta, np.full((n, 1), 1 / prec), x, free, floor=1e-6
        )
        if np.max(np.abs(new - coef)) < 1e-13:
            break
        coef = new
    b, *_ = np.linalg.lstsq(x, y, rcond=None)
    rss = np.sum((y - x @ b) ** 2)
    np.testing.assert_allclose(coef[0], b, atol=1e-8)
    assert omega[0] ** 2 == pytest.approx(rss / n - s**2, rel=1e-6)


def test_standard_errors_of_the_coefficients():
    rng = np.random.default_rng(2)
    n, p, q = 30, 2, 2
    x = _design(rng, n, q)
    omega = np.array([0.3, 0.5])
    free = np.ones((p, 1 + q), bool)
    free[0, 1] = False
    # exact data (zero posterior covariance): least squares, ω² (XᵀX)⁻¹
    se = coefficient_standard_errors(omega, np.zeros((n, p, p)), x, free)
    for j in range(p):
        cols = free[j]
        xtx = np.linalg.inv(x[:, cols].T @ x[:, cols])
        np.testing.assert_allclose(
            se[j, cols], omega[j] * np.sqrt(np.diag(xtx)), rtol=1e-10
        )
    assert np.isnan(se[0, 1])
    # no covariates: the standard errors of μ
    a = rng.normal(size=(n, p, p)) * 0.1
    cov = np.einsum("nij,nkj->nik", a, a) + 0.01 * np.eye(p)
    se0 = coefficient_standard_errors(omega, cov, x[:, :1], np.ones((p, 1), bool))
    mu_se, _ = population_standard_errors(omega, cov)
    np.testing.assert_allclose(se0[:, 0], mu_se, rtol=1e-10)


def test_covariate_values_from_the_sheet():
    sheet = pd.DataFrame(
        {
            "patient_id": ["a", "b", "c"],
            "weight_kg": [60.0, 70.0, 98.0],
            "dose": ["1.5", "3", "x"],
        }
    )
    c, ref = covariate_values([Covariate("weight_kg")], sheet, ["c", "a", "b"])
    assert ref[0] == 70.0
    np.testing.assert_allclose(c[:, 0], np.log([98 / 70, 60 / 70, 1.0]))
    with pytest.raises(InputError, match="'c' has no positive value of covariate"):
        covariate_values([Covariate("dose")], sheet, ["a", "b", "c"])
    c, _ = covariate_values([Covariate("dose")], sheet, ["a", "b"])
    np.testing.assert_allclose(c[:, 0], np.log([1.5 / 2.25, 3 / 2.25]))
    with pytest.raises(InputError, match="no column 'age'"):
        covariate_values([Covariate("age")], sheet, ["a"])
    with pytest.raises(InputError, match="need the patient sheet"):
        covariate_values([Covariate("weight_kg")], None, ["a"])


def test_free_coefficients_and_bad_covariates():
    free = free_coefficients(
        [Covariate("weight_kg", ("vmx",)), Covariate("dose")], ("kp1", "vmx")
    )
    np.testing.assert_array_equal(free, [[True, False, True], [True, True, True]])
    with pytest.raises(InputError, match="not estimated"):
        free_coefficients([Covariate("weight_kg", ("m1",))], ("kp1", "vmx"))
    with pytest.raises(InputError, match="twice"):
        free_coefficients([Covariate("dose"), Covariate("dose")], ("kp1",))
    with pytest.raises(InputError, match="column"):
        Covariate("")
    with pytest.raises(InputError, match="parameters"):
        Covariate("dose", "vmx")


@pytest.mark.slow
def test_a_planted_weight_effect_is_recovered(tmp_path):
    """12 synthetic recipients with insulin sensitivity vmx ∝ (weight/70 kg)^−1.

    The population fit with weight on vmx finds β within its 95 % interval of −1, an
    interval that excludes 0, and a between-patient SD of vmx smaller than without
    the covariate (which must absorb the weight effect into ω).
    """
    weights = np.linspace(50.0, 110.0, 12)
    patients = []
    for k, w in enumerate(weights):
        true = Params().replace(vmx=0.04 * (w / 70.0) ** -1.0, kp1=5.9)
        patient, _ = synthetic_patient(
            tmp_path / f"w{k:02d}.csv",
            seed=k,
            weight=w,
            true=true,
            blocks=((-5, 2), (60, 2)),
        )
        patients.append(patient)
    sheet = pd.DataFrame(
        {
            "patient_id": [p.patient_id for p in patients],
            "weight_kg": weights,
            "transplant_date": REFERENCE,
        }
    )
    kwargs = dict(sheet=sheet, key=jax.random.key(0), starts=1, em=SquaremEM())
    with_weight = fit_population(
        patients, covariates=(Covariate("weight_kg", ("vmx",)),), **kwargs
    )
    effect = with_weight.covariate_effects().set_index("name").loc["vmx"]
    print(effect.to_dict(), with_weight.rounds, with_weight.converged)
    assert effect["lower"] < -1.0 < effect["upper"]
    assert effect["upper"] < 0.0
    without = fit_population(patients, **kwargs)
    k = with_weight.estimated.index("vmx")
    assert with_weight.omega[k] < without.omega[k]
