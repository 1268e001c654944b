"""Small shared scenarios for the model tests."""

import diffrax as dfx
import jax.numpy as jnp

from isletfit.model import Inputs, Params

WEIGHT = 70.0
TIGHT = dfx.PIDController(rtol=1e-10, atol=1e-10)


def one_day_inputs() -> Inputs:
    """Two meals with boluses and a basal change, at off-grid minutes."""
    return Inputs(
        weight_kg=WEIGHT,
        meal_times=[427.0, 733.0, 1102.0],
        meal_carbs_g=[45.0, 70.0, 60.0],
        bolus_times=[420.0, 733.0, 1102.0],
        bolus_u=[4.0, 6.0, 5.0],
        basal_times=[0.0, 600.0],
        basal_u_per_h=[0.8, 1.0],
    )


def default_params() -> Params:
    return Params()


def day_grid(step=5.0):
    return jnp.arange(0.0, 1441.0, step)
