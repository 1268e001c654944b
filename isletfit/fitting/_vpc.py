r"""Visual predictive check of a population fit: observed vs simulated time in range.

For a VPC the fitted population model is asked to reproduce the *observed design*:
every fitted patient's recorded windows (the same CGM reading times, recorded meals,
boluses and basal insulin, body weight and infusion day) are simulated many times, each
time for a new virtual patient drawn from the fitted population, and the CGM metrics of
the simulated readings are compared with the observed ones, visit by visit.

One *draw* simulates every patient once:

- physiology θ ~ N(μ, diag ω²) (log scale; the fitted typical values and between-patient
  SDs);
- graft function log B(d) = m(d) + s(d)·z with z ~ N(0, 1) per patient (the patient
  keeps its quantile across visits), m and s the mean and between-patient SD of the
  patients' log B at each knot's study day; s² = var_i(log B̂_i) + mean_i Var(log B_i)
  (the EBEs' spread plus their Laplace variances, as the M-step estimates ω², so the
  shrinkage of the EBEs does not narrow it);
- within-patient variability as in the fit's priors: each window's initial-glucose
  factor and daily factors on insulin sensitivity, meal and insulin absorption, and
  each sensor session's gain and offset, drawn from their prior distributions;
- the sensor: calibration (gain × interstitial glucose + offset, the fit's sensor
  model) plus the CGM error with each patient's estimated SD and AR(1) coefficient.

Per patient and visit the percent of readings in range (70–180 mg/dL) and below
70 mg/dL are computed over that visit's readings at the recorded reading times
(Battelino 2019 bounds, as `isletfit.metrics.time_in_ranges`; observed 'Low'/'High'
readings count at their device limit); per visit, the 5th, 50th and 95th percentiles
across patients of the observed values are compared with the prediction interval of
the same percentiles over the draws (Bergstrand 2011). A percentile outside its
interval flags a misspecified population (typical values, variability, or the graft
trajectory).

All draws run in one jit-compiled program (draws mapped in batches with
`jax.lax.map`, patients and windows vmapped), with the window simulation of the fit
(`Objective.simulate_window`).

References:
    - Holford N. The visual predictive check — superiority to standard diagnostic
      (Rorschach) plots. PAGE 14, abstract 738, 2005.
    - Bergstrand M, Hooker AC, Wallin JE, Karlsson MO. Prediction-corrected visual
      predictive checks for diagnosing nonlinear mixed-effects models. AAPS J
      13:143–151, 2011.
    - Battelino T, et al. Clinical targets for continuous glucose monitoring data
      interpretation. Diabetes Care 42:1593–1603, 2019.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._custom_types import Array, PRNGKeyArray
from .._errors import DataWarning, InputError
from ..data import PatientData
from ._config import FitModel, LatentMeals, Prior
from ._fit import _pad_events
from ._population import PopulationResult
from ._problem import Objective, PatientWindows, prepare_windows
from ._stacking import stack_windows
from ._visits import visit_blocks

__all__ = ["visual_predictive_check"]

#: The metrics of the check: column name -> which readings count (glucose [mg/dL];
#: the bounds of `isletfit.metrics.time_in_ranges`, numpy or jax arrays).
METRICS = {
    "tir_70_180_percent": lambda g: (g >= 70.0) & (g <= 180.0),
    "tbr_below_70_percent": lambda g: g < 70.0,
}


def graft_distribution(result: PopulationResult) -> pd.DataFrame:
    """Between-patient distribution of log B at each knot's study day.

    Args:
        result: A population fit.

    Returns:
        Columns ``study_day, n_patients, mean_log_b, sd_log_b``: the mean of the
        patients' log B and its SD, sd² = var_i(log B̂_i) + mean_i Var(log B_i)
        (EBE spread plus Laplace variance; see the module docstring).
    """
    est: dict[float, list[float]] = {}
    var: dict[float, list[float]] = {}
    for res in result.results.values():
        p = res.theta.size
        knot_var = np.diag(res.cov)[p:]
        for d, lb, v in zip(res.knot_days, res.log_b, knot_var, strict=True):
            day = round(float(d), 6)
            est.setdefault(day, []).append(float(lb))
            var.setdefault(day, []).append(max(float(v), 0.0))
    rows = []
    for d in sorted(est):
        e, v = np.asarray(est[d]), np.asarray(var[d])
        rows.append(
            {
                "study_day": d,
                "n_patients": int(e.size),
                "mean_log_b": float(e.mean()),
                "sd_log_b": float(np.sqrt(e.var() + v.mean())),
            }
        )
    return pd.DataFrame(rows)


def _group_visits(starts: np.ndarray, visit_days, tolerance_days: float):
    """Population visit of each patient-visit start day -> (group index, group days)."""
    if visit_days is not None:
        nominal = np.asarray(sorted(visit_days), float)
        group = np.argmin(np.abs(starts[:, None] - nominal[None, :]), axis=1)
        used = np.unique(group)
        relabel = {g: k for k, g in enumerate(used)}
        return np.array([relabel[g] for g in group]), nominal[used]
    order = np.argsort(starts, kind="stable")
    jumps = np.concatenate([[0], np.cumsum(np.diff(starts[order]) > tolerance_days)])
    group = np.empty(starts.size, int)
    group[order] = jumps
    k = int(jumps[-1])
    days = np.array([np.median(starts[group == g]) for g in range(k + 1)])
    return group, days


def _counts(xp, glucose, use):
    """Readings per metric and in total (last axis: metrics, then total)."""
    out = [xp.sum(use & inside(glucose), axis=-1) for inside in METRICS.values()]
    out.append(xp.sum(use, axis=-1))
    return xp.stack(out, axis=-1)


def _ar1_noise(key, sigma, phi, n: int, dtype):
    """Stationary AR(1) CGM error of ``n`` consecutive readings [mg/dL]."""
    z = jax.random.normal(key, (n,), dtype)
    innov = sigma * jnp.sqrt(1.0 - phi**2)

    def step(e, zt):
        e = phi * e + innov * zt
        return e, e

    e0 = sigma * z[0]
    _, rest = jax.lax.scan(step, e0, z[1:])
    return jnp.concatenate([e0[None], rest])


class _Design(eqx.Module):
    """What every draw simulates: the fitted patients' windows and their distributions.

    Attributes:
        windows: The fitted patients' windows, stacked ``[N, ...]``.
        mu: Each patient's typical θ (μ, moved by its covariates) ``[N, p]`` [log].
        omega: Between-patient SDs ω of θ [log].
        graft_mean: Population mean of log B at each window's study day ``[N, W]``.
        graft_sd: Between-patient SD of log B there ``[N, W]``.
        sigma: Each patient's CGM error SD [mg/dL].
        phi: Each patient's CGM error AR(1) coefficient [-].
    """

    windows: PatientWindows
    mu: Array
    omega: Array
    graft_mean: Array
    graft_sd: Array
    sigma: Array
    phi: Array


def _draw(design: _Design, model, prior, key, residual_error: bool):
    """One draw of the population on the fitted design (see the module docstring).

    Returns:
        ``(readings [N, W, T], good [N, W])``: simulated CGM readings [mg/dL] and
        whether each window's solve succeeded (True for padding windows).
    """
    windows = design.windows
    n_patients, n_windows, n_times = windows.ts.shape
    dtype = windows.ts.dtype

    def patient(win, mu, key, gm, gs, s, f):
        obj = Objective(windows=win, model=model, prior=prior)
        k_theta, k_graft, k_loc, k_cal, k_noise = jax.random.split(key, 5)
        theta = mu + design.omega * jax.random.normal(k_theta, (obj.n_params,), dtype)
        log_b = gm + gs * jax.random.normal(k_graft, (), dtype)
        local_sd = jnp.asarray(
            [prior.initial_glucose_log_sd] + [sd for _, sd in obj.daily_effects],
            dtype,
        )
        loc = local_sd[None, :] * jax.random.normal(
            k_loc, (n_windows, local_sd.size), dtype
        )
        cal = jax.random.normal(k_cal, (obj.n_sessions, 2), dtype)

        def window(w, lb, lw, kw):
            u = jnp.concatenate([theta, lb[None]])
            cgm, ok = obj.simulate_window(u, lw, w)
            reading = obj.calibrate(cgm, win.session[w] @ cal)
            if residual_error:
                reading = reading + _ar1_noise(kw, s, f, n_times, dtype)
            return reading, ok | ~win.valid[w]

        return jax.vmap(window)(
            jnp.arange(n_windows), log_b, loc, jax.random.split(k_noise, n_windows)
        )

    return jax.vmap(patient)(
        windows,
        design.mu,
        jax.random.split(key, n_patients),
        design.graft_mean,
        design.graft_sd,
        design.sigma,
        design.phi,
    )


@eqx.filter_jit
def _simulate_counts(
    design: _Design,
    model,
    prior,
    onehot,
    keys,
    batch_size: int,
    residual_error: bool,
):
    """Per draw, patient and visit: readings in each band and in total ``[D, N, V, M+1]``.

    A visit with a failed solve gets no readings (NaN percentages). Also returns
    whether every window's solve succeeded per draw and patient ``[D, N]``.
    """
    win = design.windows
    dtype = win.ts.dtype
    use = win.mask & win.valid[:, :, None]

    def one_draw(key):
        readings, good = _draw(design, model, prior, key, residual_error)
        counts = _counts(jnp, readings, use).astype(dtype)  # [N, W, M+1]
        counts = jnp.where(good[:, :, None], counts, 0.0)
        per_visit = jnp.einsum("nwm,nwv->nvm", counts, onehot)
        failed = jnp.einsum("nw,nwv->nv", (~good).astype(dtype), onehot)
        return jnp.where(failed[:, :, None] > 0, 0.0, per_visit), jnp.all(good, 1)

    return jax.lax.map(one_draw, keys, batch_size=batch_size)


def _design(
    result: PopulationResult, patients: Sequence[PatientData], model, prior
) -> tuple[_Design, list]:
    """The fitted patients' windows (as in the fit) and the population's distributions.

    Returns:
        ``(design, fits)``: the `_Design` and the fitted patients' `FitResult` in its
        patient order.
    """
    if not result.results:
        raise InputError("the population fit has no fitted patient", field="result")
    by_id = {p.patient_id: p for p in patients}
    missing = [pid for pid in result.results if pid not in by_id]
    if missing:
        raise InputError(
            f"no record for the fitted patient(s) {', '.join(missing)}",
            field="patients",
            expected="the records the population was fitted to",
        )

    # the fit's windows of every fitted patient, stacked (padding: valid False)
    fits = list(result.results.values())
    prepared = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # already shown by the fit
        for res in fits:
            info = res.info
            windows, again = prepare_windows(
                by_id[res.patient_id],
                model=model,
                weight_kg=info.weight_kg,
                transplant_day=info.transplant_day,
                window_bucket=1,
                knot_bucket=1,
            )
            if not np.array_equal(again.day_index, info.day_index):
                raise InputError(
                    "the record does not give the fitted days",
                    field=f"patients[{res.patient_id!r}]",
                    expected="the record the population was fitted to",
                )
            prepared.append(
                eqx.tree_at(lambda w: w.inputs, windows, _pad_events(windows.inputs))
            )
    win = stack_windows(prepared, model=model, prior=prior).windows
    dtype = win.ts.dtype

    # graft distribution at each window's study day
    dist = graft_distribution(result)
    centres = result.centres()
    index = {pid: i for i, pid in enumerate(result.patient_id)}
    study_day = np.asarray(win.study_day)
    design = _Design(
        windows=win,
        mu=jnp.asarray(centres[[index[r.patient_id] for r in fits]], dtype),
        omega=jnp.asarray(result.omega, dtype),
        graft_mean=jnp.asarray(
            np.interp(study_day, dist.study_day, dist.mean_log_b), dtype
        ),
        graft_sd=jnp.asarray(
            np.interp(study_day, dist.study_day, dist.sd_log_b), dtype
        ),
        sigma=jnp.asarray([r.sigma_mg_dl for r in fits], dtype),
        phi=jnp.asarray([r.ar1 for r in fits], dtype),
    )
    return design, fits


def _percentages(counts: np.ndarray) -> np.ndarray:
    """Percent of readings per band from counts ``[..., M+1]`` (NaN without readings)."""
    total = counts[..., -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * counts[..., :-1] / total, np.nan)


def visual_predictive_check(
    result: PopulationResult,
    patients: Sequence[PatientData],
    *,
    n_draws: int,
    key: PRNGKeyArray,
    model: FitModel | None = None,
    prior: Prior | None = None,
    level: float = 0.90,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    visit_days: Sequence[float] | None = None,
    gap_days: int = 3,
    tolerance_days: float = 14.0,
    residual_error: bool = True,
    batch_size: int | None = None,
) -> pd.DataFrame:
    r"""Visual predictive check of time in range and below range, visit by visit.

    Simulates every fitted patient's recorded windows ``n_draws`` times with virtual
    patients drawn from the fitted population (see the module docstring), computes per
    patient and visit the percent of readings in 70–180 mg/dL and below 70 mg/dL, and
    compares the observed percentiles across patients with the prediction intervals of
    the simulated ones.

    Visits: each patient's fitted days are grouped into visit blocks
    (`visit_blocks` with ``gap_days``); blocks of different patients form one
    population visit when their first study days are within ``tolerance_days`` of the
    next (or, with ``visit_days``, by the nearest nominal visit day).

    Args:
        result: The population fit (`fit_population`).
        patients: The records it was fitted to (matched by patient id; the fitted
            patients must all be there).
        n_draws: Simulated replicates of the whole population.
        key: PRNG key (one sub-key per draw, so a draw does not depend on
            ``batch_size``).
        model: The fit's model configuration; default ``result.model`` (or
            ``FitModel()``).
        prior: The fit's priors; default ``result.prior`` (or ``Prior()``).
        level: Coverage of the prediction intervals (0.90: the 5th–95th percentiles of
            the draws).
        quantiles: Percentiles across patients that are compared (fractions).
        visit_days: Nominal visit study days [day], or None to group by proximity.
        gap_days: Days without CGM that separate two visits of a patient [day].
        tolerance_days: Largest gap between the first study days of one population
            visit's blocks [day].
        residual_error: Add the CGM error (each patient's SD and AR(1) coefficient)
            to the simulated readings.
        batch_size: Draws simulated at once (memory); default: about 4096 windows at
            a time.

    Returns:
        One row per visit, metric and percentile: ``visit, study_day`` (median first
        study day of the visit's blocks), ``n_patients, metric``
        (``tir_70_180_percent`` or ``tbr_below_70_percent``), ``quantile, observed,
        sim_lower, sim_median, sim_upper`` (the prediction interval of that percentile
        and its median over the draws) [%], ``inside`` (observed within the
        interval), ``level, n_draws``.

    Raises:
        InputError: No fitted patient, a fitted patient missing from ``patients``,
            latent meals (their carbohydrate is not recorded, so the design cannot be
            replayed), or a bad argument.

    References:
        Bergstrand M, et al. AAPS J 13:143–151, 2011.
    """
    if model is None:
        model = FitModel() if result.model is None else result.model
    if prior is None:
        prior = Prior() if result.prior is None else result.prior
    if n_draws < 2:
        raise InputError(f"{n_draws} draws", field="n_draws", expected="2 or more")
    if not 0.0 < level < 1.0:
        raise InputError(f"{level}", field="level", expected="a fraction in (0, 1)")
    quantiles = tuple(float(q) for q in quantiles)
    if not quantiles or not all(0.0 <= q <= 1.0 for q in quantiles):
        raise InputError(
            f"{quantiles}", field="quantiles", expected="fractions in [0, 1]"
        )
    if batch_size is not None and batch_size < 1:
        raise InputError(f"{batch_size}", field="batch_size", expected="1 or more")
    if isinstance(model.meals, LatentMeals):
        raise InputError(
            "a visual predictive check replays the recorded meals; this fit estimated "
            "latent meals",
            field="model.meals",
            expected="a fit with logged meals (LoggedMeals)",
        )
    if tuple(prior.estimated) != tuple(result.estimated):
        raise InputError(
            f"the prior estimates {prior.estimated}, the fit {result.estimated}",
            field="prior",
            expected="the fit's prior",
        )
    design, fits = _design(result, patients, model, prior)
    win = design.windows
    n, n_windows = win.ts.shape[:2]

    # population visits
    blocks = []  # (patient, first study day, windows)
    for i, res in enumerate(fits):
        info = res.info
        for days in visit_blocks(info.day_index, gap_days=gap_days):
            idx = np.flatnonzero(np.isin(info.day_index, days))
            blocks.append((i, float(days[0] - info.study_day_offset), idx))
    group, group_days = _group_visits(
        np.array([b[1] for b in blocks]), visit_days, tolerance_days
    )
    n_visits = group_days.size
    onehot = np.zeros((n, n_windows, n_visits))
    for (i, _, idx), g in zip(blocks, group, strict=True):
        onehot[i, idx, g] = 1.0

    if batch_size is None:
        batch_size = max(1, min(n_draws, 4096 // max(n * n_windows, 1)))
    counts, good = _simulate_counts(
        design,
        model,
        prior,
        jnp.asarray(onehot, win.ts.dtype),
        jax.random.split(key, n_draws),
        batch_size,
        residual_error,
    )
    sim = _percentages(np.asarray(counts))  # [D, N, V, M]
    good = np.asarray(good)
    if not good.all():
        warnings.warn(
            f"visual_predictive_check: the ODE solve failed for {int((~good).sum())} "
            f"of {good.size} simulated patients; they are left out",
            RuntimeWarning,
            stacklevel=2,
        )

    use = np.asarray(win.mask & win.valid[:, :, None])
    obs_counts = _counts(np, np.asarray(win.obs), use).astype(float)
    obs = _percentages(np.einsum("nwm,nwv->nvm", obs_counts, onehot))  # [N, V, M]

    tail = 0.5 * (1.0 - level)
    rows = []
    for v in range(n_visits):
        for m, metric in enumerate(METRICS):
            seen = np.isfinite(obs[:, v, m])
            if not seen.any():
                continue
            observed = np.quantile(obs[seen, v, m], quantiles)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN draws
                per_draw = np.nanquantile(sim[:, seen, v, m], quantiles, axis=1)
                lower, median, upper = np.nanquantile(
                    per_draw, [tail, 0.5, 1.0 - tail], axis=1
                )
            for k, q in enumerate(quantiles):
                rows.append(
                    {
                        "visit": v,
                        "study_day": float(group_days[v]),
                        "n_patients": int(seen.sum()),
                        "metric": metric,
                        "quantile": q,
                        "observed": float(observed[k]),
                        "sim_lower": float(lower[k]),
                        "sim_median": float(median[k]),
                        "sim_upper": float(upper[k]),
                        "inside": bool(lower[k] <= observed[k] <= upper[k]),
                        "level": level,
                        "n_draws": n_draws,
                    }
                )
    return pd.DataFrame(rows)
