"""Outputs of a fit run: per-patient files and figure, run summary, HTML reports."""

from ._figures import plot_fit as plot_fit
from ._html import build_report as build_report
from ._outputs import write_patient_outputs as write_patient_outputs
from ._outputs import write_run_summary as write_run_summary
from ._population import build_population_report as build_population_report
from ._population import plot_population_graft as plot_population_graft
from ._population import plot_vpc as plot_vpc
from ._population import write_population_outputs as write_population_outputs
from ._run import RunResult as RunResult
from ._run import fit_and_report as fit_and_report

__all__ = [
    "RunResult",
    "build_population_report",
    "build_report",
    "fit_and_report",
    "plot_fit",
    "plot_population_graft",
    "plot_vpc",
    "write_patient_outputs",
    "write_population_outputs",
    "write_run_summary",
]
