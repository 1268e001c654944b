"""Fit many patients one after another, write their outputs and the run's report."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from .._custom_types import PRNGKeyArray
from .._errors import IsletfitError
from ..data._sheets import sheet_entry
from ._html import build_report
from ._outputs import write_patient_outputs, write_run_summary

__all__ = ["RunResult", "fit_and_report"]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What `fit_and_report` did.

    Attributes:
        results: Patient id -> `isletfit.fitting.FitResult` of the fitted patients.
        visits: Patient id -> its per-visit table.
        failures: Patient id -> why it could not be fitted.
        notes: Patient id -> warnings raised while fitting it (data oddities, a fit
            that stopped before its tolerance).
        report: Path of ``report.html``.
    """

    results: dict
    visits: dict
    failures: dict
    notes: dict
    report: Path


def fit_and_report(
    patients: Sequence,
    out_dir: str | Path,
    *,
    key: PRNGKeyArray,
    sheet: pd.DataFrame | None = None,
    labs: pd.DataFrame | None = None,
    model=None,
    starts: int = 2,
    truth: dict[str, Callable] | None = None,
    on_patient: Callable[[str, int, int], None] | None = None,
    mesh=None,
) -> RunResult:
    """Fit each patient, write its outputs, then ``summary.csv`` and ``report.html``.

    One patient's failure (bad data, a numerical failure, anything unexpected) is
    recorded for that patient and the others go on.

    Args:
        patients: `isletfit.data.PatientData` records.
        out_dir: Output folder.
        key: PRNG key (split into one key per patient).
        sheet: Patient sheet (``read_patients``): weight and transplant date.
        labs: Labs table (``read_labs``) for the endpoints.
        model: `isletfit.fitting.FitModel` (default ``FitModel()``).
        starts: Starting points per patient.
        truth: Optional patient id -> true B(study day), drawn in the figures
            (synthetic patients).
        on_patient: Called as ``on_patient(patient_id, index, total)`` before each fit.
        mesh: A one-axis `jax.sharding.Mesh` over which each fit splits its
            day-windows (`isletfit.fitting.fit_patient`); None: one device.

    Returns:
        The `RunResult`.
    """
    import jax

    from ..fitting import fit_patient, visit_summary

    out = Path(out_dir)
    keys = jax.random.split(key, max(len(patients), 1))
    results, visits, failures, notes = {}, {}, {}, {}
    for index, (patient, k) in enumerate(zip(patients, keys, strict=False)):
        pid = patient.patient_id
        if on_patient is not None:
            on_patient(pid, index, len(patients))
        row, weight, when = sheet_entry(sheet, pid)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = fit_patient(
                    patient,
                    model=model,
                    weight_kg=weight,
                    transplant_date=when,
                    starts=starts,
                    mesh=mesh,
                    key=k,
                )
                table = visit_summary(result, patient, patient_row=row, labs=labs)
                write_patient_outputs(
                    result, table, out, truth=None if truth is None else truth.get(pid)
                )
            notes[pid] = [str(w.message) for w in caught]
            if not result.converged:
                notes[pid].append(result.message)
            results[pid], visits[pid] = result, table
        except IsletfitError as err:
            failures[pid] = str(err)
        except Exception as err:  # one patient's failure must not stop the run
            failures[pid] = f"{type(err).__name__}: {err}"
    write_run_summary(list(visits.values()), failures, out)
    return RunResult(results, visits, failures, notes, build_report(out))
