"""The quadratic models of the linearised population EM, against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit import InputError
from isletfit.fitting import LinearisedEM, PlainEM, SquaremEM
from isletfit.fitting._lm import blocks_from_jacobians
from isletfit.fitting._surrogate import (
    Surrogate,
    quadratic_e_step,
    rest_step,
    surrogates,
)

P, R, W, NL, M = 3, 4, 5, 2, 30  # θ, other globals, windows, locals, readings


def _linear_patient(key, g, mu, omega):
    """A linear least-squares patient: blocks at ``g`` with the prior N(mu, omega²).

    Window w's residuals are y_w − X_w g − Z_w l_w; the other global unknowns have a
    fixed prior N(0, 1); θ the population prior.
    """
    kx, kz, ky, kl = jax.random.split(key, 4)
    x = jax.random.normal(kx, (W, M, P + R))
    z = jax.random.normal(kz, (W, M, NL))
    y = jax.random.normal(ky, (W, M))
    loc = 0.1 * jax.random.normal(kl, (W, NL))
    rw = y - jnp.einsum("wmg,g->wm", x, g) - jnp.einsum("wml,wl->wm", z, loc)
    r0 = jnp.concatenate([(g[:P] - mu) / omega, g[P:]])
    j0 = jnp.diag(jnp.concatenate([1.0 / omega, jnp.ones(R)]))
    blocks = blocks_from_jacobians(rw, -x, -z, r0, j0)
    return blocks, (x, z, y, loc)


def _exact_map(data, mu, omega):
    """The patient's MAP and covariance under N(mu, omega²): the whole linear system."""
    x, z, y, _ = data
    n = P + R + W * NL
    rows, rhs = [], []
    for w in range(W):
        a = np.zeros((M, n))
        a[:, : P + R] = x[w]
        a[:, P + R + w * NL : P + R + (w + 1) * NL] = z[w]
        rows.append(a)
        rhs.append(np.asarray(y[w]))
    prior = np.zeros((P + R, n))
    prior[np.arange(P + R), np.arange(P + R)] = np.concatenate(
        [1.0 / omega, np.ones(R)]
    )
    rows.append(prior)
    rhs.append(np.concatenate([mu / omega, np.zeros(R)]))
    a, b = np.concatenate(rows), np.concatenate(rhs)
    cov = np.linalg.inv(a.T @ a)
    return cov @ a.T @ b, cov


def test_quadratic_e_step_is_the_exact_map_of_a_linear_patient():
    """Linearised at one prior, the model gives the MAP under another exactly."""
    jax.config.update("jax_enable_x64", True)
    key = jax.random.key(3)
    mu, omega = jnp.array([0.2, -1.0, 0.5]), jnp.array([0.5, 0.3, 1.2])
    g = 0.3 * jax.random.normal(jax.random.key(4), (P + R,))
    blocks, data = _linear_patient(key, g, mu, omega)
    parts = surrogates(jax.tree.map(lambda a: a[None], blocks), g[None], mu, omega)
    model = Surrogate(np.asarray(g[None, :P]), *(np.asarray(x) for x in parts))
    mu2, omega2 = np.array([-0.4, 0.1, 0.0]), np.array([0.2, 0.9, 0.05])
    delta, cov = quadratic_e_step(model, mu2, omega2)
    rest, local = rest_step(model, delta)
    exact, exact_cov = _exact_map(data, mu2, omega2)
    np.testing.assert_allclose(g[:P] + delta[0], exact[:P], atol=1e-10)
    np.testing.assert_allclose(g[P:] + rest[0], exact[P : P + R], atol=1e-10)
    loc = np.asarray(data[3]) + local[0]
    np.testing.assert_allclose(loc.ravel(), exact[P + R :], atol=1e-10)
    np.testing.assert_allclose(cov[0], exact_cov[:P, :P], atol=1e-10)


def _normal_normal(y, s2):
    """Surrogates of patients whose data say θ_i = y_i with variance s2 (exactly)."""
    n, p = y.shape
    theta = np.zeros((n, p))  # linearised anywhere: the model is exact
    hessian = np.broadcast_to(np.diag(1.0 / s2), (n, p, p)).copy()
    gradient = (theta - y) / s2
    return Surrogate(
        theta,
        hessian,
        gradient,
        np.zeros((n, 0, p)),
        np.zeros((n, 0)),
        np.zeros((n, 1, 0, p)),
        np.zeros((n, 1, 0)),
    )


@pytest.mark.parametrize("inner", [PlainEM(), SquaremEM()])
def test_linearised_em_reaches_the_normal_normal_maximum_likelihood(inner):
    """y_i ~ N(μ, ω² + s²): the EM's fixed point is μ = ȳ, ω² = var(y) − s²."""
    rng = np.random.default_rng(0)
    n, s2 = 400, np.array([0.04, 0.25, 0.01])
    true_omega = np.array([0.5, 0.6, 0.2])
    y = rng.normal([1.0, -2.0, 0.3], np.sqrt(true_omega**2 + s2), (n, 3))
    floor = 1e-3
    em = LinearisedEM(inner=inner, tol=1e-10, max_rounds=20000)
    start = np.concatenate([np.zeros(3), np.ones(3)])
    x, rounds = em.fixed_point(_normal_normal(y, s2), start, floor=floor)
    var = np.var(y, axis=0)
    np.testing.assert_allclose(x[:3], y.mean(axis=0), atol=1e-8)
    assert np.all(var > s2)  # an interior maximum (EM crawls towards a boundary one)
    np.testing.assert_allclose(x[3:], np.sqrt(var - s2), rtol=1e-6)
    assert rounds < 20000


def test_linearised_em_arguments():
    with pytest.raises(InputError, match="inner"):
        LinearisedEM(inner=LinearisedEM())
    with pytest.raises(InputError, match="tol"):
        LinearisedEM(tol=0.0)
