"""`isletfit fit` and `isletfit report` end to end, with a failing patient among good ones."""

import json

import numpy as np
import pandas as pd
import pytest

from isletfit._cli import main

from fit_fixtures import synthetic_patient


def test_fit_command_writes_outputs_and_isolates_a_failure(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for k, pid in enumerate(["p01", "p02"]):
        synthetic_patient(data / f"{pid}.csv", seed=k, blocks=((-5, 2), (60, 2)))
    (data / "p03.csv").write_text(
        "time,glucose_mg_dl\n2025-01-01T00:00:00,120\n2025-01-01T00:05:00,125\n"
    )
    (tmp_path / "patients.csv").write_text(
        "patient_id,weight_kg,transplant_date\n"
        "p01,70,2025-01-01\np02,70,2025-01-01\np03,80,2025-01-01\n"
    )
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    out = tmp_path / "out"
    code = main(
        [
            "fit",
            str(data),
            "--patients",
            str(tmp_path / "patients.csv"),
            "--out",
            str(out),
            "--starts",
            "1",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "2 of 3 patients fitted" in text and "p03" in text
    for pid in ["p01", "p02"]:
        folder = out / pid
        band = pd.read_csv(folder / "graft_function.csv")
        assert list(band.columns) == ["study_day", "date", "estimate", "lower", "upper"]
        assert band.study_day.diff().dropna().eq(1.0).all()  # one row per day
        assert (band.lower <= band.estimate).all() and (
            band.estimate <= band.upper
        ).all()
        params = pd.read_csv(folder / "parameters.csv")
        assert list(params.columns) == ["name", "value", "unit", "lower", "upper"]
        summary = json.loads((folder / "fit_summary.json").read_text())
        for key in [
            "rmse_mg_dl",
            "mard_percent",
            "n_readings",
            "converged",
            "iterations",
            "seconds",
        ]:
            assert key in summary
        assert (folder / "fit.png").read_bytes()[:4] == b"\x89PNG"
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.patient_id) == {"p01", "p02", "p03"}
    failed = summary[summary.status == "failed"]
    assert list(failed.patient_id) == ["p03"] and "p03.csv" in failed.message.iloc[0]
    assert summary[summary.status == "fitted"].groupby("patient_id").size().eq(2).all()
    html = (out / "report.html").read_text()
    assert (
        "p01" in html
        and "p02" in html
        and "failed" in html
        and "data:image/png" in html
    )
    # inputs untouched
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    # the report can be rebuilt from the folder alone
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()


def test_report_of_a_non_fit_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.csv" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_command_with_the_adaptive_solver_agrees(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    synthetic_patient(data / "p01.csv", seed=2, blocks=((-5, 2), (60, 2)))
    (tmp_path / "patients.csv").write_text(
        "patient_id,weight_kg,transplant_date\np01,70,2025-01-01\n"
    )
    bands = {}
    for flag in ([], ["--adaptive"]):
        out = tmp_path / ("adaptive" if flag else "grid")
        args = ["fit", str(data), "--patients", str(tmp_path / "patients.csv")]
        assert main([*args, "--out", str(out), "--starts", "1", *flag]) == 0
        bands[bool(flag)] = pd.read_csv(out / "p01" / "graft_function.csv")
    grid, adaptive = bands[False], bands[True]
    assert np.allclose(
        np.log(grid.estimate.clip(1e-9)),
        np.log(adaptive.estimate.clip(1e-9)),
        atol=0.02,
    )
