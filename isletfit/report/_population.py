"""The population part of a fit run: tables, figures and ``population_report.html``.

`write_population_outputs` writes the files of a population fit (parameter table with
standard errors and shrinkage, graft trajectory, each patient's estimates, the visual
predictive check, two figures); `build_population_report` builds the HTML page from
those files alone, so ``isletfit report DIR`` can rebuild it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import InputError
from .._io import atomic_path, atomic_write_text
from ._html import _STYLE, _fmt, _image, _table

__all__ = [
    "build_population_report",
    "plot_population_graft",
    "plot_vpc",
    "write_population_outputs",
]

#: Files of a population run (in the run's output folder).
PARAMETERS_CSV = "population_parameters.csv"
GRAFT_CSV = "population_graft.csv"
ESTIMATES_CSV = "population_estimates.csv"
SUMMARY_JSON = "population_summary.json"
COVARIATES_CSV = "population_covariates.csv"
VPC_CSV = "vpc.csv"
GRAFT_PNG = "population_graft.png"
VPC_PNG = "vpc.png"
REPORT_HTML = "population_report.html"

_METRIC_TITLES = {
    "tir_70_180_percent": "time in range 70–180 mg/dL [%]",
    "tbr_below_70_percent": "time below 70 mg/dL [%]",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_population_graft(result, path: str | Path) -> Path:
    """Save the population graft-function figure (atomically).

    The typical B (exp of the mean log B across patients at each knot's study day)
    with the band where 95 % of the patients' B lie (between-patient spread of the
    EBEs, `PopulationResult.graft_trajectory`), and each patient's EBE curve as a thin
    line.

    Args:
        result: A `isletfit.fitting.PopulationResult`.
        path: Output image file (format from the suffix).

    Returns:
        The path written.
    """
    plt = _pyplot()
    traj = result.graft_trajectory()
    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    for res in result.results.values():
        ax.plot(res.knot_days, np.exp(res.log_b), "-", lw=0.6, color="0.55", alpha=0.7)
    if len(traj):
        band = traj.dropna(subset=["b_lower", "b_upper"])
        ax.fill_between(
            band.study_day,
            band.b_lower,
            band.b_upper,
            color="tab:purple",
            alpha=0.2,
            lw=0,
            label="95 % of patients",
        )
        ax.plot(
            traj.study_day, traj.b_typical, color="tab:purple", lw=2.2, label="typical"
        )
    ax.plot([], [], "-", lw=0.6, color="0.55", label="each patient (EBE)")
    ax.set(
        xlabel="study day",
        ylabel="B [× healthy adult]",
        title="Graft functional capacity across the population",
    )
    ax.set_ylim(bottom=0.0)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, Path(path))


def plot_vpc(vpc: pd.DataFrame, path: str | Path) -> Path:
    """Save the visual-predictive-check figure (atomically).

    One panel per metric, one group per visit (labelled by its study day): for each
    percentile across patients, the simulated prediction interval (bar), its median
    over the replicates (tick), and the observed value (dot; circled red where outside
    the interval). Visits are drawn side by side rather than on a time axis, because
    clinic visits are sparse and a line between them would suggest a trajectory.

    Args:
        vpc: The table of `isletfit.fitting.visual_predictive_check`.
        path: Output image file (format from the suffix).

    Returns:
        The path written.
    """
    plt = _pyplot()
    metrics = [m for m in _METRIC_TITLES if m in set(vpc.get("metric", []))]
    n_panels = max(len(metrics), 1)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 4.4), squeeze=False)
    colours = ["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown"]
    visits = (
        vpc[["visit", "study_day"]].drop_duplicates().sort_values("visit")
        if len(vpc)
        else pd.DataFrame({"visit": [], "study_day": []})
    )
    x_of = {v: k for k, v in enumerate(visits["visit"])}
    for ax, metric in zip(axes[0], metrics, strict=False):
        rows = vpc[vpc["metric"] == metric]
        qs = sorted(rows["quantile"].unique())
        width = 0.8 / max(len(qs), 1)
        for j, q in enumerate(qs):
            g = rows[rows["quantile"] == q]
            x = (
                np.array([x_of[v] for v in g["visit"]])
                + (j - (len(qs) - 1) / 2) * width
            )
            c = colours[j % len(colours)]
            ax.bar(
                x,
                g.sim_upper - g.sim_lower,
                bottom=g.sim_lower,
                width=0.8 * width,
                color=c,
                alpha=0.25,
                label=f"{100 * q:g}th percentile",
            )
            ax.plot(x, g.sim_median, "_", color=c, ms=14, mew=2)
            ax.plot(x, g.observed, "o", color=c, ms=6)
            out = ~g["inside"].astype(bool).to_numpy()
            ax.plot(
                x[out], g.observed.to_numpy()[out], "o", mfc="none", mec="red", ms=13
            )
        level = float(rows["level"].iloc[0]) if len(rows) else 0.9
        ax.set_xticks(range(len(visits)), [f"day {d:g}" for d in visits["study_day"]])
        ax.set(
            xlabel="visit",
            ylabel=_METRIC_TITLES[metric],
            title=f"{_METRIC_TITLES[metric]}\nobserved vs {100 * level:g} % PI",
        )
        ax.set_ylim(-2, 102)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(
        "Visual predictive check: percentiles across patients per visit "
        "(dots observed, bars simulated prediction intervals, ticks their medians; "
        "outside circled red)",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, Path(path))


def _csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_population_outputs(
    result, out_dir: str | Path, *, vpc: pd.DataFrame | None = None
) -> dict[str, Path]:
    """Write the files of a population fit into ``out_dir`` (each atomically).

    Files: ``population_parameters.csv`` (`PopulationResult.parameters`),
    ``population_graft.csv`` (`PopulationResult.graft_trajectory`),
    ``population_estimates.csv`` (`PopulationResult.estimates`),
    ``population_summary.json`` (`PopulationResult.summary`), ``population_graft.png``
    (`plot_population_graft`), with covariates ``population_covariates.csv``
    (`PopulationResult.covariate_effects`), and with a ``vpc`` table ``vpc.csv`` and
    ``vpc.png`` (`plot_vpc`).

    Args:
        result: The `isletfit.fitting.PopulationResult`.
        out_dir: The run's output folder.
        vpc: The `isletfit.fitting.visual_predictive_check` table, or None.

    Returns:
        File role -> path written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "parameters": out / PARAMETERS_CSV,
        "graft": out / GRAFT_CSV,
        "estimates": out / ESTIMATES_CSV,
        "summary": out / SUMMARY_JSON,
        "graft_figure": out / GRAFT_PNG,
    }
    _csv(result.parameters(), paths["parameters"])
    _csv(result.graft_trajectory(), paths["graft"])
    _csv(result.estimates(), paths["estimates"])
    atomic_write_text(
        paths["summary"], json.dumps(_jsonable(result.summary()), indent=2) + "\n"
    )
    plot_population_graft(result, paths["graft_figure"])
    if result.covariates:
        paths["covariates"] = out / COVARIATES_CSV
        _csv(result.covariate_effects(), paths["covariates"])
    else:  # a table from an earlier run with covariates would be stale
        (out / COVARIATES_CSV).unlink(missing_ok=True)
    if vpc is not None:
        paths["vpc"] = out / VPC_CSV
        paths["vpc_figure"] = out / VPC_PNG
        _csv(vpc, paths["vpc"])
        plot_vpc(vpc, paths["vpc_figure"])
    return paths


_COVARIATE_COLUMNS = [
    ("name", "parameter", "{}"),
    ("covariate", "covariate", "{}"),
    ("reference", "median", "{:.4g}"),
    ("beta", "β (exponent)", "{:.3f}"),
    ("lower", "95 % low", "{:.3f}"),
    ("upper", "95 % high", "{:.3f}"),
    ("factor_per_doubling", "× per doubling", "{:.3f}"),
]

_PARAMETER_COLUMNS = [
    ("name", "parameter", "{}"),
    ("unit", "unit", "{}"),
    ("typical_value", "typical value", "{:.4g}"),
    ("lower", "95 % low", "{:.4g}"),
    ("upper", "95 % high", "{:.4g}"),
    ("rse_percent", "RSE %", "{:.1f}"),
    ("omega", "ω (SD of log)", "{:.3f}"),
    ("omega_rse_percent", "RSE(ω) %", "{:.1f}"),
    ("cv_percent", "between-patient CV %", "{:.1f}"),
    ("shrinkage_percent", "shrinkage % (var)", "{:.1f}"),
    ("shrinkage_sd_percent", "shrinkage % (SD)", "{:.1f}"),
]

_NOTE = (
    "Laplace-EM (first-order conditional) population fit: typical values μ and "
    "between-patient SDs ω of the log parameters, each patient's empirical Bayes "
    "estimate (EBE) under N(μ, ω²). Standard errors come from the Fisher information "
    "of the linearised model: each patient's data act as a measurement of its "
    "parameters with precision C_i⁻¹ − Ω⁻¹ (C_i: its Laplace posterior covariance), "
    "so SE(μ) = sqrt(diag((Σ_i V_i⁻¹)⁻¹)) with V_i = Ω + (C_i⁻¹ − Ω⁻¹)⁻¹ and SE(ω) from "
    "the normal model's information for ω (Lavielle, Mixed Effects Models for the "
    "Population Approach, 2014). RSE % of a typical value is 100·SE(μ) (log scale). "
    "η-shrinkage: 1 − var(EBE)/ω² (variance scale, as Monolix) and 1 − SD(EBE)/ω (SD "
    "scale, as NONMEM; Savic & Karlsson, AAPS J 2009); above ~30 % the EBEs are pulled "
    "towards the typical value and their spread understates the population's."
)

_VPC_NOTE = (
    "Visual predictive check (Holford 2005; Bergstrand et al., AAPS J 2011): every "
    "patient's recorded CGM days, meals and insulin are simulated again with virtual "
    "patients drawn from the fitted population (parameters from N(μ, ω²), graft "
    "function from the population's graft distribution, day-to-day and sensor "
    "variability from the fit's priors, CGM error as estimated), and the percent of "
    "readings in 70–180 mg/dL and below 70 mg/dL is computed per patient and visit. "
    "Per visit, the observed 5th, 50th and 95th percentiles across patients are "
    "compared with the prediction intervals of the same percentiles over the "
    "simulated replicates; an observed percentile outside its interval (circled) "
    "points to a misspecified typical value, variability or graft trajectory."
)


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def _vpc_table(vpc: pd.DataFrame) -> str:
    """Per visit and metric: observed percentiles with their intervals."""
    if vpc.empty:
        return "<p>(no visual predictive check)</p>"
    head = (
        "<tr><th>visit day</th><th>patients</th><th>metric</th><th>percentile</th>"
        "<th>observed</th><th>simulated median</th><th>prediction interval</th>"
        "<th>inside</th></tr>"
    )
    body = []
    order = {m: k for k, m in enumerate(_METRIC_TITLES)}
    rows = vpc.assign(_order=vpc["metric"].map(order).fillna(len(order)))
    for _, r in rows.sort_values(["visit", "_order", "quantile"]).iterrows():
        inside = bool(r["inside"])
        cls = "" if inside else ' class="failed"'
        body.append(
            f"<tr{cls}><td>{_fmt(r['study_day'], '{:.0f}')}</td>"
            f"<td>{_fmt(r['n_patients'], '{:.0f}')}</td>"
            f"<td>{html.escape(_METRIC_TITLES.get(r['metric'], str(r['metric'])))}</td>"
            f"<td>{_fmt(100 * r['quantile'], '{:g}')}th</td>"
            f"<td>{_fmt(r['observed'], '{:.1f}')}</td>"
            f"<td>{_fmt(r['sim_median'], '{:.1f}')}</td>"
            f"<td>{_fmt(r['sim_lower'], '{:.1f}')}–{_fmt(r['sim_upper'], '{:.1f}')}</td>"
            f"<td>{'yes' if inside else 'NO'}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _patient_table(out: Path, estimates: pd.DataFrame, names: list[str]) -> str:
    """One row per patient: link to its section of report.html, headline numbers, EBEs."""
    summary = _read_csv(out / "summary.csv")
    patients = list(
        dict.fromkeys(summary.get("patient_id", pd.Series(dtype=str)).astype(str))
    )
    if not estimates.empty:
        estimates = estimates.assign(patient_id=estimates["patient_id"].astype(str))
        for pid in estimates["patient_id"]:
            if pid not in patients:
                patients.append(pid)
    head = (
        "<tr><th>patient</th><th>visits</th><th>B at last visit (95 %)</th>"
        "<th>TIR % at last visit</th><th>RMSE mg/dL</th>"
        + "".join(f"<th>{html.escape(n)} (EBE)</th>" for n in names)
        + "</tr>"
    )
    body = []
    for pid in patients:
        rows = (
            summary[summary["patient_id"].astype(str) == pid]
            if not summary.empty
            else pd.DataFrame()
        )
        status = rows["status"].iloc[0] if "status" in rows and len(rows) else "fitted"
        if status == "failed":
            message = rows["message"].iloc[0] if "message" in rows else ""
            body.append(
                f'<tr class="failed"><td>{html.escape(pid)}</td>'
                f'<td colspan="{4 + len(names)}">failed: '
                f"{html.escape(str(message))}</td></tr>"
            )
            continue
        fit_path = out / pid / "fit_summary.json"
        fit = json.loads(fit_path.read_text()) if fit_path.exists() else {}
        last = rows.iloc[-1] if len(rows) else pd.Series(dtype=object)
        ebe = (
            estimates[estimates["patient_id"] == pid].set_index("name")["value"]
            if not estimates.empty
            else pd.Series(dtype=float)
        )
        cells = "".join(f"<td>{_fmt(ebe.get(n, np.nan), '{:.4g}')}</td>" for n in names)
        body.append(
            "<tr>"
            f'<td><a href="report.html#{html.escape(pid)}">{html.escape(pid)}</a></td>'
            f"<td>{len(rows)}</td>"
            f"<td>{_fmt(last.get('graft_b'), '{:.2f}')} "
            f"({_fmt(last.get('graft_b_lower'), '{:.2f}')}–"
            f"{_fmt(last.get('graft_b_upper'), '{:.2f}')})</td>"
            f"<td>{_fmt(last.get('tir_70_180_percent'), '{:.0f}')}</td>"
            f"<td>{_fmt(fit.get('rmse_mg_dl'), '{:.1f}')}</td>"
            f"{cells}</tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def build_population_report(out_dir: str | Path) -> Path:
    """Write ``population_report.html`` for a population run from its files.

    Sections: the fit (patients, rounds, convergence), the population parameter table
    (typical value with 95 % interval, RSE %, ω, RSE(ω) %, between-patient CV,
    shrinkage), the population graft trajectory figure, the visual predictive check
    (figure and table), and the per-patient table linking to each patient's section
    of ``report.html``. Figures are embedded, so the page is one self-contained file.

    Args:
        out_dir: A folder written by ``isletfit fit --population``.

    Returns:
        The path of ``population_report.html``.

    Raises:
        InputError: ``out_dir`` has no ``population_parameters.csv``.
    """
    out = Path(out_dir)
    if not (out / PARAMETERS_CSV).exists():
        raise InputError(
            "not a population fit output folder",
            file=out,
            field=PARAMETERS_CSV,
            expected="a folder written by 'isletfit fit --population'",
        )
    params = pd.read_csv(out / PARAMETERS_CSV)
    summary_path = out / SUMMARY_JSON
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    vpc = _read_csv(out / VPC_CSV)
    effects = _read_csv(out / COVARIATES_CSV)
    covariate_section = ""
    if not effects.empty:
        covariate_section = (
            '<h2 id="covariates">Covariate effects</h2>'
            "<p class='note'>Each parameter's typical value scales as "
            "(covariate / cohort median)<sup>β</sup>; an interval of β that excludes 0 "
            "is an effect the data support.</p>" + _table(effects, _COVARIATE_COLUMNS)
        )
    estimates = _read_csv(out / ESTIMATES_CSV)
    names = [str(n) for n in params.get("name", [])]

    state = "converged" if summary.get("converged") else "not converged"
    fit_line = (
        f"{summary.get('n_fitted', '–')} of {summary.get('n_patients', '–')} patients "
        f"fitted ({summary.get('n_failed', 0)} failed); {summary.get('rounds', '–')} "
        f"EM rounds, {state}; {_fmt(summary.get('seconds'), '{:.0f}')} s on "
        f"{summary.get('n_devices', 1)} device(s)."
    )
    if vpc.empty:
        vpc_section = (
            "<p class='note'>No visual predictive check in this folder (it needs "
            "recorded meals; see <code>isletfit fit --vpc-draws</code>).</p>"
        )
    else:
        n_out = int((~vpc["inside"].astype(bool)).sum())
        verdict = (
            f"{n_out} of {len(vpc)} observed percentiles outside their "
            f"{100 * float(vpc['level'].iloc[0]):g} % prediction intervals "
            f"({int(vpc['n_draws'].iloc[0])} simulated replicates)."
        )
        vpc_section = (
            f"<p class='note'>{html.escape(_VPC_NOTE)}</p>"
            + _image(out / VPC_PNG)
            + f"<p>{html.escape(verdict)}</p>"
            + _vpc_table(vpc)
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<title>isletfit population report</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>isletfit: population report</h1>"
        f"<p>{html.escape(fit_line)} Per-patient details: "
        '<a href="report.html">report.html</a>.</p>'
        '<h2 id="parameters">Population parameters</h2>'
        f"<p class='note'>{html.escape(_NOTE)}</p>"
        + _table(params, _PARAMETER_COLUMNS)
        + covariate_section
        + '<h2 id="graft">Population graft trajectory</h2>'
        + "<p class='note'>Typical graft function B (fraction of a healthy adult's "
        "secretory capacity) across the population, the band where 95 % of the "
        "patients' estimates lie, and each patient's estimate (thin lines).</p>"
        + _image(out / GRAFT_PNG)
        + '<h2 id="vpc">Visual predictive check</h2>'
        + vpc_section
        + '<h2 id="patients">Patients</h2>'
        + _patient_table(out, estimates, names)
        + "</body></html>"
    )
    path = out / REPORT_HTML
    atomic_write_text(path, page)
    return path
