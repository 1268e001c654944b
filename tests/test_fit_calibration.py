"""Calibration of the graft band on 50 virtual transplant recipients (slow)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "calibration_check.py"


def _example():
    spec = importlib.util.spec_from_file_location("calibration_check", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_graft_band_covers_true_b_on_85_to_99_percent_of_visit_days():
    table = _example().main(n_patients=50, seed=7)
    assert table["patient_id"].nunique() == 50
    assert table["converged"].mean() >= 0.95
    coverage = table["covered"].mean()
    assert 0.85 <= coverage <= 0.99, coverage
    # and the estimates are informative: median error of B well under a factor 1.5
    on = table["true_b"] > 0.01
    err = np.abs(np.log(table.loc[on, "estimate"] / table.loc[on, "true_b"]))
    assert np.median(err) < np.log(1.5)
