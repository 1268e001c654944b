"""Virtual transplant cohort: a zimislecel-like trial simulated patient by patient.

Virtual adults with type 1 diabetes (`Population`, `sample_patients`) live simulated
days (`DailyLife`: meals, bolus habits and errors, treatment of lows, day-to-day
variation of insulin sensitivity) on basal–bolus therapy, receive an islet graft on
day 0 (`GraftPopulation` -> one `isletfit.model.MechanisticGraft` each), and are
followed at clinic visits (`VisitPlan`) with 14-day CGM blocks (`SensorModel`), labs
(`MixedMealTest` C-peptide through Van Cauter kinetics, `HbA1cModel`,
`SevereHypoglycaemia`) and insulin titration by the clinic (`TitrationProtocol`).
`simulate_cohort` runs it all in jit-compiled, vmapped chunks and returns a `Cohort`
that holds the observations and the truth; `write_cohort` writes the generic CSVs,
``patients.csv``, ``labs.csv`` and ``truth.csv``. `zimislecel_like` is calibrated to
the published full-dose outcomes (`PUBLISHED_ZIMISLECEL`, `compare_with_published`).
"""

from ._calibration import PUBLISHED_ZIMISLECEL as PUBLISHED_ZIMISLECEL
from ._calibration import Outcome as Outcome
from ._calibration import compare_with_published as compare_with_published
from ._calibration import trial_outcomes as trial_outcomes
from ._cohort import Cohort as Cohort
from ._cohort import simulate_cohort as simulate_cohort
from ._cohort import simulate_patients as simulate_patients
from ._distributions import AbstractDistribution as AbstractDistribution
from ._distributions import LogNormal as LogNormal
from ._distributions import Normal as Normal
from ._distributions import Uniform as Uniform
from ._files import patient_records as patient_records
from ._files import write_cohort as write_cohort
from ._labs import CPeptideKinetics as CPeptideKinetics
from ._labs import HbA1cModel as HbA1cModel
from ._labs import MixedMealTest as MixedMealTest
from ._labs import MixedMealTestResult as MixedMealTestResult
from ._labs import SevereHypoglycaemia as SevereHypoglycaemia
from ._labs import c_peptide_concentration as c_peptide_concentration
from ._labs import hba1c_trajectory as hba1c_trajectory
from ._labs import mixed_meal_test as mixed_meal_test
from ._labs import van_cauter_kinetics as van_cauter_kinetics
from ._life import SIMGLUCOSE_SCENARIO as SIMGLUCOSE_SCENARIO
from ._life import BolusBehaviour as BolusBehaviour
from ._life import DailyLife as DailyLife
from ._life import DayPlan as DayPlan
from ._life import HypoTreatment as HypoTreatment
from ._life import MealSlot as MealSlot
from ._life import sample_day as sample_day
from ._population import Demographics as Demographics
from ._population import GraftPopulation as GraftPopulation
from ._population import Physiology as Physiology
from ._population import Population as Population
from ._population import Regimen as Regimen
from ._population import VirtualPatients as VirtualPatients
from ._population import sample_patients as sample_patients
from ._population import zimislecel_like as zimislecel_like
from ._sensor import SensorModel as SensorModel
from ._sensor import SensorReadings as SensorReadings
from ._sensor import ar2_stationary_sd as ar2_stationary_sd
from ._sensor import sensor_readings as sensor_readings
from ._simulate import VisitPlan as VisitPlan
from ._titration import ReviewData as ReviewData
from ._titration import TitrationProtocol as TitrationProtocol
from ._titration import TitrationState as TitrationState
from ._titration import review as review

__all__ = [
    "PUBLISHED_ZIMISLECEL",
    "SIMGLUCOSE_SCENARIO",
    "AbstractDistribution",
    "BolusBehaviour",
    "CPeptideKinetics",
    "Cohort",
    "DailyLife",
    "DayPlan",
    "Demographics",
    "GraftPopulation",
    "HbA1cModel",
    "HypoTreatment",
    "LogNormal",
    "MealSlot",
    "MixedMealTest",
    "MixedMealTestResult",
    "Normal",
    "Outcome",
    "Physiology",
    "Population",
    "Regimen",
    "ReviewData",
    "SensorModel",
    "SensorReadings",
    "SevereHypoglycaemia",
    "TitrationProtocol",
    "TitrationState",
    "Uniform",
    "VirtualPatients",
    "VisitPlan",
    "ar2_stationary_sd",
    "c_peptide_concentration",
    "compare_with_published",
    "hba1c_trajectory",
    "mixed_meal_test",
    "patient_records",
    "review",
    "sample_day",
    "sample_patients",
    "sensor_readings",
    "simulate_cohort",
    "simulate_patients",
    "trial_outcomes",
    "van_cauter_kinetics",
    "write_cohort",
    "zimislecel_like",
]
