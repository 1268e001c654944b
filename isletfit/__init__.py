"""isletfit: estimate islet-graft function over time from CGM records.

A differentiable two-timescale model (graft function -> insulin secretion -> glucose ->
interstitial CGM signal) integrated with diffrax and fitted with JAX. The most used
entry points are re-exported here; the subpackages hold the rest:

- `isletfit.model`: parameters, inputs, the vector field, `simulate`, steady states,
  graft trajectories (`MechanisticGraft`, `FlexibleGraft`), follow-up simulation;
- `isletfit.data`: readers of CGM/insulin/meal exports -> `PatientData`;
- `isletfit.metrics`: consensus CGM metrics and islet-transplant endpoints.

Importing isletfit changes no JAX setting: enable float64 yourself
(``jax.config.update("jax_enable_x64", True)``) before fitting.
"""

from ._errors import DataWarning as DataWarning
from ._errors import InputError as InputError
from ._errors import IsletfitError as IsletfitError
from .data import PatientData as PatientData
from .data import read as read
from .data import read_many as read_many
from .metrics import cgm_metrics as cgm_metrics
from .model import FlexibleGraft as FlexibleGraft
from .model import Inputs as Inputs
from .model import MechanisticGraft as MechanisticGraft
from .model import Params as Params
from .model import State as State
from .model import simulate as simulate
from .model import simulate_followup as simulate_followup
from .model import steady_state as steady_state

__version__ = "0.1.0"

__all__ = [
    "DataWarning",
    "FlexibleGraft",
    "InputError",
    "Inputs",
    "IsletfitError",
    "MechanisticGraft",
    "Params",
    "PatientData",
    "State",
    "cgm_metrics",
    "read",
    "read_many",
    "simulate",
    "simulate_followup",
    "steady_state",
]
