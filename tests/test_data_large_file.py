"""A 90-day Dexcom Clarity export (~26,000 rows) reads completely and correctly.

Its reading speed is measured in benchmarks/data.py, not asserted here.
"""

import sys
from pathlib import Path

import numpy as np

import isletfit.data as data

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "data"))
from make_clarity import write_clarity


def test_clarity_90_days_reads_completely(tmp_path):
    f = tmp_path / "clarity_90d.csv"
    n_rows = write_clarity(f, days=90, seed=0)
    assert 25_000 < n_rows < 27_000
    p = data.read(f)
    assert p.format == "dexcom_clarity"
    assert len(p.cgm) == 90 * 288 and p.n_days == 90
    assert len(p.boluses) == 270 and len(p.carbs) == 270 and len(p.long_acting) == 90
    assert np.all(np.diff(p.cgm.time_min) > 4.9)
    assert p.counts["skipped_rows"] == 0
