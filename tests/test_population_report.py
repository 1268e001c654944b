"""``population_report.html`` built from the files of a population run.

The files are written here by hand (no fit), so the page is checked quickly; the full
``isletfit fit --population`` run that writes them is tested in ``test_population.py``.
"""

import json

import pandas as pd
import pytest

from isletfit import InputError
from isletfit._cli import main
from isletfit.report import build_population_report, plot_vpc


def _vpc_table() -> pd.DataFrame:
    rows = []
    for visit, day in enumerate([-14.0, 90.0]):
        for metric in ["tir_70_180_percent", "tbr_below_70_percent"]:
            for q in [0.05, 0.5, 0.95]:
                observed = 50.0 + 40.0 * (q - 0.5)
                outside = visit == 1 and metric == "tir_70_180_percent" and q == 0.5
                rows.append(
                    {
                        "visit": visit,
                        "study_day": day,
                        "n_patients": 2,
                        "metric": metric,
                        "quantile": q,
                        "observed": observed + (30.0 if outside else 0.0),
                        "sim_lower": observed - 10.0,
                        "sim_median": observed,
                        "sim_upper": observed + 10.0,
                        "inside": not outside,
                        "level": 0.9,
                        "n_draws": 50,
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture
def run_folder(tmp_path):
    out = tmp_path / "run"
    (out / "p01").mkdir(parents=True)
    pd.DataFrame(
        {
            "name": ["vmx", "kp1"],
            "unit": ["mg/kg/min per pmol/L", "mg/kg/min"],
            "typical_value": [0.04, 5.9],
            "lower": [0.03, 5.5],
            "upper": [0.05, 6.3],
            "rse_percent": [12.5, 3.6],
            "mu": [-3.2, 1.77],
            "mu_se": [0.125, 0.036],
            "omega": [0.25, 0.08],
            "omega_se": [0.07, 0.03],
            "omega_rse_percent": [28.0, 37.5],
            "cv_percent": [25.4, 8.0],
            "shrinkage": [0.2, 0.6],
            "shrinkage_percent": [20.0, 60.0],
            "shrinkage_sd_percent": [10.6, 36.8],
            "n_patients": [1, 1],
        }
    ).to_csv(out / "population_parameters.csv", index=False)
    (out / "population_summary.json").write_text(
        json.dumps(
            {
                "n_patients": 2,
                "n_fitted": 1,
                "n_failed": 1,
                "rounds": 4,
                "converged": True,
                "n_devices": 1,
                "seconds": 12.0,
            }
        )
    )
    pd.DataFrame(
        {
            "patient_id": ["p01", "p01"],
            "name": ["vmx", "kp1"],
            "value": [0.041, 5.8],
            "lower": [0.03, 5.4],
            "upper": [0.05, 6.2],
        }
    ).to_csv(out / "population_estimates.csv", index=False)
    pd.DataFrame(
        {
            "patient_id": ["p01", "p01", "p02"],
            "study_day_start": [-14.0, 90.0, None],
            "graft_b": [0.0, 0.45, None],
            "graft_b_lower": [0.0, 0.3, None],
            "graft_b_upper": [0.0, 0.7, None],
            "tir_70_180_percent": [40.0, 88.0, None],
            "status": ["fitted", "fitted", "failed"],
            "message": ["", "", "no CGM day with enough readings"],
        }
    ).to_csv(out / "summary.csv", index=False)
    (out / "p01" / "fit_summary.json").write_text(json.dumps({"rmse_mg_dl": 11.5}))
    vpc = _vpc_table()
    vpc.to_csv(out / "vpc.csv", index=False)
    plot_vpc(vpc, out / "vpc.png")
    return out


def test_population_report_sections(run_folder):
    path = build_population_report(run_folder)
    assert path == run_folder / "population_report.html"
    page = path.read_text()
    for section in ['id="parameters"', 'id="graft"', 'id="vpc"', 'id="patients"']:
        assert section in page
    # the parameter table: estimate, RSE, omega, shrinkage on both scales
    for header in ["typical value", "RSE %", "ω (SD of log)", "RSE(ω) %"]:
        assert f"<th>{header}</th>" in page
    assert "<td>12.5</td>" in page and "<td>36.8</td>" in page
    # the VPC: figure embedded, one flagged percentile, its row marked
    assert page.count("data:image/png") == 1  # no graft figure in this folder
    assert "1 of 12 observed percentiles outside" in page
    assert page.count("<td>NO</td>") == 1
    # the patients: link to each patient's section of report.html, the failure shown
    assert '<a href="report.html#p01">p01</a>' in page
    assert "<td>0.041</td>" in page and "<td>11.5</td>" in page
    assert "failed: no CGM day with enough readings" in page
    assert not list(run_folder.glob(".*.tmp"))


def test_report_command_detects_a_population_run(run_folder, capsys):
    assert main(["report", str(run_folder)]) == 0
    out = capsys.readouterr().out
    assert "Population report" in out
    assert "population_report.html" in (run_folder / "report.html").read_text()


def test_population_report_without_vpc_and_of_a_non_population_folder(
    run_folder, tmp_path
):
    (run_folder / "vpc.csv").unlink()
    page = build_population_report(run_folder).read_text()
    assert "No visual predictive check" in page
    with pytest.raises(InputError, match=r"population_parameters\.csv"):
        build_population_report(tmp_path)
