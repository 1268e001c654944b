"""The per-patient figure of a fit: CGM vs model, graft function with its band, insulin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_path

__all__ = ["plot_fit"]


def plot_fit(
    result,
    visits: pd.DataFrame,
    path: str | Path,
    *,
    days_per_visit: int = 2,
    truth=None,
) -> Path:
    """Save the fit figure of one patient (atomically).

    Three panels: CGM readings and the model for the first ``days_per_visit`` days of
    every visit; graft function B with its 95 % band on every day, visits shaded (and
    the true B when ``truth`` — a callable of study days — is given, for synthetic
    patients); recorded insulin per day at each visit.

    Args:
        result: A `isletfit.fitting.FitResult`.
        visits: Its `isletfit.fitting.visit_summary` table.
        path: Output image file (format from the suffix, e.g. ``fit.png``).
        days_per_visit: Days of CGM shown per visit.
        truth: Optional true B(study day), for synthetic patients.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    info = result.info
    fig, axes = plt.subplots(3, 1, figsize=(10, 10), constrained_layout=True)

    # --- CGM vs model, a few days of each visit, side by side
    ax = axes[0]
    x0, ticks, labels = 0.0, [], []
    for _, v in visits.iterrows():
        start = v["study_day_start"] + info.study_day_offset
        idx = np.flatnonzero(
            (info.day_index >= start) & (info.day_index < start + days_per_visit)
        )
        for w in idx:
            hours = (result.ts[w] - result.ts[w, 0]) / 60.0 + x0
            obs = np.where(result.mask[w], result.observed[w], np.nan)
            ax.plot(hours, obs, ".", ms=2, color="0.45")
            ax.plot(hours, result.predicted[w], "-", lw=1.2, color="tab:blue")
            x0 += 24.0
        ticks.append(x0 - 12.0 * max(len(idx), 1))
        labels.append(f"day {v['study_day_start']:.0f}")
        ax.axvline(x0, color="0.85", lw=0.8)
    ax.axhspan(70, 180, color="tab:green", alpha=0.07)
    ax.set_xticks(ticks, labels)
    ax.set(
        ylabel="glucose [mg/dL]",
        title="CGM (dots) and model (line), first days of each visit",
    )

    # --- graft function with its band
    ax = axes[1]
    band = result.graft_band()
    ax.fill_between(
        band.study_day, band.lower, band.upper, color="tab:purple", alpha=0.25, lw=0
    )
    ax.plot(
        band.study_day, band.estimate, color="tab:purple", label="estimate, 95 % band"
    )
    if truth is not None:
        ax.plot(
            band.study_day,
            truth(band.study_day.to_numpy() + 0.5),
            "k--",
            lw=1,
            label="truth",
        )
    for _, v in visits.iterrows():
        ax.axvspan(
            v["study_day_start"], v["study_day_end"] + 1, color="0.8", alpha=0.5, lw=0
        )
    ax.set(
        xlabel="study day",
        ylabel="B [× healthy adult]",
        title="Graft functional capacity (shaded: CGM visits)",
    )
    ax.set_ylim(bottom=0.0)
    ax.legend(loc="upper left", fontsize=8)

    # --- insulin
    ax = axes[2]
    ax.plot(visits.study_day_start, visits.insulin_u_per_day, "o-", color="tab:orange")
    ax.set(
        xlabel="study day",
        ylabel="insulin [U/day]",
        title="Recorded insulin at each visit",
    )
    ax.set_ylim(bottom=0.0)
    fig.suptitle(f"{result.patient_id}: fit RMSE {result.rmse_mg_dl:.1f} mg/dL")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
