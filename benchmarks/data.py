"""Data speed: reading a 90-day Dexcom Clarity export, and all CGM metrics for a cohort.

Figures: seconds to read a synthetic 90-day Clarity CSV (~26,000 rows, the real layout,
see tests/fixtures/data/make_clarity.py) into a `PatientData`, and seconds for every
consensus metric of 1,000 patients x 14 days of 5-minute readings (20 % missing) with
the vectorised numpy path (`cgm_metrics_batch`, with and without MAGE) and the jitted,
vmapped JAX path (`cgm_metrics_jax`). As a baseline in the same run: the same metrics
computed patient by patient with `cgm_metrics` in a Python loop (on 100 patients,
scaled to 1,000), and the ratio. Targets on the 2-core CPU: read <= 1 s; metrics <= 1 s.

Run: ``python benchmarks/data.py [--quick] [--json]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common import machine, parse_args, report, timed

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "data")
)
from make_clarity import write_clarity

from isletfit.data import read
from isletfit.metrics import cgm_metrics, cgm_metrics_batch, cgm_metrics_jax


def cohort(n: int, days: int, seed: int = 0):
    """Smooth random glucose traces with 20 % of readings missing."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * 288) * 5.0
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    g = (
        140
        + 50 * np.sin(2 * np.pi * t / 1440 + phase)
        + 20 * rng.standard_normal((n, t.size))
    )
    g = np.clip(g, 40, 400)
    mask = rng.uniform(size=g.shape) > 0.2
    return g, mask


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    figures: dict = {f"machine_{k}": v for k, v in machine().items()}
    days = 30 if args.quick else 90
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clarity.csv"
        rows = write_clarity(path, days=days, seed=0)
        _, best, patient = timed(read, path, repeats=3)
    figures[f"clarity_{days}d_rows"] = rows
    figures[f"clarity_{days}d_read_s"] = best
    figures["clarity_rows_per_s"] = rows / best
    assert len(patient.cgm) == days * 288

    n = 200 if args.quick else 1000
    g, m = cohort(n, 14)
    _, best, _ = timed(cgm_metrics_batch, g, m, repeats=3)
    figures[f"metrics_batch_{n}x14d_s"] = best
    _, best_nomage, _ = timed(
        lambda g, m: cgm_metrics_batch(g, m, include_mage=False), g, m, repeats=3
    )
    figures[f"metrics_batch_no_mage_{n}x14d_s"] = best_nomage

    jax.config.update("jax_enable_x64", True)
    fn = jax.jit(jax.vmap(cgm_metrics_jax))
    first, best_jax, _ = timed(fn, jnp.asarray(g), jnp.asarray(m), repeats=3)
    figures[f"metrics_jax_{n}x14d_s"] = best_jax
    figures["metrics_jax_compile_s"] = max(first - best_jax, 0.0)

    k = 20 if args.quick else 100
    start = time.perf_counter()
    for i in range(k):
        cgm_metrics(g[i], m[i])
    loop = (time.perf_counter() - start) * n / k
    figures[f"baseline_loop_{n}x14d_s"] = loop
    figures["batch_over_loop_speedup_ratio"] = (
        loop / figures[f"metrics_batch_{n}x14d_s"]
    )
    report(figures, as_json=args.json, title="isletfit data reading and CGM metrics")


if __name__ == "__main__":
    main()
