"""Fitting the model to a patient's CGM record: MAP with a Laplace band on B(t)."""

from ._config import EXPONENTIAL_GRID as EXPONENTIAL_GRID
from ._config import POPULATION_LOG_SD as POPULATION_LOG_SD
from ._config import FitModel as FitModel
from ._config import GaussianNoise as GaussianNoise
from ._config import LatentMeals as LatentMeals
from ._config import LoggedMeals as LoggedMeals
from ._config import Prior as Prior
from ._config import StudentTNoise as StudentTNoise
from ._covariates import Covariate as Covariate
from ._em import LinearisedEM as LinearisedEM
from ._em import PlainEM as PlainEM
from ._em import SquaremEM as SquaremEM
from ._fit import FitResult as FitResult
from ._fit import fit_patient as fit_patient
from ._identifiability import FisherInformation as FisherInformation
from ._identifiability import fisher_information as fisher_information
from ._identifiability import select_parameters as select_parameters
from ._lm import LevenbergMarquardt as LevenbergMarquardt
from ._population import PopulationResult as PopulationResult
from ._population import RoundInfo as RoundInfo
from ._population import fit_population as fit_population
from ._posterior import Hyperprior as Hyperprior
from ._posterior import NUTSSampler as NUTSSampler
from ._posterior import sample_patient_posterior as sample_patient_posterior
from ._posterior import sample_posterior as sample_posterior
from ._problem import prepare_windows as prepare_windows
from ._stacking import PopulationProblem as PopulationProblem
from ._stacking import stack_problems as stack_problems
from ._standard_errors import (
    population_standard_errors as population_standard_errors,
)
from ._visits import graft_for_independence as graft_for_independence
from ._visits import insulin_need_covered as insulin_need_covered
from ._visits import visit_blocks as visit_blocks
from ._visits import visit_summary as visit_summary
from ._vpc import visual_predictive_check as visual_predictive_check

__all__ = [
    "EXPONENTIAL_GRID",
    "POPULATION_LOG_SD",
    "Covariate",
    "FisherInformation",
    "FitModel",
    "FitResult",
    "GaussianNoise",
    "Hyperprior",
    "LatentMeals",
    "LevenbergMarquardt",
    "LinearisedEM",
    "LoggedMeals",
    "NUTSSampler",
    "PlainEM",
    "PopulationProblem",
    "PopulationResult",
    "Prior",
    "RoundInfo",
    "SquaremEM",
    "StudentTNoise",
    "fisher_information",
    "fit_patient",
    "fit_population",
    "graft_for_independence",
    "insulin_need_covered",
    "population_standard_errors",
    "prepare_windows",
    "sample_patient_posterior",
    "sample_posterior",
    "select_parameters",
    "stack_problems",
    "visit_blocks",
    "visit_summary",
    "visual_predictive_check",
]
