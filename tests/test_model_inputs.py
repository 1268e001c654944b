"""Inputs and Params: unit conversion and clear errors for bad values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.model import PMOL_PER_U, Inputs, Params, param_info, simulate
from isletfit.model._inputs import stack_host


def test_inputs_convert_clinical_units_to_model_units_once():
    inp = Inputs(
        weight_kg=80.0,
        meal_times=[10.0],
        meal_carbs_g=[60.0],
        bolus_times=[10.0],
        bolus_u=[4.0],
        basal_times=[0.0, 360.0],
        basal_u_per_h=[1.2, 0.6],
    )
    assert np.isclose(inp.meal[0], 60.0 * 1000 / 80)  # mg/kg
    assert np.isclose(inp.bolus[0], 4.0 * PMOL_PER_U / 80)  # pmol/kg
    assert np.isclose(inp.basal[0], 1.2 * PMOL_PER_U / 60 / 80)  # pmol/kg/min
    assert float(inp.basal_rate(-1.0)) == 0.0
    assert np.isclose(inp.basal_rate(359.0), inp.basal[0])
    assert np.isclose(inp.basal_rate(360.0), inp.basal[1])
    # insulin over the day: 4 U + 6 h x 1.2 U/h + 18 h x 0.6 U/h
    assert np.isclose(inp.total_insulin_u(0.0, 1440.0), 4.0 + 7.2 + 10.8)


def test_doses_between_counts_events_in_closed_window():
    inp = Inputs(weight_kg=50.0, bolus_times=[0.0, 10.0, 20.0], bolus_u=[1.0, 2.0, 4.0])
    per_u = PMOL_PER_U / 50.0
    assert np.isclose(inp.doses_between(0.0, 10.0)[1], 3.0 * per_u)
    assert np.isclose(inp.doses_between(5.0, 19.9)[1], 2.0 * per_u)
    assert np.isclose(inp.doses_between(10.0, 10.0)[1], 2.0 * per_u)
    assert float(inp.doses_between(21.0, 30.0)[1]) == 0.0


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(bolus_times=[0.0], bolus_u=[-1.0]), "bolus_u"),
        (dict(meal_times=[0.0], meal_carbs_g=[-20.0]), "meal_carbs_g"),
        (dict(basal_times=[0.0], basal_u_per_h=[-0.5]), "basal_u_per_h"),
        (dict(bolus_times=[5.0, 1.0], bolus_u=[1.0, 1.0]), "bolus_times"),
        (dict(meal_times=[float("nan")], meal_carbs_g=[10.0]), "meal_times"),
        (dict(meal_times=[1.0, 2.0], meal_carbs_g=[10.0]), "meal_times"),
        (dict(bolus_times=[[1.0]], bolus_u=[[1.0]]), "bolus_times"),
        (dict(bolus_times=[1.0], bolus_u=[float("nan")]), "bolus_u"),
        (dict(basal_times=[float("inf")], basal_u_per_h=[1.0]), "basal_times"),
        (dict(weight_kg=-70.0), "weight_kg"),
        (dict(weight_kg=[70.0, 80.0]), "weight_kg"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_field(kwargs, field):
    kwargs = {"weight_kg": 70.0, **kwargs}
    with pytest.raises(ValueError, match=field):
        Inputs(**kwargs)
    # the host-side builder of stacked windows checks the same
    weight = kwargs.pop("weight_kg")
    with pytest.raises(ValueError, match=field):
        stack_host(weight, [{}, kwargs])


def test_host_stacking_equals_stacking_inputs():
    """`stack_host` gives `Inputs.stack`'s arrays, as numpy."""
    windows = [
        dict(meal_times=[420.0, 750.0], meal_carbs_g=[45.0, 70.0]),
        dict(bolus_times=[400.0, 700.0, 1000.0], bolus_u=[3.0, 5.5, 0.5]),
        dict(basal_times=[-480.0, 360.0], basal_u_per_h=[0.8, 1.1]),
    ]
    stacked = Inputs.stack([Inputs(weight_kg=64.0, **w) for w in windows])
    host = stack_host(64.0, windows)
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(host), strict=True):
        assert isinstance(b, np.ndarray) and b.shape == a.shape
        np.testing.assert_allclose(b, np.asarray(a), rtol=1e-15)
    empty = stack_host(64.0, [{}, {}])
    assert empty.meal_t.shape == Inputs.stack([Inputs(weight_kg=64.0)] * 2).meal_t.shape
    # the same simulation from either (numpy leaves go through jit as they are)
    ts = jnp.arange(0.0, 1440.0, 30.0)
    one = jax.tree.map(lambda x: x[1], stacked)
    np.testing.assert_allclose(
        simulate(Params(), jax.tree.map(lambda x: x[1], host), ts).cgm,
        simulate(Params(), one, ts).cgm,
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    "name,value", [("vmx", -0.01), ("kp1", float("nan")), ("vg", [1.0, 2.0])]
)
def test_bad_params_raise_value_error_naming_the_field(name, value):
    with pytest.raises(ValueError, match=name):
        Params().replace(**{name: value})


def test_simulate_rejects_bad_output_times():
    with pytest.raises(ValueError, match="ts"):
        simulate(Params(), Inputs(weight_kg=70.0), jnp.zeros((2, 3)))


def test_param_info_lists_every_field_with_unit_bounds_and_source():
    rows = param_info()
    assert [r["name"] for r in rows] == list(Params.__dataclass_fields__)
    for r in rows:
        assert r["unit"] and r["source"] and r["lower"] <= r["default"] <= r["upper"], r


def test_params_follow_the_callers_dtype():
    p = Params()
    assert p.vg.dtype == jnp.float64  # tests run in float64
    with jax.enable_x64(False):
        p32 = Params()
        assert p32.vg.dtype == jnp.float32
        sim = simulate(p32, Inputs(weight_kg=70.0), jnp.linspace(0.0, 60.0, 4))
        assert sim.cgm.dtype == jnp.float32
