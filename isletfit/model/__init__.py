"""The two-timescale graft–insulin–glucose model.

Fast subsystem (minutes): meal absorption, subcutaneous insulin, insulin kinetics with
portal graft secretion and hepatic extraction, insulin action, glucose with production,
utilisation, renal excretion and counter-regulation, interstitial (CGM) glucose
(`Params`, `State`, `Inputs`, `vector_field`, `simulate`, `steady_state`);
`simulate_grid` integrates it with fixed steps in one fused loop (`FixedGrid`).

Slow subsystem (days): graft functional capacity B(t) (`MechanisticGraft`,
`FlexibleGraft`), with the Topp (2000) beta-cell model as its reference configuration
(`ToppParams`, `ToppGlucose`); `simulate_followup` runs observed windows in parallel.
"""

from ._exponential import ExponentialRK3 as ExponentialRK3
from ._exponential import ExponentialRK4 as ExponentialRK4
from ._followup import MIN_PER_DAY as MIN_PER_DAY
from ._followup import day_windows as day_windows
from ._followup import simulate_followup as simulate_followup
from ._graft import AbstractGlucoseFeedback as AbstractGlucoseFeedback
from ._graft import AbstractGraft as AbstractGraft
from ._graft import FastModelGlucose as FastModelGlucose
from ._graft import FlexibleGraft as FlexibleGraft
from ._graft import MechanisticGraft as MechanisticGraft
from ._graft import ToppGlucose as ToppGlucose
from ._grid import FixedGrid as FixedGrid
from ._grid import real_stability_limit as real_stability_limit
from ._grid import simulate_grid as simulate_grid
from ._inputs import PMOL_PER_U as PMOL_PER_U
from ._inputs import Inputs as Inputs
from ._inputs import Schedule as Schedule
from ._params import Params as Params
from ._params import param_info as param_info
from ._params import stack_params as stack_params
from ._physiology import fluxes as fluxes
from ._physiology import vector_field as vector_field
from ._simulate import FrozenStepsController as FrozenStepsController
from ._simulate import Simulation as Simulation
from ._simulate import default_controller as default_controller
from ._simulate import fixed_step_controller as fixed_step_controller
from ._simulate import simulate as simulate
from ._simulate import stable_step as stable_step
from ._stabilised import StabilisedRK34 as StabilisedRK34
from ._stabilised import StabilisedRK35 as StabilisedRK35
from ._state import State as State
from ._steady_state import basal_for_fasting_glucose as basal_for_fasting_glucose
from ._steady_state import steady_state as steady_state
from ._steady_state import steady_state_at_glucose as steady_state_at_glucose
from ._steady_state import steady_state_glucose as steady_state_glucose
from ._topp import ToppParams as ToppParams
from ._topp import topp_turnover as topp_turnover

__all__ = [
    "MIN_PER_DAY",
    "PMOL_PER_U",
    "AbstractGlucoseFeedback",
    "AbstractGraft",
    "ExponentialRK3",
    "ExponentialRK4",
    "FastModelGlucose",
    "FixedGrid",
    "FlexibleGraft",
    "FrozenStepsController",
    "Inputs",
    "MechanisticGraft",
    "Params",
    "Schedule",
    "Simulation",
    "StabilisedRK34",
    "StabilisedRK35",
    "State",
    "ToppGlucose",
    "ToppParams",
    "basal_for_fasting_glucose",
    "day_windows",
    "default_controller",
    "fixed_step_controller",
    "fluxes",
    "param_info",
    "real_stability_limit",
    "simulate",
    "simulate_followup",
    "simulate_grid",
    "stable_step",
    "stack_params",
    "steady_state",
    "steady_state_at_glucose",
    "steady_state_glucose",
    "topp_turnover",
    "vector_field",
]
