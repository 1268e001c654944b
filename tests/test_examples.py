"""Every example runs with --quick (as a user would run it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
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
