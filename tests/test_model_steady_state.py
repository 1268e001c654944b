"""Fasting steady state: closed forms + scalar root vs a long simulation."""

import jax
import jax.numpy as jnp
import pytest

from isletfit.model import (
    Inputs,
    Params,
    State,
    simulate,
    steady_state,
    steady_state_glucose,
    vector_field,
)

from model_fixtures import TIGHT, WEIGHT


@pytest.mark.parametrize(
    "b,basal_u_per_h", [(0.0, 0.0), (0.0, 1.2), (0.4, 0.5), (1.0, 0.0), (2.0, 0.3)]
)
def test_steady_state_matches_long_simulation(b, basal_u_per_h):
    params = Params()
    inputs = Inputs(weight_kg=WEIGHT, basal_times=[0.0], basal_u_per_h=[basal_u_per_h])
    ss = steady_state(params, b=b, basal=inputs.basal_rate(0.0))
    # start far away: the steady state of a different graft and insulin, perturbed
    start = steady_state(params, b=0.5 * b + 0.2, basal=0.5).map(
        lambda x: 1.3 * x + 1.0
    )
    ts = jnp.array([0.0, 10 * 1440.0])
    sim = simulate(
        params, inputs, ts, b=b, y0=start, stepsize_controller=TIGHT, max_steps=10**6
    )
    assert sim.successful
    final = sim.state.map(lambda x: x[-1])
    for name in State.names():
        got, want = getattr(final, name), getattr(ss, name)
        assert jnp.allclose(got, want, rtol=1e-6, atol=1e-9), (name, got, want)


@pytest.mark.parametrize("b,basal", [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.3, 0.7)])
def test_steady_state_is_a_fixed_point_of_the_vector_field(b, basal):
    params = Params()
    inputs = Inputs(
        weight_kg=WEIGHT, basal_times=[0.0], basal_u_per_h=[basal * 60 * WEIGHT / 6000]
    )
    ss = steady_state(params, b=b, basal=basal)
    dy = vector_field(jnp.asarray(0.0), ss, (params, inputs, jnp.asarray(b)))
    scale = 1.0 + jnp.abs(ss.to_array())
    assert jnp.max(jnp.abs(dy.to_array()) / scale) < 1e-10


def test_steady_state_glucose_is_monotone_in_graft_and_basal():
    params = Params()
    g_b = jax.vmap(lambda b: steady_state_glucose(params, b=b))(jnp.linspace(0, 2, 9))
    g_u = jax.vmap(lambda u: steady_state_glucose(params, basal=u))(
        jnp.linspace(0, 2, 9)
    )
    assert jnp.all(jnp.diff(g_b) < 0) and jnp.all(jnp.diff(g_u) < 0)


def test_steady_state_gradient_matches_finite_differences():
    params = Params()

    def g_of(vmx, b):
        return steady_state_glucose(params.replace(vmx=vmx), b=b, basal=0.3)

    grad = jax.grad(g_of, argnums=(0, 1))(0.047, 0.5)
    eps = 1e-6
    fd_vmx = (g_of(0.047 + eps, 0.5) - g_of(0.047 - eps, 0.5)) / (2 * eps)
    fd_b = (g_of(0.047, 0.5 + eps) - g_of(0.047, 0.5 - eps)) / (2 * eps)
    assert jnp.allclose(grad[0], fd_vmx, rtol=1e-6)
    assert jnp.allclose(grad[1], fd_b, rtol=1e-6)
