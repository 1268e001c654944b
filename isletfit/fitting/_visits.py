"""Per-visit results of a fit: graft function, insulin need covered, metrics, endpoints."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.stats import norm

from ..data import PatientData
from ..metrics import cgm_metrics, endpoints_for_visit, flatten_endpoints
from ..model import MIN_PER_DAY, Params, basal_for_fasting_glucose, steady_state_glucose
from ._fit import FitResult

__all__ = [
    "graft_for_independence",
    "insulin_need_covered",
    "visit_blocks",
    "visit_summary",
]


def graft_for_independence(params: Params, *, target: float = 110.0) -> float:
    """Smallest B that holds fasting glucose at ``target`` without insulin [-].

    Fasting steady-state glucose falls monotonically with B, so bisection on [0, 8]
    finds it; 8 (the bracket's top) means "not reachable".
    """
    return float(_graft_for_independence(params, jnp.asarray(target, float)))


@eqx.filter_jit
def _graft_for_independence(params: Params, target):
    def above(b):
        return steady_state_glucose(params, b=b, basal=0.0) > target

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        up = above(mid)
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 50, body, (jnp.asarray(0.0), jnp.asarray(8.0)))
    return 0.5 * (lo + hi)


def insulin_need_covered(params: Params, b, *, target: float = 110.0) -> np.ndarray:
    """Fraction of the basal insulin need that a graft of capacity ``b`` covers [-].

    ``1 - need(b)/need(0)`` where need is the basal rate holding fasting glucose at
    ``target`` (`isletfit.model.basal_for_fasting_glucose`); 1 = insulin independent.
    """
    b = jnp.atleast_1d(jnp.asarray(b, float))
    return np.asarray(_need_covered(params, b, jnp.asarray(target, float)))


@eqx.filter_jit
def _need_covered(params: Params, b, target):
    need = jax.vmap(lambda x: basal_for_fasting_glucose(params, b=x, target=target))
    need0 = basal_for_fasting_glucose(params, b=0.0, target=target)
    return 1.0 - need(b) / need0


def visit_blocks(day_index: np.ndarray, *, gap_days: int = 3) -> list[np.ndarray]:
    """Group fitted days into visit blocks (runs separated by more than ``gap_days``)."""
    days = np.asarray(day_index)
    if days.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(days) > gap_days) + 1
    return np.split(days, breaks)


def _insulin_per_day(patient: PatientData, t0: float, t1: float) -> float:
    """Recorded exogenous insulin in [t0, t1) averaged per day [U/day]."""
    b = patient.boluses
    bolus = float(np.sum(b.units[(b.time_min >= t0) & (b.time_min < t1)]))
    la = patient.long_acting
    long_acting = float(np.sum(la.units[(la.time_min >= t0) & (la.time_min < t1)]))
    seg_t = np.asarray(patient.basal.time_min, float)
    seg_r = np.nan_to_num(np.asarray(patient.basal.rate_u_per_h, float))
    ends = np.append(seg_t[1:], np.inf)
    overlap = np.clip(np.minimum(ends, t1) - np.maximum(seg_t, t0), 0.0, None)
    basal = float(np.sum(overlap / 60.0 * seg_r))
    return (bolus + long_acting + basal) / ((t1 - t0) / MIN_PER_DAY)


def visit_summary(
    result: FitResult,
    patient: PatientData,
    *,
    patient_row=None,
    labs: pd.DataFrame | None = None,
    target_mg_dl: float = 110.0,
    gap_days: int = 3,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per visit block: B with its interval, what it means, and the metrics.

    Args:
        result: The patient's fit.
        patient: The same patient's data.
        patient_row: The patient's row of ``patients.csv`` (for endpoints), or None.
        labs: Labs table (``read_labs``), or None.
        target_mg_dl: Fasting glucose the insulin need is defined by [mg/dL].
        gap_days: Days without CGM that separate two visits [day].
        level: Coverage of the intervals.

    Returns:
        Columns ``patient_id, visit, study_day_start, study_day_end, date, n_days,
        graft_b, graft_b_lower, graft_b_upper, need_covered, need_covered_lower,
        need_covered_upper, p_insulin_independent, insulin_u_per_day``, the CGM metrics
        of the block, and (with ``patient_row``) the transplant endpoints
        (``igls_2_category``, ...).
    """
    info = result.info
    z = norm.ppf(0.5 + level / 2.0)
    b_crit = graft_for_independence(result.params, target=target_mg_dl)
    blocks = visit_blocks(info.day_index, gap_days=gap_days)
    ref = pd.Timestamp(info.reference_time)
    spans, mids, metrics = [], [], []
    for days in blocks:
        t0, t1 = days[0] * MIN_PER_DAY, (days[-1] + 1) * MIN_PER_DAY
        sel = (patient.cgm.time_min >= t0) & (patient.cgm.time_min < t1)
        spans.append((t0, t1))
        mids.append(0.5 * (days[0] + days[-1] + 1) - info.study_day_offset)
        metrics.append(
            cgm_metrics(
                patient.cgm.glucose_mg_dl[sel], time_min=patient.cgm.time_min[sel]
            )
        )
    pre = [info.transplant_day is not None and m < 0 for m in mids]
    # baseline CGM: the last block before the infusion, else the first block
    baseline = (
        metrics[max(k for k, p in enumerate(pre) if p)] if any(pre) else metrics[0]
    )
    rows = []
    for k, days in enumerate(blocks):
        (t0, t1), mid = spans[k], mids[k]
        mean, sd = (float(x[0]) for x in result.log_b_at(np.array([mid])))
        if pre[k]:
            b, lo, hi, p_ind = 0.0, 0.0, 0.0, 0.0
        else:
            b, lo, hi = np.exp(mean), np.exp(mean - z * sd), np.exp(mean + z * sd)
            p_ind = float(norm.cdf((mean - np.log(b_crit)) / max(sd, 1e-12)))
        cov = insulin_need_covered(result.params, [b, lo, hi], target=target_mg_dl)
        row = {
            "patient_id": result.patient_id,
            "visit": k,
            "study_day_start": float(days[0] - info.study_day_offset),
            "study_day_end": float(days[-1] - info.study_day_offset),
            "date": (ref + pd.Timedelta(days=float(days[0]))).date(),
            "n_days": int(days.size),
            "graft_b": float(b),
            "graft_b_lower": float(lo),
            "graft_b_upper": float(hi),
            "need_covered": float(cov[0]),
            "need_covered_lower": float(cov[1]),
            "need_covered_upper": float(cov[2]),
            "p_insulin_independent": p_ind,
            "insulin_u_per_day": _insulin_per_day(patient, t0, t1),
        }
        row.update({key: v for key, v in metrics[k].items() if key != "sufficient"})
        if patient_row is not None:
            ends = endpoints_for_visit(
                patient_row,
                labs,
                visit_date=ref + pd.Timedelta(days=float(days[-1])),
                cgm_metrics=metrics[k],
                baseline_cgm_metrics=baseline,
            )
            row.update(flatten_endpoints(ends))
        rows.append(row)
    return pd.DataFrame(rows)
