"""Closed-form sub-cases of the fast subsystem and meal mass balance."""

import jax.numpy as jnp
import numpy as np
import scipy.integrate
import scipy.linalg

from isletfit.model import PMOL_PER_U, Inputs, Params, State, simulate, steady_state

from model_fixtures import TIGHT, WEIGHT


def test_subcutaneous_insulin_after_one_bolus():
    """Isc1 = D e^{-(kd+ka1)t}; Isc2 = D kd/(ka2-kd-ka1) (e^{-(kd+ka1)t} - e^{-ka2 t})."""
    p = Params()
    dose_u, t_bolus = 7.0, 30.0
    inputs = Inputs(weight_kg=WEIGHT, bolus_times=[t_bolus], bolus_u=[dose_u])
    ts = jnp.linspace(t_bolus, t_bolus + 600.0, 61)
    y0 = steady_state(p, b=0.0, basal=0.0)
    sim = simulate(p, inputs, ts, y0=y0, t0=0.0, stepsize_controller=TIGHT)
    d = dose_u * PMOL_PER_U / WEIGHT
    s = np.asarray(ts - t_bolus)
    k1, ka2, kd = float(p.kd + p.ka1), float(p.ka2), float(p.kd)
    isc1 = d * np.exp(-k1 * s)
    isc2 = d * kd / (ka2 - k1) * (np.exp(-k1 * s) - np.exp(-ka2 * s))
    np.testing.assert_allclose(sim.state.isc1, isc1, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(sim.state.isc2, isc2, rtol=1e-7, atol=1e-9)


def test_insulin_kinetics_after_one_bolus_matches_matrix_exponential():
    """Without a graft the insulin subsystem (Isc1, Isc2, Ip, Il) is linear."""
    p = Params()
    inputs = Inputs(weight_kg=WEIGHT, bolus_times=[0.0], bolus_u=[5.0])
    ts = jnp.linspace(0.0, 480.0, 49)
    sim = simulate(p, inputs, ts, y0=steady_state(p), stepsize_controller=TIGHT)
    a = np.array(
        [
            [-(p.kd + p.ka1), 0, 0, 0],
            [p.kd, -p.ka2, 0, 0],
            [p.ka1, p.ka2, -(p.m2 + p.m4), p.m1],
            [0, 0, p.m2, -(p.m1 + p.m3)],
        ],
        dtype=float,
    )
    x0 = np.array([5.0 * PMOL_PER_U / WEIGHT, 0.0, 0.0, 0.0])
    want = np.stack([scipy.linalg.expm(a * t) @ x0 for t in np.asarray(ts)])
    got = np.stack(
        [sim.state.isc1, sim.state.isc2, sim.state.ip, sim.state.il], axis=-1
    )
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_glucose_decay_with_insulin_action_frozen():
    """With insulin action frozen and uptake linear, glucose is a linear 2-D system.

    p2u = ki = 0 freeze X and Id; no graft, no insulin in plasma; a huge Km0 with Vm0, Vmx
    scaled by it makes Uid = ku·Gt; g_ii -> 0 makes Uii = Fsnc; no renal excretion.
    """
    km = 1e12
    ku = 0.01  # [1/min] linear uptake rate (vm0 + vmx·X)/Km0
    x_frozen = 100.0  # [pmol/L]
    p = Params().replace(
        p2u=0.0,
        ki=0.0,
        km0=km,
        vm0=0.5 * ku * km,
        vmx=0.5 * ku * km / x_frozen,
        g_ii=1e-6,
        ke1=0.0,
    )
    g0 = 300.0
    zero = jnp.asarray(0.0)
    y0 = State(
        qsto1=zero,
        qsto2=zero,
        qgut=zero,
        isc1=zero,
        isc2=zero,
        ip=zero,
        il=zero,
        x=jnp.asarray(x_frozen),
        i1=jnp.asarray(x_frozen),
        id=jnp.asarray(x_frozen),
        gp=jnp.asarray(g0 * float(p.vg)),
        gt=jnp.asarray(150.0),
        y=zero,
        gs=jnp.asarray(g0),
    )
    ts = jnp.linspace(0.0, 720.0, 73)
    sim = simulate(p, Inputs(weight_kg=WEIGHT), ts, y0=y0, stepsize_controller=TIGHT)
    k1, k2, kp2 = float(p.k1), float(p.k2), float(p.kp2)
    a = np.array([[-kp2 - k1, k2], [k1, -k2 - ku]])
    c = np.array([float(p.kp1 - p.kp3 * x_frozen - p.fsnc), 0.0])
    y_star = np.linalg.solve(a, -c)
    y_init = np.array([float(y0.gp), float(y0.gt)])
    want = np.stack(
        [y_star + scipy.linalg.expm(a * t) @ (y_init - y_star) for t in np.asarray(ts)]
    )
    got = np.stack([sim.state.gp, sim.state.gt], axis=-1)
    assert want[-1, 0] < 0.8 * want[0, 0]  # glucose does decay in this configuration
    np.testing.assert_allclose(got, want, rtol=1e-7)
    np.testing.assert_allclose(sim.glucose, want[:, 0] / float(p.vg), rtol=1e-7)


def test_meal_mass_balance():
    """The plasma appearance integrates to f times the carbohydrate eaten."""
    p = Params()
    grams = 80.0
    inputs = Inputs(weight_kg=WEIGHT, meal_times=[60.0], meal_carbs_g=[grams])
    ts = jnp.arange(0.0, 48 * 60.0 + 0.5, 1.0)
    sim = simulate(p, inputs, ts, b=0.5, stepsize_controller=TIGHT)
    ra = np.asarray(p.f * p.kabs * sim.state.qgut)  # [mg/kg/min]
    appeared = scipy.integrate.simpson(ra, x=np.asarray(ts))
    eaten = grams * 1000.0 / WEIGHT
    left = float(sim.state.qsto1[-1] + sim.state.qsto2[-1] + sim.state.qgut[-1])
    assert left < 1e-3 * eaten
    np.testing.assert_allclose(appeared, float(p.f) * eaten, rtol=1e-6)


def test_doses_land_exactly_at_their_times():
    """A bolus raises Isc1 by exactly its dose at its time: no smearing."""
    p = Params()
    t_b = 123.456
    inputs = Inputs(
        weight_kg=WEIGHT,
        bolus_times=[t_b],
        bolus_u=[3.0],
        meal_times=[t_b],
        meal_carbs_g=[30.0],
    )
    before = jnp.nextafter(jnp.asarray(t_b), jnp.asarray(0.0))
    ts = jnp.array([0.0, float(before), t_b, t_b + 1e-9])
    sim = simulate(p, inputs, ts, y0=steady_state(p), stepsize_controller=TIGHT)
    jump_insulin = sim.state.isc1[2] - sim.state.isc1[1]
    jump_meal = sim.state.qsto1[2] - sim.state.qsto1[1]
    assert jnp.allclose(jump_insulin, 3.0 * PMOL_PER_U / WEIGHT, rtol=1e-9)
    assert jnp.allclose(jump_meal, 30.0 * 1000 / WEIGHT, rtol=1e-9)
    assert sim.state.isc1[1] == 0.0 and sim.state.qsto1[1] == 0.0
