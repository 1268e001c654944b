"""Reading a 90-day Dexcom Clarity export (~26,000 rows) takes at most 1 s."""

import sys
import time
from pathlib import Path

import numpy as np

import isletfit.data as data

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "data"))
from make_clarity import write_clarity


def test_clarity_90_days_reads_in_under_a_second(tmp_path):
    f = tmp_path / "clarity_90d.csv"
    n_rows = write_clarity(f, days=90, seed=0)
    assert 25_000 < n_rows < 27_000
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        p = data.read(f)
        best = min(best, time.perf_counter() - t0)
    assert best <= 1.0, f"read took {best:.2f} s"
    assert p.format == "dexcom_clarity"
    assert len(p.cgm) == 90 * 288 and p.n_days == 90
    assert len(p.boluses) == 270 and len(p.carbs) == 270 and len(p.long_acting) == 90
    assert np.all(np.diff(p.cgm.time_min) > 4.9)
    assert p.counts["skipped_rows"] == 0
