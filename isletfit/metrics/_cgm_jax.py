"""Consensus CGM metrics as pure ``jax.numpy`` functions, for fitting and simulation.

Each function takes one patient's ``glucose`` ``[times]`` [mg/dL] and ``mask``
``[times]`` (``True`` = observed) on a **regular grid** and returns 0-d arrays, so it
works under ``jax.jit``, ``jax.grad`` (where the metric is differentiable) and
``jax.vmap`` over a leading patient axis. Definitions, bounds and sources are the same
as the numpy functions of the same name in [`isletfit.metrics`][] (which handle
irregular times, MAGE and ADRR too); tests check that both paths agree.

Masked or non-finite readings are left out. Internally they are replaced by a neutral
value (112.5 mg/dL) before any logarithm or division, and every division by a count is
guarded with the "double where" pattern, so an all-masked patient gives ``nan`` without
poisoning gradients of the other patients. The result's dtype follows ``glucose`` (an
integer array is promoted to the default float dtype); no JAX setting is changed.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Real

from .._custom_types import Array, ArrayLike, Bool, Float

__all__ = [
    "cgm_metrics_jax",
    "conga_jax",
    "cv_percent_jax",
    "data_sufficiency_jax",
    "gmi_percent_jax",
    "gri_jax",
    "hbgi_jax",
    "j_index_jax",
    "lbgi_jax",
    "mean_glucose_jax",
    "modd_jax",
    "sd_glucose_jax",
    "time_in_ranges_jax",
]

_NEUTRAL_MG_DL = 112.5

GlucoseLike = Real[ArrayLike, " times"]
MaskLike = Bool[ArrayLike, " times"]
Scalar = Float[Array, ""]


def _prep(glucose, mask):
    g = jnp.asarray(glucose)
    if not jnp.issubdtype(g.dtype, jnp.floating):
        g = g.astype(jnp.result_type(float))
    m = jnp.asarray(mask, dtype=bool) & jnp.isfinite(g)
    return jnp.where(m, g, _NEUTRAL_MG_DL), m, m.astype(g.dtype)


def _safe_div(num, den):
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), jnp.nan)


def _moments(g, w):
    n = jnp.sum(w)
    mean = _safe_div(jnp.sum(w * g), n)
    c = g - jnp.where(n > 0, mean, 0)
    var = _safe_div(jnp.sum(w * c * c), n - 1)
    sd = jnp.sqrt(jnp.where(n > 1, var, 1)) * jnp.where(n > 1, 1, jnp.nan)
    return n, mean, sd


def mean_glucose_jax(glucose: GlucoseLike, mask: MaskLike) -> Scalar:
    """Mean glucose [mg/dL] of observed readings (``nan`` if none).

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.

    Returns:
        The mean [mg/dL], a 0-d array.

    References:
        Battelino et al., Diabetes Care 2019;42:1593.
    """
    g, _, w = _prep(glucose, mask)
    return _moments(g, w)[1]


def sd_glucose_jax(glucose: GlucoseLike, mask: MaskLike) -> Scalar:
    """Sample SD of glucose [mg/dL] (``ddof = 1``; ``nan`` with < 2 readings).

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.

    Returns:
        The SD [mg/dL].

    References:
        Danne et al., Diabetes Care 2017;40:1631.
    """
    g, _, w = _prep(glucose, mask)
    return _moments(g, w)[2]


def cv_percent_jax(glucose: GlucoseLike, mask: MaskLike) -> Scalar:
    """Coefficient of variation [%] = 100 · SD / mean.

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.

    Returns:
        CV [%].

    References:
        Danne et al., Diabetes Care 2017;40:1631.
    """
    g, _, w = _prep(glucose, mask)
    _, mean, sd = _moments(g, w)
    return 100.0 * sd / mean


def gmi_percent_jax(glucose: GlucoseLike, mask: MaskLike) -> Scalar:
    """Glucose management indicator [%] = 3.31 + 0.02392 · mean [mg/dL].

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.

    Returns:
        GMI [%].

    References:
        Bergenstal RM, et al. Diabetes Care 2018;41:2275. doi:10.2337/dc18-1581
    """
    return 3.31 + 0.02392 * mean_glucose_jax(glucose, mask)


def _bands(g, w):
    n = jnp.sum(w)

    def pct(inside):
        return 100.0 * _safe_div(jnp.sum(jnp.where(inside, w, 0)), n)

    return {
        "tir_70_180_percent": pct((g >= 70.0) & (g <= 180.0)),
        "titr_70_140_percent": pct((g >= 70.0) & (g <= 140.0)),
        "tbr_below_70_percent": pct(g < 70.0),
        "tbr_below_54_percent": pct(g < 54.0),
        "tbr_54_69_percent": pct((g >= 54.0) & (g < 70.0)),
        "tar_above_180_percent": pct(g > 180.0),
        "tar_above_250_percent": pct(g > 250.0),
        "tar_181_250_percent": pct((g > 180.0) & (g <= 250.0)),
    }


def time_in_ranges_jax(glucose: GlucoseLike, mask: MaskLike) -> dict[str, Scalar]:
    r"""All consensus time-in-range bands [% of observed readings].

    Same keys and bounds as the numpy [`time_in_ranges`][]: TIR $70 \le G \le 180$,
    TITR $70 \le G \le 140$, TBR $G < 70$ and $G < 54$, level-1 $54 \le G < 70$, TAR
    $G > 180$ and $G > 250$, level-1 $180 < G \le 250$. Piecewise constant in glucose,
    so their gradient is zero.

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.

    Returns:
        A dict of the eight bands [%].

    References:
        Battelino et al., Diabetes Care 2019;42:1593.
    """
    g, _, w = _prep(glucose, mask)
    return _bands(g, w)


def _risk(g, w):
    f = 1.509 * (jnp.log(g) ** 1.084 - 5.381)
    r = 10.0 * f * f
    n = jnp.sum(w)
    lo = _safe_div(jnp.sum(jnp.where(f < 0, w * r, 0)), n)
    hi = _safe_div(jnp.sum(jnp.where(f > 0, w * r, 0)), n)
    return lo, hi


def lbgi_jax(glucose: GlucoseLike, mask: MaskLike) -> Scalar:
    r"""Low blood glucose index: mean over observed readings of $10 f^2 [f < 0]$.

    $f(G) = 1.509[(\ln G)^{1.084} - 5.381]$, as in the numpy [`lbgi`][].

    Args:
        glucose: Glucose [mg/dL], positive, shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.

    Returns:
        LBGI [dimensionless].

    References:
        Kovatchev BP, et al. Diabetes Care 1997;20:1655; 1998;21:1870.
    """
    g, _, w = _prep(glucose, mask)
    return _risk(g, w)[0]


def hbgi_jax(glucose: GlucoseLike, mask: MaskLike) -> Scalar:
    r"""High blood glucose index: mean over observed readings of $10 f^2 [f > 0]$.

    Args:
        glucose: Glucose [mg/dL], positive, shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.

    Returns:
        HBGI [dimensionless].

    References:
        Kovatchev BP, et al. Diabetes Care 1997;20:1655.
    """
    g, _, w = _prep(glucose, mask)
    return _risk(g, w)[1]


def _gri(b):
    hypo = b["tbr_below_54_percent"] + 0.8 * b["tbr_54_69_percent"]
    hyper = b["tar_above_250_percent"] + 0.5 * b["tar_181_250_percent"]
    return {
        "gri": jnp.minimum(3.0 * hypo + 1.6 * hyper, 100.0),
        "gri_hypo": hypo,
        "gri_hyper": hyper,
    }


def gri_jax(glucose: GlucoseLike, mask: MaskLike) -> dict[str, Scalar]:
    r"""Glycemia risk index and its components (see the numpy [`gri`][]).

    hypo $= \%{<}54 + 0.8\,\%[54, 70)$; hyper $= \%{>}250 + 0.5\,\%(180, 250]$;
    GRI $= \min(3\,\text{hypo} + 1.6\,\text{hyper}, 100)$.

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.

    Returns:
        ``{"gri", "gri_hypo", "gri_hyper"}`` [0-100].

    References:
        Klonoff DC, et al. J Diabetes Sci Technol 2023;17:1226.
        doi:10.1177/19322968221085273
    """
    g, _, w = _prep(glucose, mask)
    return _gri(_bands(g, w))


def j_index_jax(glucose: GlucoseLike, mask: MaskLike) -> Scalar:
    """J-index = 0.001 · (mean + SD)² with glucose in mg/dL.

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.

    Returns:
        J-index.

    References:
        Wójcicki JM. Horm Metab Res 1995;27:41. doi:10.1055/s-2007-979906
    """
    g, _, w = _prep(glucose, mask)
    _, mean, sd = _moments(g, w)
    return 0.001 * (mean + sd) ** 2


def data_sufficiency_jax(
    glucose: GlucoseLike, mask: MaskLike, *, step_min: float = 5.0
) -> dict[str, Array]:
    """Percent of the grid observed, the period length, and the 14-day/70 % rule.

    The period is the whole grid: ``len(glucose) · step_min`` minutes; ``percent_data``
    = 100 × observed / ``len(glucose)``; ``sufficient`` = ``percent_data >= 70`` and
    ``days >= 14``.

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.
        step_min: Grid spacing [min] (static).

    Returns:
        ``{"percent_data": [%], "days": [d], "sufficient": bool}`` as 0-d arrays.

    References:
        Battelino et al., Diabetes Care 2019;42:1593.
    """
    g, _, w = _prep(glucose, mask)
    size = g.shape[-1]
    percent = 100.0 * _safe_div(jnp.sum(w), jnp.asarray(size, dtype=g.dtype))
    percent = jnp.where(size > 0, percent, jnp.zeros_like(percent))
    days = size * float(step_min) / 1440.0
    return {
        "percent_data": percent,
        "days": jnp.asarray(days, dtype=g.dtype),
        "sufficient": (percent >= 70.0) & (days >= 14.0),
    }


def _lagged(g, m, lag: int):
    if lag <= 0 or lag >= g.shape[-1]:
        return jnp.zeros((0,), g.dtype), jnp.zeros((0,), g.dtype)
    d = g[lag:] - g[:-lag]
    ok = (m[lag:] & m[:-lag]).astype(g.dtype)
    return d, ok


def _lag_steps(minutes: float, step_min: float) -> int:
    return round(minutes / float(step_min))


def modd_jax(glucose: GlucoseLike, mask: MaskLike, *, step_min: float = 5.0) -> Scalar:
    """Mean of daily differences [mg/dL]: mean |G(t) − G(t − 24 h)| over observed pairs.

    On a regular grid the lag is ``round(1440 / step_min)`` slots.

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.
        step_min: Grid spacing [min] (static).

    Returns:
        MODD [mg/dL] (``nan`` without pairs).

    References:
        Molnar GD, et al. Diabetologia 1972;8:342. doi:10.1007/BF01218495
    """
    g, m, _ = _prep(glucose, mask)
    d, ok = _lagged(g, m, _lag_steps(1440.0, step_min))
    return _safe_div(jnp.sum(ok * jnp.abs(d)), jnp.sum(ok))


def conga_jax(
    glucose: GlucoseLike,
    mask: MaskLike,
    *,
    n_hours: float = 1.0,
    step_min: float = 5.0,
) -> Scalar:
    """CONGA(n) [mg/dL]: sample SD of G(t) − G(t − n h) over observed pairs.

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.
        n_hours: Lag [h] (static).
        step_min: Grid spacing [min] (static).

    Returns:
        CONGA(n) [mg/dL] (``nan`` with < 2 pairs).

    References:
        McDonnell CM, et al. Diabetes Technol Ther 2005;7:253.
        doi:10.1089/dia.2005.7.253
    """
    g, m, _ = _prep(glucose, mask)
    d, ok = _lagged(g, m, _lag_steps(60.0 * n_hours, step_min))
    return _moments(d, ok)[2]


def cgm_metrics_jax(
    glucose: GlucoseLike,
    mask: MaskLike,
    *,
    step_min: float = 5.0,
    conga_hours: float = 1.0,
) -> dict[str, Array]:
    """The CGM metrics a population fit needs, for one patient on a regular grid.

    Keys as in the numpy [`cgm_metrics`][] except MAGE and ADRR (not provided here):
    ``n_readings``, ``percent_data``, ``days``, ``sufficient``, ``mean_mg_dl``,
    ``sd_mg_dl``, ``cv_percent``, ``gmi_percent``, the eight time-in-range bands,
    ``lbgi``, ``hbgi``, ``gri``, ``gri_hypo``, ``gri_hyper``, ``j_index``,
    ``modd_mg_dl`` and ``conga_<n>h_mg_dl``. ``jax.vmap`` it for a population.

    Args:
        glucose: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where observed, shape ``[times]``.
        step_min: Grid spacing [min] (static).
        conga_hours: CONGA lag [h] (static).

    Returns:
        A dict of 0-d arrays.

    References:
        Battelino et al., Diabetes Care 2019;42:1593; see each metric.
    """
    g, m, w = _prep(glucose, mask)
    n, mean, sd = _moments(g, w)
    bands = _bands(g, w)
    lo, hi = _risk(g, w)
    suff = data_sufficiency_jax(glucose, mask, step_min=step_min)
    d1, ok1 = _lagged(g, m, _lag_steps(1440.0, step_min))
    dn, okn = _lagged(g, m, _lag_steps(60.0 * conga_hours, step_min))
    return {
        "n_readings": n,
        **suff,
        "mean_mg_dl": mean,
        "sd_mg_dl": sd,
        "cv_percent": 100.0 * sd / mean,
        "gmi_percent": 3.31 + 0.02392 * mean,
        **bands,
        "lbgi": lo,
        "hbgi": hi,
        **_gri(bands),
        "j_index": 0.001 * (mean + sd) ** 2,
        "modd_mg_dl": _safe_div(jnp.sum(ok1 * jnp.abs(d1)), jnp.sum(ok1)),
        f"conga_{conga_hours:g}h_mg_dl": _moments(dn, okn)[2],
    }
