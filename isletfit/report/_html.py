"""The HTML report of a fit run, rebuilt from the files in its folder."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import InputError
from .._io import atomic_write_text

__all__ = ["build_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.88em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.failed { color: #a00; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
img { max-width: 100%; border: 1px solid #eee; }
h2 { border-top: 2px solid #ccc; padding-top: 0.8em; }
"""

_NOTE = (
    "B is the graft's functional secretory capacity as a fraction of a healthy adult's "
    "(1 = normal), estimated from CGM with the recorded insulin and meals; bands are 95 % "
    "Laplace intervals, wider between visits where no CGM was recorded. CGM cannot "
    "separate beta-cell mass from per-cell function: B is their product. 'Need covered' "
    "is the share of the basal insulin need (for a fasting glucose of 110 mg/dL) that a "
    "graft of this capacity covers; 'P(independent)' the probability that it covers all."
)

_VISIT_COLUMNS = [
    ("study_day_start", "day", "{:.0f}"),
    ("n_days", "days", "{:.0f}"),
    ("graft_b", "B", "{:.2f}"),
    ("graft_b_lower", "B low", "{:.2f}"),
    ("graft_b_upper", "B high", "{:.2f}"),
    ("need_covered", "need covered", "{:.0%}"),
    ("p_insulin_independent", "P(independent)", "{:.2f}"),
    ("insulin_u_per_day", "insulin U/day", "{:.1f}"),
    ("mean_mg_dl", "mean mg/dL", "{:.0f}"),
    ("tir_70_180_percent", "TIR %", "{:.0f}"),
    ("tbr_below_70_percent", "TBR<70 %", "{:.1f}"),
    ("tbr_below_54_percent", "TBR<54 %", "{:.1f}"),
    ("gmi_percent", "GMI %", "{:.1f}"),
    ("igls_2_category", "Igls 2.0", "{}"),
]


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _table(frame: pd.DataFrame, columns) -> str:
    cols = [c for c in columns if c[0] in frame.columns]
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in cols)
    body = []
    for _, row in frame.iterrows():
        cells = "".join(
            f"<td>{html.escape(_fmt(row[key], fmt))}</td>" for key, _, fmt in cols
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _image(path: Path) -> str:
    if not path.exists():
        return "<p>(no figure)</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="fit figure" src="data:image/png;base64,{data}">'


def build_report(out_dir: str | Path) -> Path:
    """Write ``report.html`` for a fit run from the files in ``out_dir``.

    Reads ``summary.csv`` and each patient's ``visits.csv``, ``parameters.csv``,
    ``fit_summary.json`` and ``fit.png`` (figures embedded, so the report is one
    self-contained file).

    Args:
        out_dir: A folder written by ``isletfit fit``.

    Returns:
        The path of ``report.html``.

    Raises:
        InputError: ``out_dir`` has no ``summary.csv``.
    """
    out = Path(out_dir)
    summary_path = out / "summary.csv"
    if not summary_path.exists():
        raise InputError(
            "not a fit output folder",
            file=out,
            field="summary.csv",
            expected="a folder written by 'isletfit fit'",
        )
    summary = pd.read_csv(summary_path)
    patients = list(
        dict.fromkeys(summary.get("patient_id", pd.Series(dtype=str)).astype(str))
    )
    run_rows = []
    sections = []
    for pid in patients:
        rows = summary[summary.patient_id.astype(str) == pid]
        status = rows.get("status", pd.Series(["fitted"])).iloc[0]
        if status == "failed":
            message = rows.get("message", pd.Series([""])).iloc[0]
            run_rows.append(
                f'<tr class="failed"><td>{html.escape(pid)}</td><td colspan="6">failed: '
                f"{html.escape(str(message))}</td></tr>"
            )
            continue
        folder = out / pid
        fit = (
            json.loads((folder / "fit_summary.json").read_text())
            if (folder / "fit_summary.json").exists()
            else {}
        )
        last = rows.iloc[-1]
        run_rows.append(
            "<tr>"
            f'<td><a href="#{html.escape(pid)}">{html.escape(pid)}</a></td>'
            f"<td>{len(rows)}</td>"
            f"<td>{_fmt(last.get('graft_b'), '{:.2f}')} "
            f"({_fmt(last.get('graft_b_lower'), '{:.2f}')}–{_fmt(last.get('graft_b_upper'), '{:.2f}')})</td>"
            f"<td>{_fmt(last.get('p_insulin_independent'), '{:.2f}')}</td>"
            f"<td>{_fmt(last.get('tir_70_180_percent'), '{:.0f}')}</td>"
            f"<td>{_fmt(fit.get('rmse_mg_dl'), '{:.1f}')}</td>"
            f"<td>{'yes' if fit.get('converged') else 'no'}</td>"
            "</tr>"
        )
        params = (
            pd.read_csv(folder / "parameters.csv")
            if (folder / "parameters.csv").exists()
            else pd.DataFrame()
        )
        sections.append(
            f'<h2 id="{html.escape(pid)}">{html.escape(pid)}</h2>'
            + _image(folder / "fit.png")
            + "<h3>Visits</h3>"
            + _table(rows, _VISIT_COLUMNS)
            + "<h3>Parameters</h3>"
            + _table(
                params,
                [
                    ("name", "name", "{}"),
                    ("value", "value", "{:.4g}"),
                    ("unit", "unit", "{}"),
                    ("lower", "95 % low", "{:.4g}"),
                    ("upper", "95 % high", "{:.4g}"),
                ],
            )
            + f"<p class='note'>Fit: RMSE {_fmt(fit.get('rmse_mg_dl'), '{:.1f}')} mg/dL, "
            f"MARD {_fmt(fit.get('mard_percent'), '{:.1f}')} %, "
            f"{fit.get('n_readings', '–')} readings, {fit.get('iterations', '–')} iterations, "
            f"{_fmt(fit.get('seconds'), '{:.1f}')} s. {html.escape(str(fit.get('message') or ''))}</p>"
        )
    population_link = (
        "<p>Population fit: <a href='population_report.html'>population report</a> "
        "(parameters with standard errors, shrinkage, visual predictive check).</p>"
        if (out / "population_parameters.csv").exists()
        else ""
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<title>isletfit report</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>isletfit: graft function report</h1>"
        f"<p class='note'>{html.escape(_NOTE)}</p>"
        + population_link
        + "<h2>All patients</h2><table><tr><th>patient</th><th>visits</th>"
        "<th>B at last visit (95 %)</th><th>P(independent)</th><th>TIR %</th>"
        "<th>RMSE mg/dL</th><th>converged</th></tr>"
        + "".join(run_rows)
        + "</table>"
        + "".join(sections)
        + "</body></html>"
    )
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
