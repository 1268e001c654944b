"""Files of a fit run (DESIGN.md contract), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_write_text
from ._figures import plot_fit

__all__ = ["write_patient_outputs", "write_run_summary"]


def _csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def _jsonable(value):
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_patient_outputs(
    result, visits: pd.DataFrame, out_dir: str | Path, *, truth=None
) -> Path:
    """Write one patient's outputs into ``out_dir/<patient_id>/``.

    Files: ``graft_function.csv`` (``study_day, date, estimate, lower, upper``, one row
    per day), ``parameters.csv`` (``name, value, unit, lower, upper``),
    ``fit_summary.json`` (``rmse_mg_dl, mard_percent, n_readings, converged,
    iterations, seconds`` and more), ``visits.csv`` (the per-visit table) and
    ``fit.png``.

    Args:
        result: The patient's `isletfit.fitting.FitResult`.
        visits: Its `isletfit.fitting.visit_summary` table.
        out_dir: The run's output folder.
        truth: Optional true B(study day) for the figure (synthetic patients).

    Returns:
        The patient's folder.
    """
    folder = Path(out_dir) / result.patient_id
    folder.mkdir(parents=True, exist_ok=True)
    _csv(result.graft_band(), folder / "graft_function.csv")
    _csv(result.parameters(), folder / "parameters.csv")
    _csv(visits, folder / "visits.csv")
    summary = {k: _jsonable(v) for k, v in result.summary().items()}
    atomic_write_text(folder / "fit_summary.json", json.dumps(summary, indent=2) + "\n")
    plot_fit(result, visits, folder / "fit.png", truth=truth)
    return folder


def write_run_summary(
    rows: list[pd.DataFrame], failures: dict[str, str], out_dir: str | Path
) -> Path:
    """Write ``summary.csv``: one row per patient and visit, and one per failed patient.

    Args:
        rows: The per-visit tables of the patients that were fitted.
        failures: Patient id → why it could not be fitted.
        out_dir: The run's output folder.

    Returns:
        The path of ``summary.csv``.
    """
    frames = [r for r in rows if len(r)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if failures:
        failed = pd.DataFrame(
            {
                "patient_id": list(failures),
                "status": "failed",
                "message": list(failures.values()),
            }
        )
        table = pd.concat(
            [table.assign(status="fitted", message=""), failed], ignore_index=True
        )
    elif len(table):
        table = table.assign(status="fitted", message="")
    path = Path(out_dir) / "summary.csv"
    _csv(table, path)
    return path
