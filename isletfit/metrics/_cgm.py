"""Consensus CGM metrics on numpy arrays (mask-aware, vectorised over patients).

Every function here takes glucose as an array whose **last axis is time**: a 1-D
``[times]`` array for one patient (the result is a Python ``float``) or a 2-D
``[patients, times]`` array for many (the result is a ``[patients]`` array). ``mask``
has the glucose shape, ``True`` = observed; readings that are masked or not finite are
left out. ``time_min`` (where a metric needs time) is one 1-D ``[times]`` axis shared by
all patients, in minutes since local midnight of day 0; without it the readings are
taken to lie on a regular grid ``0, step_min, 2·step_min, ...``.

Conventions used by every metric (state them when you report numbers):

* **Percent of time = percent of observed readings.** Readings are weighted equally, as
  in Battelino et al. 2019 and Danne et al. 2017; resample irregular records onto a
  regular grid first if you want time weighting.
* **Censored readings** (a CGM's ``Low``/``High``) must be stored at the device limit
  (e.g. 40 and 400 mg/dL) and observed: they then count in every range metric at their
  limit (``Low`` is below 54, ``High`` above 250) and enter the mean, SD and risk
  indices at the limit, which biases those towards the centre.
* **SD** is the sample standard deviation (``ddof = 1``), as in iglu and EasyGV.
* An input with no observed reading gives ``nan`` (no warning, no error), and a data
  sufficiency of 0 %.

References:
    Battelino T, et al. Clinical targets for continuous glucose monitoring data
    interpretation: recommendations from the International Consensus on Time in Range.
    Diabetes Care 2019;42:1593-1603. doi:10.2337/dci19-0028

    Danne T, et al. International consensus on use of continuous glucose monitoring.
    Diabetes Care 2017;40:1631-1640. doi:10.2337/dc17-1600
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Real

from .._custom_types import ArrayLike, Bool, Float
from .._errors import InputError

__all__ = [
    "adrr",
    "cgm_metrics",
    "cgm_metrics_batch",
    "conga",
    "cv_percent",
    "data_sufficiency",
    "eag_from_hba1c",
    "gmi_percent",
    "gri",
    "hbgi",
    "j_index",
    "lbgi",
    "mage",
    "mean_glucose",
    "modd",
    "percent_time_in_range",
    "risk_function",
    "sd_glucose",
    "time_in_ranges",
]

#: Glucose thresholds of the international consensus [mg/dL].
VERY_LOW_MG_DL = 54.0
LOW_MG_DL = 70.0
TIGHT_HIGH_MG_DL = 140.0
HIGH_MG_DL = 180.0
VERY_HIGH_MG_DL = 250.0
#: Glucose at which the Kovatchev risk function is (almost exactly) zero [mg/dL];
#: a harmless stand-in for masked readings before taking logarithms.
_NEUTRAL_MG_DL = 112.5
_MIN_PER_DAY = 1440.0

#: Glucose [mg/dL] with time on the last axis: ``[times]`` or ``[patients, times]``.
Glucose = Real[ArrayLike, "*patients times"]
#: Observation mask (``True`` = observed), same shape as the glucose; ``None`` = all.
Mask = Bool[ArrayLike, "*patients times"] | None
#: Reading times [min] since local midnight of day 0, shared by all patients.
Times = Real[ArrayLike, " times"] | None
#: A float for one patient, a ``[patients]`` array for many.
Result = float | Float[np.ndarray, "*patients"]


# --- input handling -------------------------------------------------------------------


class _Prepared(NamedTuple):
    g: np.ndarray  # [..., T] float, masked entries replaced by _NEUTRAL_MG_DL
    obs: np.ndarray  # [..., T] bool
    n: np.ndarray  # [...] number of observed readings (float)


def _prepare(glucose_mg_dl, mask) -> _Prepared:
    g = np.asarray(glucose_mg_dl, dtype=float)
    if g.ndim == 0:
        raise InputError(
            "glucose must be an array with time on the last axis, got a scalar",
            field="glucose_mg_dl",
            expected="a 1-D [times] or 2-D [patients, times] array in mg/dL",
        )
    obs = np.isfinite(g)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != g.shape:
            raise InputError(
                f"mask has shape {m.shape} but glucose has shape {g.shape}",
                field="mask",
                expected=f"a boolean array of shape {g.shape} (True = observed)",
            )
        obs &= m.astype(bool)
    if np.any(obs & (g <= 0.0)):
        raise InputError(
            "glucose must be positive",
            field="glucose_mg_dl",
            expected="observed values > 0 mg/dL (is the unit mmol/L?)",
        )
    g = np.where(obs, g, _NEUTRAL_MG_DL)
    return _Prepared(g, obs, obs.sum(axis=-1).astype(float))


def _div(num, den):
    """Divide, giving nan (and no warning) where the denominator is 0."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _out(x):
    """A 0-d result as a Python float (or bool); anything else unchanged."""
    x = np.asarray(x)
    if x.ndim == 0:
        return bool(x) if x.dtype == bool else float(x)
    return x


def _time_axis(time_min, n_times: int, step_min) -> np.ndarray:
    _check_step(step_min)
    if time_min is None:
        return np.arange(n_times, dtype=float) * float(step_min)
    t = np.asarray(time_min, dtype=float)
    if t.shape != (n_times,):
        raise InputError(
            f"time_min has shape {t.shape} but glucose has {n_times} readings",
            field="time_min",
            expected=f"a 1-D array of {n_times} times in minutes",
        )
    if not np.all(np.isfinite(t)):
        raise InputError(
            "time_min contains nan or inf",
            field="time_min",
            expected="finite times in minutes since local midnight of day 0",
        )
    return t


def _check_step(step_min) -> None:
    if not (np.isscalar(step_min) and np.isfinite(step_min) and step_min > 0):
        raise InputError(
            f"step_min must be a positive number of minutes, got {step_min!r}",
            field="step_min",
            expected="the sampling interval in minutes, e.g. 5 (Dexcom) or 15 (Libre)",
        )


def _sort_by_time(t: np.ndarray, p: _Prepared) -> tuple[np.ndarray, _Prepared]:
    if t.size < 2 or np.all(np.diff(t) >= 0):
        return t, p
    order = np.argsort(t, kind="stable")
    return t[order], _Prepared(p.g[..., order], p.obs[..., order], p.n)


def _prepare_timed(glucose_mg_dl, mask, time_min, step_min):
    p = _prepare(glucose_mg_dl, mask)
    t = _time_axis(time_min, p.g.shape[-1], step_min)
    return _sort_by_time(t, p)


# --- location, spread, GMI ------------------------------------------------------------


def _mean(p: _Prepared):
    return _div(np.sum(np.where(p.obs, p.g, 0.0), axis=-1), p.n)


def _sd(p: _Prepared, mean):
    centred = np.where(p.obs, p.g - np.nan_to_num(mean)[..., None], 0.0)
    var = _div(np.sum(centred * centred, axis=-1), np.where(p.n >= 2, p.n - 1.0, 0.0))
    return np.sqrt(var)


def mean_glucose(glucose_mg_dl: Glucose, mask: Mask = None) -> Result:
    r"""Mean glucose [mg/dL] of the observed readings.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed; same shape. ``None`` = all finite
            readings.

    Returns:
        The mean [mg/dL]: a float for 1-D input, a ``[patients]`` array otherwise;
        ``nan`` when nothing is observed.

    References:
        Battelino et al., Diabetes Care 2019;42:1593.
    """
    return _out(_mean(_prepare(glucose_mg_dl, mask)))


def sd_glucose(glucose_mg_dl: Glucose, mask: Mask = None) -> Result:
    r"""Sample standard deviation of glucose [mg/dL] (``ddof = 1``).

    $\mathrm{SD} = \sqrt{\sum_i (G_i - \bar G)^2 / (n - 1)}$ over observed readings;
    ``nan`` with fewer than two.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.

    Returns:
        The SD [mg/dL].

    References:
        Danne et al., Diabetes Care 2017;40:1631.
    """
    p = _prepare(glucose_mg_dl, mask)
    return _out(_sd(p, _mean(p)))


def cv_percent(glucose_mg_dl: Glucose, mask: Mask = None) -> Result:
    r"""Coefficient of variation [%]: $100 \cdot \mathrm{SD} / \bar G$.

    Target ≤ 36 % (Danne et al. 2017; Battelino et al. 2019).

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.

    Returns:
        The CV [%].

    References:
        Danne et al., Diabetes Care 2017;40:1631.
    """
    p = _prepare(glucose_mg_dl, mask)
    mean = _mean(p)
    return _out(100.0 * _div(_sd(p, mean), mean))


def _gmi(mean):
    return 3.31 + 0.02392 * mean


def gmi_percent(glucose_mg_dl: Glucose, mask: Mask = None) -> Result:
    r"""Glucose management indicator [%]: $\mathrm{GMI} = 3.31 + 0.02392\,\bar G$.

    $\bar G$ is the mean glucose in mg/dL (e.g. a mean of 154 mg/dL gives 6.99 %).

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.

    Returns:
        GMI [% HbA1c-equivalent, DCCT units].

    References:
        Bergenstal RM, et al. Glucose management indicator (GMI): a new term for
        estimating A1C from continuous glucose monitoring. Diabetes Care
        2018;41:2275-2280. doi:10.2337/dc18-1581
    """
    return _out(_gmi(_mean(_prepare(glucose_mg_dl, mask))))


def eag_from_hba1c(hba1c_percent: Real[ArrayLike, "..."]) -> float | np.ndarray:
    r"""Estimated average glucose [mg/dL] from HbA1c [%]: $28.7\,A1c - 46.7$ (ADAG).

    The A1c-derived average glucose regression (e.g. 7 % ↔ 154 mg/dL); it is the
    population relation GMI was later built to replace for CGM users.

    Args:
        hba1c_percent: HbA1c [%, DCCT units], scalar or array.

    Returns:
        eAG [mg/dL], same shape.

    References:
        Nathan DM, et al. Translating the A1C assay into estimated average glucose
        values. Diabetes Care 2008;31:1473-1478. doi:10.2337/dc08-0545
    """
    return _out(28.7 * np.asarray(hba1c_percent, dtype=float) - 46.7)


# --- time in ranges -------------------------------------------------------------------


def _percent(p: _Prepared, inside: np.ndarray):
    return 100.0 * _div(np.sum(inside & p.obs, axis=-1), p.n)


def percent_time_in_range(
    glucose_mg_dl: Glucose,
    mask: Mask = None,
    *,
    lower: float | None = None,
    upper: float | None = None,
    include_lower: bool = True,
    include_upper: bool = True,
) -> Result:
    r"""Percent of observed readings with glucose in a range [%].

    Counts $G \ge \text{lower}$ (or $G > \text{lower}$ when ``include_lower=False``) and
    $G \le \text{upper}$ (or $<$); a missing bound is open. Readings are weighted
    equally; censored readings count at their limit.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.
        lower: Lower bound [mg/dL], or ``None`` for none.
        upper: Upper bound [mg/dL], or ``None`` for none.
        include_lower: Whether a reading exactly at ``lower`` counts.
        include_upper: Whether a reading exactly at ``upper`` counts.

    Returns:
        Percent of observed readings in the range [%] (``nan`` if none observed).

    References:
        Battelino et al., Diabetes Care 2019;42:1593.
    """
    p = _prepare(glucose_mg_dl, mask)
    inside = np.ones(p.g.shape, dtype=bool)
    if lower is not None:
        inside &= (p.g >= lower) if include_lower else (p.g > lower)
    if upper is not None:
        inside &= (p.g <= upper) if include_upper else (p.g < upper)
    return _out(_percent(p, inside))


def _bands(p: _Prepared) -> dict:
    g = p.g
    return {
        "tir_70_180_percent": _percent(p, (g >= LOW_MG_DL) & (g <= HIGH_MG_DL)),
        "titr_70_140_percent": _percent(p, (g >= LOW_MG_DL) & (g <= TIGHT_HIGH_MG_DL)),
        "tbr_below_70_percent": _percent(p, g < LOW_MG_DL),
        "tbr_below_54_percent": _percent(p, g < VERY_LOW_MG_DL),
        "tbr_54_69_percent": _percent(p, (g >= VERY_LOW_MG_DL) & (g < LOW_MG_DL)),
        "tar_above_180_percent": _percent(p, g > HIGH_MG_DL),
        "tar_above_250_percent": _percent(p, g > VERY_HIGH_MG_DL),
        "tar_181_250_percent": _percent(p, (g > HIGH_MG_DL) & (g <= VERY_HIGH_MG_DL)),
    }


def time_in_ranges(glucose_mg_dl: Glucose, mask: Mask = None) -> dict:
    r"""All consensus time-in-range bands [% of observed readings].

    Bounds, exactly (G in mg/dL):

    | key | counts |
    |---|---|
    | ``tir_70_180_percent`` | $70 \le G \le 180$ |
    | ``titr_70_140_percent`` | $70 \le G \le 140$ (time in tight range) |
    | ``tbr_below_70_percent`` | $G < 70$ (level 1 + 2) |
    | ``tbr_below_54_percent`` | $G < 54$ (level 2) |
    | ``tbr_54_69_percent`` | $54 \le G < 70$ (level 1) |
    | ``tar_above_180_percent`` | $G > 180$ (level 1 + 2) |
    | ``tar_above_250_percent`` | $G > 250$ (level 2) |
    | ``tar_181_250_percent`` | $180 < G \le 250$ (level 1) |

    So ``<54``, ``54-69``, ``70-180``, ``181-250`` and ``>250`` partition the readings
    and add up to 100 %. Censored ``Low``/``High`` readings count at their limit.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.

    Returns:
        A dict of the eight bands [%].

    References:
        Battelino et al., Diabetes Care 2019;42:1593 (targets: TIR > 70 %, TBR<70 < 4 %,
        TBR<54 < 1 %, TAR>180 < 25 %, TAR>250 < 5 %). Time in tight range 70-140: the
        pregnancy target range of the same consensus.
    """
    return {k: _out(v) for k, v in _bands(_prepare(glucose_mg_dl, mask)).items()}


# --- Kovatchev risk indices -----------------------------------------------------------


def risk_function(glucose_mg_dl: Real[ArrayLike, "..."]) -> float | np.ndarray:
    r"""Kovatchev's symmetrised glucose scale $f(G) = 1.509[(\ln G)^{1.084} - 5.381]$.

    $f < 0$ below about 112.5 mg/dL (hypoglycaemic side), $f > 0$ above; the risk is
    $r = 10 f^2$, which is about 100 at both 20 and 600 mg/dL.

    Args:
        glucose_mg_dl: Glucose [mg/dL], positive, any shape.

    Returns:
        $f(G)$ [dimensionless], same shape.

    References:
        Kovatchev BP, et al. Symmetrization of the blood glucose measurement scale and
        its applications. Diabetes Care 1997;20:1655-1658.
        doi:10.2337/diacare.20.11.1655
    """
    g = np.asarray(glucose_mg_dl, dtype=float)
    return _out(1.509 * (np.log(g) ** 1.084 - 5.381))


def _risks(p: _Prepared) -> tuple[np.ndarray, np.ndarray]:
    f = 1.509 * (np.log(p.g) ** 1.084 - 5.381)
    r = 10.0 * f * f
    rl = np.where(p.obs & (f < 0.0), r, 0.0)
    rh = np.where(p.obs & (f > 0.0), r, 0.0)
    return rl, rh


def lbgi(glucose_mg_dl: Glucose, mask: Mask = None) -> Result:
    r"""Low blood glucose index: $\mathrm{LBGI} = \frac1n \sum_i rl(G_i)$.

    $rl(G) = 10 f(G)^2$ where $f(G) < 0$ (G below ≈ 112.5 mg/dL), else 0; the mean is
    over **all** observed readings (not only the low ones). Commonly quoted bands
    (recalled, unverified): ≤ 1.1 minimal, 1.1-2.5 low, 2.5-5 moderate, > 5 high risk.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.

    Returns:
        LBGI [dimensionless].

    References:
        Kovatchev BP, et al. Diabetes Care 1997;20:1655. Kovatchev BP, et al. Assessment
        of risk for severe hypoglycemia among adults with IDDM. Diabetes Care
        1998;21:1870-1875. doi:10.2337/diacare.21.11.1870
    """
    p = _prepare(glucose_mg_dl, mask)
    rl, _ = _risks(p)
    return _out(_div(rl.sum(axis=-1), p.n))


def hbgi(glucose_mg_dl: Glucose, mask: Mask = None) -> Result:
    r"""High blood glucose index: $\mathrm{HBGI} = \frac1n \sum_i rh(G_i)$.

    $rh(G) = 10 f(G)^2$ where $f(G) > 0$ (G above ≈ 112.5 mg/dL), else 0; mean over all
    observed readings. Commonly quoted bands (recalled, unverified): < 4.5 low, 4.5-9
    moderate, > 9 high.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.

    Returns:
        HBGI [dimensionless].

    References:
        Kovatchev BP, et al. Diabetes Care 1997;20:1655; Kovatchev BP, et al. Diabetes
        Technol Ther 2002;4:295-303.
    """
    p = _prepare(glucose_mg_dl, mask)
    _, rh = _risks(p)
    return _out(_div(rh.sum(axis=-1), p.n))


# --- per-day structure ----------------------------------------------------------------


class _Days(NamedTuple):
    index: np.ndarray  # [T] 0-based index of each reading's day among the days present
    starts: np.ndarray  # [D] first reading of each day
    counts: np.ndarray  # [D] readings (observed or not) on each day


def _days(t: np.ndarray) -> _Days:
    """Calendar days of sorted times: floor(t / 1440), t = 0 at local midnight."""
    day = np.floor(t / _MIN_PER_DAY)
    if t.size == 0:
        empty = np.zeros(0, dtype=int)
        return _Days(empty, empty, empty)
    new = np.concatenate([[True], day[1:] != day[:-1]])
    starts = np.flatnonzero(new)
    index = np.cumsum(new) - 1
    counts = np.diff(np.append(starts, t.size))
    return _Days(index, starts, counts)


def _adrr(p: _Prepared, days: _Days, rl: np.ndarray, rh: np.ndarray):
    if days.starts.size == 0:
        return np.full(p.g.shape[:-1], np.nan)
    lr = np.maximum.reduceat(rl, days.starts, axis=-1)
    hr = np.maximum.reduceat(rh, days.starts, axis=-1)
    has_data = np.add.reduceat(p.obs, days.starts, axis=-1) > 0
    total = np.sum(np.where(has_data, lr + hr, 0.0), axis=-1)
    return _div(total, has_data.sum(axis=-1))


def adrr(
    glucose_mg_dl: Glucose,
    mask: Mask = None,
    *,
    time_min: Times = None,
    step_min: float = 5.0,
) -> Result:
    r"""Average daily risk range: mean over days of (max rl + max rh) that day.

    $\mathrm{ADRR} = \frac1M \sum_{d=1}^{M} [\max_{i \in d} rl(G_i) +
    \max_{i \in d} rh(G_i)]$ over the $M$ calendar days (``floor(time_min / 1440)``)
    with at least one observed reading; $rl, rh$ as in [`lbgi`][] / [`hbgi`][]. No
    minimum number of readings per day is imposed (Kovatchev used SMBG, ≥ 3 a day).
    Commonly quoted bands (recalled, unverified): < 20 low, 20-40 moderate, > 40 high
    risk.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.
        time_min: Reading times [min] since local midnight of day 0, shape ``[times]``;
            ``None`` = regular grid from 0.
        step_min: Sampling interval [min] used when ``time_min`` is ``None``.

    Returns:
        ADRR [dimensionless].

    References:
        Kovatchev BP, et al. Evaluation of a new measure of blood glucose variability in
        diabetes. Diabetes Care 2006;29:2433-2438. doi:10.2337/dc06-1085
    """
    t, p = _prepare_timed(glucose_mg_dl, mask, time_min, step_min)
    return _out(_adrr(p, _days(t), *_risks(p)))


# --- GRI and J-index ------------------------------------------------------------------


def _gri(bands: dict) -> dict:
    hypo = bands["tbr_below_54_percent"] + 0.8 * bands["tbr_54_69_percent"]
    hyper = bands["tar_above_250_percent"] + 0.5 * bands["tar_181_250_percent"]
    return {
        "gri": np.minimum(3.0 * hypo + 1.6 * hyper, 100.0),
        "gri_hypo": hypo,
        "gri_hyper": hyper,
    }


def gri(glucose_mg_dl: Glucose, mask: Mask = None) -> dict:
    r"""Glycemia risk index with its hypoglycaemia and hyperglycaemia components.

    With VLow = % < 54, Low = % 54-69 ($54 \le G < 70$), High = % 181-250
    ($180 < G \le 250$), VHigh = % > 250 (see [`time_in_ranges`][]):

    * hypo component $= \mathrm{VLow} + 0.8\,\mathrm{Low}$
    * hyper component $= \mathrm{VHigh} + 0.5\,\mathrm{High}$
    * $\mathrm{GRI} = \min(3.0\,\mathrm{hypo} + 1.6\,\mathrm{hyper},\ 100)$, i.e.
      $3.0\,\mathrm{VLow} + 2.4\,\mathrm{Low} + 1.6\,\mathrm{VHigh}
      + 0.8\,\mathrm{High}$.

    Only the GRI is capped at 100 (the components cannot exceed 100). Zones: A 0-20,
    B 20-40, C 40-60, D 60-80, E 80-100.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.

    Returns:
        ``{"gri": ..., "gri_hypo": ..., "gri_hyper": ...}`` [dimensionless, 0-100].

    References:
        Klonoff DC, et al. A Glycemia Risk Index (GRI) of hypoglycemia and hyperglycemia
        for continuous glucose monitoring validated by clinician ratings. J Diabetes Sci
        Technol 2023;17:1226-1242. doi:10.1177/19322968221085273
    """
    return {k: _out(v) for k, v in _gri(_bands(_prepare(glucose_mg_dl, mask))).items()}


def j_index(glucose_mg_dl: Glucose, mask: Mask = None) -> Result:
    r"""J-index: $0.001\,(\bar G + \mathrm{SD})^2$ with glucose in mg/dL.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.

    Returns:
        J-index [conventionally unitless; (mg/dL)² × 10⁻³].

    References:
        Wójcicki JM. "J"-index. A new proposition of the assessment of current glucose
        control in diabetic patients. Horm Metab Res 1995;27:41-42.
        doi:10.1055/s-2007-979906
    """
    p = _prepare(glucose_mg_dl, mask)
    mean = _mean(p)
    return _out(0.001 * (mean + _sd(p, mean)) ** 2)


# --- lagged differences: MODD and CONGA -----------------------------------------------


def _lag_pairs(t: np.ndarray, lag_min: float, tol_min: float):
    """Index pairs (i, j) with t[j] the reading nearest to t[i] - lag, within tol."""
    target = t - lag_min
    hi = np.clip(np.searchsorted(t, target), 0, max(t.size - 1, 0))
    lo = np.clip(hi - 1, 0, None)
    j = np.where(np.abs(t[lo] - target) <= np.abs(t[hi] - target), lo, hi)
    ok = np.abs(t[j] - target) <= tol_min
    i = np.flatnonzero(ok)
    return i, j[ok]


def _lagged(p: _Prepared, t: np.ndarray, lag_min: float, step_min: float):
    if t.size == 0:
        shape = (*p.g.shape[:-1], 0)
        return np.zeros(shape), np.zeros(shape, dtype=bool)
    i, j = _lag_pairs(t, lag_min, 0.5 * step_min)
    return p.g[..., i] - p.g[..., j], p.obs[..., i] & p.obs[..., j]


def _modd(p, t, step_min):
    d, ok = _lagged(p, t, _MIN_PER_DAY, step_min)
    return _div(np.sum(np.where(ok, np.abs(d), 0.0), axis=-1), ok.sum(axis=-1))


def _conga(p, t, step_min, n_hours):
    d, ok = _lagged(p, t, 60.0 * n_hours, step_min)
    n = ok.sum(axis=-1).astype(float)
    mean = _div(np.sum(np.where(ok, d, 0.0), axis=-1), n)
    c = np.where(ok, d - np.nan_to_num(mean)[..., None], 0.0)
    return np.sqrt(_div(np.sum(c * c, axis=-1), np.where(n >= 2, n - 1.0, 0.0)))


def modd(
    glucose_mg_dl: Glucose,
    mask: Mask = None,
    *,
    time_min: Times = None,
    step_min: float = 5.0,
) -> Result:
    r"""Mean of daily differences: mean $|G(t) - G(t - 24\,\mathrm{h})|$ [mg/dL].

    Over every pair of observed readings 24 h apart. With irregular ``time_min`` the
    partner of a reading at $t$ is the reading nearest to $t - 1440$ min, used only if
    it lies within ``step_min / 2`` of it.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.
        time_min: Reading times [min], shape ``[times]``; ``None`` = regular grid.
        step_min: Sampling interval [min] (grid spacing, and twice the pairing
            tolerance).

    Returns:
        MODD [mg/dL] (``nan`` without any pair).

    References:
        Molnar GD, Taylor WF, Ho MM. Day-to-day variation of continuously monitored
        glycaemia: a further measure of diabetic instability. Diabetologia
        1972;8:342-348. doi:10.1007/BF01218495
    """
    t, p = _prepare_timed(glucose_mg_dl, mask, time_min, step_min)
    return _out(_modd(p, t, float(step_min)))


def conga(
    glucose_mg_dl: Glucose,
    mask: Mask = None,
    *,
    n_hours: float = 1.0,
    time_min: Times = None,
    step_min: float = 5.0,
) -> Result:
    r"""CONGA(n): sample SD of the differences $G(t) - G(t - n\,\mathrm{h})$ [mg/dL].

    Over every pair of observed readings ``n_hours`` apart (pairing as in [`modd`][]);
    ``ddof = 1``.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.
        n_hours: The lag n [h] (default 1 h, CONGA1).
        time_min: Reading times [min], shape ``[times]``; ``None`` = regular grid.
        step_min: Sampling interval [min].

    Returns:
        CONGA(n) [mg/dL] (``nan`` with fewer than two pairs).

    References:
        McDonnell CM, et al. A novel approach to continuous glucose analysis utilizing
        glycemic variation. Diabetes Technol Ther 2005;7:253-263.
        doi:10.1089/dia.2005.7.253
    """
    if not (np.isscalar(n_hours) and n_hours > 0):
        raise InputError(
            f"n_hours must be a positive number of hours, got {n_hours!r}",
            field="n_hours",
            expected="e.g. 1, 2 or 4",
        )
    t, p = _prepare_timed(glucose_mg_dl, mask, time_min, step_min)
    return _out(_conga(p, t, float(step_min), float(n_hours)))


# --- MAGE -----------------------------------------------------------------------------


def _compact(vals: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the kept entries of each row to the left; pad with nan; trim the width."""
    pos = np.cumsum(keep, axis=1) - 1
    n = pos[:, -1] + 1 if pos.shape[1] else np.zeros(pos.shape[0], dtype=int)
    out = np.full((vals.shape[0], max(int(n.max(initial=0)), 2)), np.nan)
    r, c = np.nonzero(keep)
    out[r, pos[r, c]] = vals[r, c]
    return out, n


def _mage_rows(g: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """MAGE of each row of a [rows, L] array (one row = one patient-day)."""
    rows = g.shape[0]
    n_obs = obs.sum(axis=1).astype(float)
    mean = _div(np.sum(np.where(obs, g, 0.0), axis=1), n_obs)
    c = np.where(obs, g - np.nan_to_num(mean)[:, None], 0.0)
    sd = np.sqrt(_div(np.sum(c * c, axis=1), np.where(n_obs >= 2, n_obs - 1.0, 0.0)))

    v, n = _compact(g, obs)
    idx = np.arange(v.shape[1])
    # 1. collapse plateaus (runs of equal values) to one point
    same = np.zeros(v.shape, dtype=bool)
    same[:, 1:] = v[:, 1:] == v[:, :-1]
    v, n = _compact(v, (idx < n[:, None]) & ~same)
    # 2. keep only turning points (plus both ends)
    idx = np.arange(v.shape[1])
    d = np.sign(np.diff(v, axis=1))
    keep = idx < n[:, None]
    interior = (idx >= 1) & (idx < n[:, None] - 1)
    turn = np.ones(v.shape, dtype=bool)
    turn[:, 1:-1] = d[:, :-1] != d[:, 1:]
    v, n = _compact(v, keep & (turn | ~interior))
    # 3. prune excursions not exceeding 1 SD, smallest first (in parallel per row)
    while True:
        w = v.shape[1]
        amp = np.abs(np.diff(v, axis=1))
        valid = np.arange(w - 1) < (n[:, None] - 1)
        amp = np.where(valid, amp, np.inf)
        left = np.concatenate([np.full((rows, 1), np.inf), amp[:, :-1]], axis=1)
        right = np.concatenate([amp[:, 1:], np.full((rows, 1), np.inf)], axis=1)
        drop_exc = valid & (amp <= sd[:, None]) & (amp < left) & (amp <= right)
        if not drop_exc.any():
            break
        k = np.arange(w - 1)
        first = k == 0
        last = k == (n[:, None] - 2)
        drop = np.zeros(v.shape, dtype=bool)
        # excursion k joins points k and k+1: the first excursion drops its start,
        # the last its end, an interior one both.
        drop[:, :-1] |= drop_exc & (first | ~last)
        drop[:, 1:] |= drop_exc & ~first
        keep = (np.arange(w) < n[:, None]) & ~drop
        v, n = _compact(v, keep)
    amp = np.abs(np.diff(v, axis=1))
    valid = np.arange(v.shape[1] - 1) < (n[:, None] - 1)
    return _div(np.sum(np.where(valid, amp, 0.0), axis=1), valid.sum(axis=1))


def _day_rows(p: _Prepared, days: _Days):
    """Scatter [..., T] readings into [..., D, L] day rows (padded, unobserved)."""
    lead = p.g.shape[:-1]
    n_days = days.starts.size
    width = int(days.counts.max(initial=1))
    pos = np.arange(days.index.size) - days.starts[days.index]
    g = np.full((*lead, n_days, width), np.nan)
    obs = np.zeros((*lead, n_days, width), dtype=bool)
    g[..., days.index, pos] = p.g
    obs[..., days.index, pos] = p.obs
    return g.reshape(-1, width), obs.reshape(-1, width), (*lead, n_days)


def _mage(p: _Prepared, days: _Days):
    if days.starts.size == 0:
        return np.full(p.g.shape[:-1], np.nan)
    g, obs, shape = _day_rows(p, days)
    daily = _mage_rows(g, obs).reshape(shape)
    ok = np.isfinite(daily)
    return _div(np.sum(np.where(ok, daily, 0.0), axis=-1), ok.sum(axis=-1))


def mage(
    glucose_mg_dl: Glucose,
    mask: Mask = None,
    *,
    time_min: Times = None,
    step_min: float = 5.0,
) -> Result:
    r"""Mean amplitude of glycaemic excursions [mg/dL], per day, averaged over days.

    For each calendar day (``floor(time_min / 1440)``), on the observed readings in time
    order (masked readings are dropped, not interpolated):

    1. runs of equal values are collapsed to one point;
    2. the turning points are kept: every local maximum and minimum, plus the day's
       first and last reading, so that peaks and nadirs alternate;
    3. excursions (differences between adjacent turning points) that do **not exceed**
       1 SD of that day's readings (sample SD, ``ddof = 1``) are removed, smallest
       first: an interior excursion removes both its points (which keeps the higher
       peak and the lower nadir, and merges its neighbours into one excursion); the
       first/last excursion removes only the day's first/last point. Repeat until every
       remaining excursion is > 1 SD;
    4. the day's MAGE is the mean amplitude of the remaining excursions, rises and falls
       together (Service's original counts only the direction of the first qualifying
       excursion; averaging both is the "MAGE avg" of later software).

    The result is the mean of the daily values over days that have at least one
    qualifying excursion (``nan`` if none). Vectorised over patients and days; the only
    loop is over pruning rounds (each removes every locally smallest small excursion).

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.
        time_min: Reading times [min] since local midnight of day 0; ``None`` = regular
            grid from 0.
        step_min: Sampling interval [min] used when ``time_min`` is ``None``.

    Returns:
        MAGE [mg/dL].

    References:
        Service FJ, et al. Mean amplitude of glycemic excursions, a measure of diabetic
        instability. Diabetes 1970;19:644-655. doi:10.2337/diab.19.9.644
    """
    t, p = _prepare_timed(glucose_mg_dl, mask, time_min, step_min)
    return _out(_mage(p, _days(t)))


# --- data sufficiency -----------------------------------------------------------------


def _span(t: np.ndarray, step_min: float, span_min) -> float:
    if span_min is not None:
        if not (np.isscalar(span_min) and span_min >= 0):
            raise InputError(
                f"span_min must be a non-negative number of minutes, got {span_min!r}",
                field="span_min",
                expected="the length of the period [min], e.g. 20160 for 14 days",
            )
        return float(span_min)
    return float(t[-1] - t[0] + step_min) if t.size else 0.0


def _sufficiency(p: _Prepared, span: float, step_min: float) -> dict:
    expected = span / step_min
    percent = np.minimum(100.0, 100.0 * p.n / expected) if expected > 0 else 0.0 * p.n
    days = span / _MIN_PER_DAY
    return {
        "percent_data": np.asarray(percent, dtype=float),
        "days": np.full(p.n.shape, days),
        "sufficient": (np.asarray(percent) >= 70.0) & (days >= 14.0),
    }


def data_sufficiency(
    glucose_mg_dl: Glucose,
    mask: Mask = None,
    *,
    time_min: Times = None,
    step_min: float = 5.0,
    span_min: float | None = None,
) -> dict:
    r"""Percent of expected CGM readings, period length, and the 14-day/70 % rule.

    Expected readings = period / ``step_min``; the period is ``span_min`` if given, else
    from the first to the last time plus one step (``len(glucose) · step_min`` without
    ``time_min``). ``percent_data`` = 100 × observed / expected, capped at 100.
    ``sufficient`` is ``percent_data >= 70`` **and** ``days >= 14``.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]`` or ``[patients, times]``.
        mask: ``True`` where a reading is observed.
        time_min: Reading times [min]; ``None`` = regular grid.
        step_min: The sensor's sampling interval [min] (5 Dexcom, 15 Libre 1/2).
        span_min: Length of the period [min] to judge against (e.g. a whole day or a
            14-day visit block), overriding the span of ``time_min``.

    Returns:
        ``{"percent_data": [%], "days": [d], "sufficient": bool}``.

    References:
        Battelino et al., Diabetes Care 2019;42:1593 ("14 days, ≥ 70 % of possible
        readings").
    """
    t, p = _prepare_timed(glucose_mg_dl, mask, time_min, step_min)
    out = _sufficiency(p, _span(t, float(step_min), span_min), float(step_min))
    return {k: _out(v) for k, v in out.items()}


# --- everything at once ---------------------------------------------------------------


def cgm_metrics_batch(
    glucose_mg_dl: Glucose,
    mask: Mask = None,
    *,
    time_min: Times = None,
    step_min: float = 5.0,
    span_min: float | None = None,
    conga_hours: float = 1.0,
    include_mage: bool = True,
) -> dict[str, np.ndarray]:
    r"""Every CGM metric for many patients at once, vectorised (no loop over patients).

    Same definitions and keys as [`cgm_metrics`][]; each value is a ``[patients]``
    array (``sufficient`` is boolean).

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[patients, times]`` (pad and mask ragged
            records).
        mask: ``True`` where a reading is observed; same shape.
        time_min: Reading times [min] since local midnight of day 0, shared by all
            patients, shape ``[times]``; ``None`` = regular grid from 0.
        step_min: Sampling interval [min].
        span_min: Period length [min] for data sufficiency (default: span of the times).
        conga_hours: Lag of CONGA [h].
        include_mage: Compute MAGE (the slowest metric); ``nan`` when ``False``.

    Returns:
        A dict of ``[patients]`` arrays.

    References:
        See the individual metric functions.
    """
    t, p = _prepare_timed(glucose_mg_dl, mask, time_min, step_min)
    step = float(step_min)
    days = _days(t)
    mean = _mean(p)
    sd = _sd(p, mean)
    bands = _bands(p)
    rl, rh = _risks(p)
    suff = _sufficiency(p, _span(t, step, span_min), step)
    out: dict[str, np.ndarray] = {
        "n_readings": p.n,
        "percent_data": suff["percent_data"],
        "days": suff["days"],
        "sufficient": suff["sufficient"],
        "mean_mg_dl": mean,
        "sd_mg_dl": sd,
        "cv_percent": 100.0 * _div(sd, mean),
        "gmi_percent": _gmi(mean),
        **bands,
        "lbgi": _div(rl.sum(axis=-1), p.n),
        "hbgi": _div(rh.sum(axis=-1), p.n),
        "adrr": _adrr(p, days, rl, rh),
        **_gri(bands),
        "j_index": 0.001 * (mean + sd) ** 2,
        "mage_mg_dl": _mage(p, days) if include_mage else np.full(p.n.shape, np.nan),
        "modd_mg_dl": _modd(p, t, step),
        f"conga_{conga_hours:g}h_mg_dl": _conga(p, t, step, float(conga_hours)),
    }
    return out


def cgm_metrics(
    glucose_mg_dl: Glucose,
    mask: Mask = None,
    *,
    time_min: Times = None,
    step_min: float = 5.0,
    span_min: float | None = None,
    conga_hours: float = 1.0,
) -> dict[str, float | bool]:
    r"""All consensus CGM metrics of one record, keyed with their units.

    Keys (see each function for the exact definition and source):

    * ``n_readings`` (observed), ``percent_data`` [%], ``days`` [d], ``sufficient``
      (bool: ≥ 70 % over ≥ 14 days) — [`data_sufficiency`][];
    * ``mean_mg_dl``, ``sd_mg_dl`` (``ddof = 1``), ``cv_percent``, ``gmi_percent``;
    * ``tir_70_180_percent`` ($70 \le G \le 180$), ``titr_70_140_percent``
      ($70 \le G \le 140$), ``tbr_below_70_percent`` ($G < 70$),
      ``tbr_below_54_percent`` ($G < 54$), ``tbr_54_69_percent`` ($54 \le G < 70$),
      ``tar_above_180_percent`` ($G > 180$), ``tar_above_250_percent`` ($G > 250$),
      ``tar_181_250_percent`` ($180 < G \le 250$) — [`time_in_ranges`][];
    * ``lbgi``, ``hbgi``, ``adrr``; ``gri``, ``gri_hypo``, ``gri_hyper``; ``j_index``;
    * ``mage_mg_dl``, ``modd_mg_dl``, ``conga_1h_mg_dl`` (the key carries
      ``conga_hours``).

    Censored ``Low``/``High`` readings, stored at the device limit, count at the limit.

    Args:
        glucose_mg_dl: Glucose [mg/dL], shape ``[times]``.
        mask: ``True`` where a reading is observed; ``None`` = all finite readings.
        time_min: Reading times [min] since local midnight of day 0 (regular or
            irregular); ``None`` = regular grid ``0, step_min, ...``.
        step_min: Sampling interval [min].
        span_min: Period length [min] for data sufficiency (default: span of the times).
        conga_hours: Lag of CONGA [h].

    Returns:
        A dict of floats (``sufficient`` is a bool); ``nan`` where undefined.

    References:
        Battelino et al., Diabetes Care 2019;42:1593; and the references of each metric.
    """
    g = np.asarray(glucose_mg_dl, dtype=float)
    if g.ndim != 1:
        raise InputError(
            f"expected one record, got an array of shape {g.shape}",
            field="glucose_mg_dl",
            expected="a 1-D [times] array (cgm_metrics_batch takes [patients, times])",
        )
    m = None if mask is None else np.asarray(mask)[None]
    if m is not None and m.shape != (1, g.size):
        raise InputError(
            f"mask has shape {m.shape[1:]} but glucose has shape {g.shape}",
            field="mask",
            expected=f"a boolean array of shape {g.shape}",
        )
    out = cgm_metrics_batch(
        g[None],
        m,
        time_min=time_min,
        step_min=step_min,
        span_min=span_min,
        conga_hours=conga_hours,
    )
    return {k: _out(v[0]) for k, v in out.items()}
