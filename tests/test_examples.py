"""Every example runs with --quick (as a user would run it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
#: Examples whose quick run belongs to the slow suite (about 50 s each on 2 cores;
#: what they compute is tested by tests/test_fit_calibration.py, a slow test, and
#: tests/test_identifiability.py).
SLOW = {"calibration_check.py", "identifiability.py"}


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW else p
        for p in EXAMPLES
    ],
    ids=[p.name for p in EXAMPLES],
)
def test_example_runs_quick(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={
            "MPLBACKEND": "Agg",
            "PATH": "",
            "HOME": str(tmp_path),
            # the run's compilation cache (tests/conftest.py)
            "JAX_COMPILATION_CACHE_DIR": os.environ["JAX_COMPILATION_CACHE_DIR"],
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()
