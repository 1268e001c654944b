"""Outputs of a fit run: per-patient files and figure, run summary, HTML report."""

from ._figures import plot_fit as plot_fit
from ._html import build_report as build_report
from ._outputs import write_patient_outputs as write_patient_outputs
from ._outputs import write_run_summary as write_run_summary
from ._run import RunResult as RunResult
from ._run import fit_and_report as fit_and_report

__all__ = [
    "RunResult",
    "build_report",
    "fit_and_report",
    "plot_fit",
    "write_patient_outputs",
    "write_run_summary",
]
