"""One patient's fitting problem: day-windows of CGM, inputs, and the weighted residuals.

The record is cut into calendar-day windows (multiple shooting). Each window is simulated
on its own, from a consistent state ``warmup_min`` before midnight (the fasting state of
the fast model at that window's B and basal rate, with its glucose scaled by a per-window
factor that is estimated), so windows are independent given the parameters and are
evaluated in parallel with ``vmap``.

Unknowns: *global* g = [log of each estimated `Params` field, log B at each knot of the
graft trajectory, standardised gain and offset of each CGM sensor session]; *local* l_w = [log initial-glucose factor, log daily factors on
insulin sensitivity, meal absorption and insulin absorption (those enabled in `Prior`),
log carbohydrate of each latent meal slot (if meals are latent)].
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool, Float
from .._errors import DataWarning, InputError
from ..data import PatientData, resample
from ..model import (
    MIN_PER_DAY,
    Inputs,
    Params,
    param_info,
    simulate,
    simulate_grid,
    stable_step,
    steady_state_at_glucose,
    steady_state_glucose,
)
from ..model._inputs import stack_host
from ._config import FitModel, LatentMeals, Prior

__all__ = ["Objective", "PatientWindows", "WindowInfo", "prepare_windows"]

#: Sharpness k [1/log-unit] of the soft physiological bounds of `Objective.params_from`:
#: the saturation takes place within about 1/k = 0.2 (20 %) of a bound. Sharper
#: bounds (k = 20) left a population fit's rounds noisier (the Gauss–Newton Hessian of
#: a patient near a bound still changed fast with θ).
_BOUND_SHARPNESS = 5.0


def soft_bounded(name: str, theta):
    """θ' of `Objective.params_from`: log(``name``) held softly inside its bounds.

    Monotone in θ, so an interval of θ maps to the interval of θ'. Works on numpy and
    JAX values alike.

    Args:
        name: A `Params` field with bounds in `param_info`.
        theta: Log of the value [log units].
    """
    row = next(r for r in param_info() if r["name"] == name)
    lo, hi = float(np.log(max(row["lower"], 1e-12))), float(np.log(row["upper"]))
    k = _BOUND_SHARPNESS
    xp = jnp if isinstance(theta, jax.Array) else np
    soft = lambda x: xp.logaddexp(0.0, k * x) / k  # noqa: E731  (softplus)
    return lo + soft(hi - soft(hi - theta) - lo)


class PatientWindows(eqx.Module):
    """Arrays of one patient's fit (windows padded to a bucket size).

    Device arrays, or numpy arrays on the host (`prepare_windows` with ``host=True``).

    Attributes:
        ts: Reading (or slot) times of each window [min since the reference].
        obs: Observed glucose [mg/dL] (censored readings at the device limit).
        mask: True where a reading is observed.
        censor: -1 'Low', +1 'High', 0 exact.
        t0: Start of each window's solve (midnight minus the warm-up) [min].
        study_day: Study day of each window's middle [day].
        graft_on: False for windows before the infusion (B = 0 there).
        valid: False for padding windows.
        interp: Weights of the log-B knots for each window ``[W, K]``.
        knot_days: Study days of the knots [day].
        knot_valid: False for padding knots.
        slots: Times of latent meal slots per window [min] (``[W, 0]`` without).
        session: Sensor session of each window, one-hot ``[W, S]`` (zero rows for
            padding windows).
        inputs: Recorded meals, boluses and basal insulin of each window (model
            units, stacked ``[W, events]``; only the events inside the window's solve,
            plus the basal rate in effect at its start).
    """

    ts: Float[Array, "windows times"]
    obs: Float[Array, "windows times"]
    mask: Bool[Array, "windows times"]
    censor: Array
    t0: Float[Array, " windows"]
    study_day: Float[Array, " windows"]
    graft_on: Bool[Array, " windows"]
    valid: Bool[Array, " windows"]
    interp: Float[Array, "windows knots"]
    knot_days: Float[Array, " knots"]
    knot_valid: Bool[Array, " knots"]
    slots: Float[Array, "windows slots"]
    session: Float[Array, "windows sessions"]
    inputs: Inputs


@dataclasses.dataclass(frozen=True)
class WindowInfo:
    """Host-side facts about a prepared patient (for reports).

    Attributes:
        patient_id: The patient's id.
        reference_time: t = 0 of the record (local midnight before the first reading).
        day_index: Calendar day of each real window (days since the reference).
        transplant_day: Infusion day in days since the reference, or None.
        n_windows: Number of real (not padding) windows.
        n_knots: Number of real knots.
        weight_kg: Body weight used [kg].
        study_day_offset: Study day = days since the reference minus this [day].
        session: Sensor session of each real window.
    """

    patient_id: str
    reference_time: object
    day_index: np.ndarray
    transplant_day: float | None
    n_windows: int
    n_knots: int
    weight_kg: float
    study_day_offset: float
    session: np.ndarray


def _basal_timeline(patient: PatientData) -> tuple[np.ndarray, np.ndarray]:
    """Pump basal segments plus long-acting injections as one piecewise-constant rate.

    A long-acting (basal analogue) injection of D units is represented as D/24 U/h for
    the 24 h after it (the flat profile of glargine/degludec). Unknown pump rates (NaN)
    count as 0 with a warning.
    """
    seg_t = np.asarray(patient.basal.time_min, float)
    seg_r = np.asarray(patient.basal.rate_u_per_h, float)
    if np.isnan(seg_r).any():
        warnings.warn(
            f"{patient.patient_id}: {int(np.isnan(seg_r).sum())} basal segments with an "
            "unknown rate are taken as 0 U/h",
            DataWarning,
            stacklevel=3,
        )
        seg_r = np.nan_to_num(seg_r)
    la_t = np.asarray(patient.long_acting.time_min, float)
    la_u = np.asarray(patient.long_acting.units, float)
    breaks = np.unique(np.concatenate([seg_t, la_t, la_t + MIN_PER_DAY]))
    if breaks.size == 0:
        return np.zeros(0), np.zeros(0)
    if seg_t.size:
        idx = np.searchsorted(seg_t, breaks, side="right") - 1
        pump = np.where(idx >= 0, seg_r[np.clip(idx, 0, None)], 0.0)
    else:
        pump = np.zeros(breaks.size)
    active = (la_t[None, :] <= breaks[:, None]) & (
        breaks[:, None] < la_t[None, :] + MIN_PER_DAY
    )
    rate = pump + (active * la_u[None, :]).sum(axis=1) / 24.0
    keep = np.concatenate([[True], np.diff(rate) != 0])
    return breaks[keep], rate[keep]


def _window_inputs(
    patient, basal_t, basal_r, *, starts, midnights, ends, after_gap, weight_kg
) -> Inputs:
    """One `Inputs` per window with the events in [start, end], stacked and padded.

    Built on the host (numpy leaves, `stack_host`).

    After a gap in the record (the day before a window has no CGM) nothing is known of
    the insulin before the window's midnight: the basal rate in effect at midnight is
    taken to have run through the warm-up too, rather than a rate set days or weeks
    earlier (or none, before the first record).
    """
    carb_t = np.asarray(patient.carbs.time_min, float)
    carb_g = np.asarray(patient.carbs.grams, float)
    bol_t = np.asarray(patient.boluses.time_min, float)
    bol_u = np.asarray(patient.boluses.units, float)
    per_window = []
    for a, m, b, gap in zip(starts, midnights, ends, after_gap, strict=True):
        cm = (carb_t >= a) & (carb_t <= b)
        bm = (bol_t >= a) & (bol_t <= b)
        known = m if gap else a  # rates before this time are not trusted
        inside = (basal_t > known) & (basal_t <= b)
        before = np.flatnonzero(basal_t <= known)
        per_window.append(
            {
                "meal_times": carb_t[cm],
                "meal_carbs_g": carb_g[cm],
                "bolus_times": bol_t[bm],
                "bolus_u": bol_u[bm],
                "basal_times": np.concatenate(
                    [[a] if before.size else [], basal_t[inside]]
                ),
                "basal_u_per_h": np.concatenate(
                    [basal_r[before[-1:]], basal_r[inside]]
                ),
            }
        )
    return stack_host(weight_kg, per_window)


def _where(patient: PatientData) -> str:
    """The patient's source files, for error messages."""
    return ", ".join(str(s) for s in patient.sources) or patient.patient_id


def _bucket(n: int, size: int) -> int:
    return max(size, int(np.ceil(n / size)) * size)


def _sensor_sessions(
    day_index: np.ndarray, day_mask: np.ndarray, first_day: int, model: FitModel
) -> np.ndarray:
    """Sensor session of each kept day (see `FitModel.sensor_days`).

    Args:
        day_index: Kept calendar days (ascending).
        day_mask: Reading mask of every calendar day from ``first_day`` ``[days, slots]``.
        first_day: Calendar day of ``day_mask[0]``.
        model: The fit's configuration.
    """
    flat = day_mask.ravel()
    per_day = day_mask.shape[1]
    long_gap = round(model.sensor_change_gap_min / model.step_min)
    resumed = np.zeros(day_mask.shape[0], bool)  # a long gap ends on this day
    seen = np.flatnonzero(flat)
    if seen.size > 1:
        gaps = np.diff(seen) - 1
        for k in np.flatnonzero(gaps >= long_gap):
            resumed[seen[k + 1] // per_day] = True
    session = np.zeros(day_index.size, int)
    start = day_index[0] if day_index.size else 0
    for w in range(1, day_index.size):
        d = day_index[w]
        if (
            d - day_index[w - 1] > 1
            or d - start >= model.sensor_days
            or resumed[d - first_day]
        ):
            start = d
            session[w] = session[w - 1] + 1
        else:
            session[w] = session[w - 1]
    return session


def prepare_windows(
    patient: PatientData,
    *,
    model: FitModel,
    weight_kg: float | None = None,
    transplant_day: float | None = None,
    window_bucket: int = 8,
    knot_bucket: int = 8,
    host: bool = False,
) -> tuple[PatientWindows, WindowInfo]:
    """Cut a patient's record into day-windows and put everything in model units.

    Args:
        patient: The patient's data (`isletfit.data.read`).
        model: The fit's model configuration.
        weight_kg: Body weight [kg]; 70 kg with a warning when unknown.
        transplant_day: Infusion day in days since ``patient.reference_time``; None
            when unknown (B is then estimated on every day).
        window_bucket: Pad the number of windows to a multiple of this (fewer
            recompilations across patients).
        knot_bucket: Pad the number of knots likewise.
        host: Return the windows as numpy arrays (for stacking many patients on the
            host, `isletfit.fitting.fit_population`) instead of device arrays.

    Returns:
        The padded arrays and host-side information.

    Raises:
        InputError: No day has enough CGM readings to fit.
    """
    if weight_kg is None or not np.isfinite(weight_kg):
        warnings.warn(
            f"{patient.patient_id}: body weight unknown; 70 kg assumed (insulin doses "
            "are per kg in the model)",
            DataWarning,
            stacklevel=2,
        )
        weight_kg = 70.0
    step = float(model.step_min)
    per_day = round(MIN_PER_DAY / step)
    if len(patient.cgm) == 0:
        raise InputError("no CGM readings to fit", field="cgm", file=_where(patient))
    first_day = int(np.floor(patient.cgm.time_min.min() / MIN_PER_DAY))
    last_day = int(np.floor(patient.cgm.time_min.max() / MIN_PER_DAY))
    grid = resample(
        patient,
        step_min=step,
        start_min=first_day * MIN_PER_DAY,
        end_min=(last_day + 1) * MIN_PER_DAY - step,
    )
    n_days = last_day - first_day + 1
    mask = grid.mask.reshape(n_days, per_day)
    coverage = mask.mean(axis=1)
    keep = np.flatnonzero(coverage >= model.min_coverage)
    if keep.size == 0:
        raise InputError(
            f"no day has CGM readings in at least {model.min_coverage:.0%} of its "
            f"{step:g}-minute slots",
            file=_where(patient),
            field="cgm",
            expected="at least one well-covered day of CGM",
        )
    day_index = first_day + keep
    ts = grid.reading_time_min.reshape(n_days, per_day)[keep]
    ts = np.maximum.accumulate(ts, axis=1)
    obs = grid.glucose_mg_dl.reshape(n_days, per_day)[keep]
    msk = mask[keep]
    cens = grid.censored.reshape(n_days, per_day)[keep].astype(np.int32)

    offset = (
        float(transplant_day) if transplant_day is not None else float(day_index[0])
    )
    study_mid = day_index + 0.5 - offset
    graft_on = (
        study_mid >= 0.0 if transplant_day is not None else np.ones(keep.size, bool)
    )
    # knots of log B cover the windows with a graft, from the infusion (or first window)
    on_days = study_mid[graft_on]
    if on_days.size:
        start = 0.0 if transplant_day is not None else float(np.floor(on_days.min()))
        stop = float(on_days.max())
        n_knots = int(np.ceil((stop - start) / model.knot_spacing_days)) + 1
        knots = start + model.knot_spacing_days * np.arange(max(n_knots, 1))
    else:
        knots = np.zeros(1)
    k_pad = _bucket(knots.size, knot_bucket)
    knot_days = np.concatenate(
        [
            knots,
            knots[-1] + model.knot_spacing_days * np.arange(1, k_pad - knots.size + 1),
        ]
    )
    knot_valid = np.arange(k_pad) < knots.size
    interp = np.zeros((keep.size, k_pad))
    for w, d in enumerate(study_mid):  # loop over windows (tens), not readings
        if not graft_on[w]:
            continue
        x = np.clip(d, knots[0], knots[-1])
        j = int(np.clip(np.searchsorted(knots, x, side="right") - 1, 0, knots.size - 1))
        if j == knots.size - 1:
            interp[w, j] = 1.0
        else:
            f = (x - knots[j]) / (knots[j + 1] - knots[j])
            interp[w, j], interp[w, j + 1] = 1.0 - f, f

    # inputs: carbohydrate, boluses, basal (+ long-acting as 24-h basal), cut per window
    # so that each solve searches only its own events
    basal_t, basal_r = _basal_timeline(patient)
    with_cgm = set(first_day + np.flatnonzero(mask.any(axis=1)))
    inputs = _window_inputs(
        patient,
        basal_t,
        basal_r,
        starts=day_index * MIN_PER_DAY - model.warmup_min,
        midnights=day_index * MIN_PER_DAY,
        ends=(day_index + 1) * MIN_PER_DAY,
        after_gap=[d - 1 not in with_cgm for d in day_index],
        weight_kg=weight_kg,
    )
    if isinstance(model.meals, LatentMeals):
        m = model.meals
        hours = np.arange(m.first_hour * 60.0, m.last_hour * 60.0 + 1e-9, m.slot_min)
        day_slots = np.concatenate([hours - MIN_PER_DAY, hours])
        day_slots = day_slots[day_slots >= -model.warmup_min]
        slots = day_index[:, None] * MIN_PER_DAY + day_slots[None, :]
    else:
        slots = np.zeros((keep.size, 0))

    session = _sensor_sessions(day_index, mask, first_day, model)
    n_sessions = int(session.max()) + 1
    onehot = np.zeros((keep.size, _bucket(n_sessions, 4)))
    onehot[np.arange(keep.size), session] = 1.0

    w_pad = _bucket(keep.size, window_bucket)
    pad = w_pad - keep.size

    def padded(x, fill):
        if pad == 0:
            return x
        extra = (
            np.repeat(x[-1:], pad, axis=0)
            if fill is None
            else np.full((pad, *x.shape[1:]), fill, x.dtype)
        )
        return np.concatenate([x, extra], axis=0)

    windows = PatientWindows(
        ts=padded(ts, None),
        obs=padded(obs, None),
        mask=padded(msk, False),
        censor=padded(cens, 0),
        t0=padded(day_index * MIN_PER_DAY - model.warmup_min, None),
        study_day=padded(study_mid, None),
        graft_on=padded(graft_on, False),
        valid=np.arange(w_pad) < keep.size,
        interp=padded(interp, 0.0),
        knot_days=knot_days,
        knot_valid=knot_valid,
        slots=padded(slots, None),
        session=padded(onehot, 0.0),
        inputs=jax.tree.map(lambda x: padded(x, None), inputs),
    )
    if not host:
        windows = jax.tree.map(jnp.asarray, windows)
    info = WindowInfo(
        patient_id=patient.patient_id,
        reference_time=patient.reference_time,
        day_index=day_index,
        transplant_day=transplant_day,
        n_windows=int(keep.size),
        n_knots=int(knots.size),
        weight_kg=float(weight_kg),
        study_day_offset=offset,
        session=session,
    )
    return windows, info


# --------------------------------------------------------------------------- residuals
class Objective(eqx.Module):
    """Weighted residuals of one patient (see the module docstring for the unknowns).

    Attributes:
        windows: The prepared data.
        model: Model configuration.
        prior: Priors.
    """

    windows: PatientWindows
    model: FitModel
    prior: Prior

    @property
    def n_params(self) -> int:
        """Number of estimated `Params` fields."""
        return len(self.prior.estimated)

    @property
    def n_knots(self) -> int:
        """Number of log-B knots (padded)."""
        return self.windows.knot_days.shape[0]

    @property
    def n_sessions(self) -> int:
        """Number of sensor sessions (padded)."""
        return self.windows.session.shape[1]

    @property
    def daily_effects(self) -> tuple[tuple[tuple[str, ...], float], ...]:
        """The day-window effects in use: (fields scaled, prior log-SD) each."""
        prior = self.prior
        effects = [
            (("vmx",), prior.daily_sensitivity_log_sd),
            (("kmax", "kmin", "kabs"), prior.daily_meal_absorption_log_sd),
            (("kd", "ka1", "ka2"), prior.daily_insulin_absorption_log_sd),
        ]
        return tuple((fields, sd) for fields, sd in effects if sd > 0)

    @property
    def n_local(self) -> int:
        """Local unknowns per window: glucose, daily effects, latent meals."""
        return self.meal_start + self.windows.slots.shape[1]

    @property
    def meal_start(self) -> int:
        """Index of the first latent meal in the local vector."""
        return 1 + len(self.daily_effects)

    def params_from(self, theta: Float[Array, " p"]) -> Params:
        r"""`Params` with the estimated fields set to exp(theta), softly bounded.

        Values are confined to each field's physiological bounds (`param_info`), so a
        trial step of the optimiser can never hand the solver an absurd, stiff model.
        The bounds are smooth, on the log scale: with $s(x) = \log(1 + e^{kx})/k$,
        $\theta' = \ell + s(h - s(h - \theta) - \ell)$ for $\ell, h$ the logs of the
        bounds and k = `_BOUND_SHARPNESS`. Inside the bounds θ' = θ to within
        $e^{-k d}/k$ at a distance d from the nearer one (1.3e-3 at d = 1, a factor
        e); beyond them the value saturates with a slope that fades smoothly. A hard
        clip made the data's information about θ vanish at once beyond a bound: a
        patient whose data pulled it there had an objective with a kink, a
        Gauss–Newton Hessian that jumped between rounds of a population fit (the
        Laplace SD of its ``kabs`` switching between the prior's 0.8 and the data's
        0.3 at θ ± 1e-4, which kept ω from settling) and an ill-defined Laplace
        approximation.
        """
        names = self.prior.estimated
        xp = jnp if isinstance(theta, jax.Array) else np  # numpy stays on the host
        values = [xp.exp(soft_bounded(n, theta[i])) for i, n in enumerate(names)]
        return eqx.tree_at(
            lambda p: tuple(getattr(p, n) for n in names),
            self.model.params,
            tuple(values),
        )

    def prior_centre(self) -> Float[Array, " p"]:
        """Log of the model's values of the estimated fields (the prior medians)."""
        return jnp.log(
            jnp.stack([getattr(self.model.params, n) for n in self.prior.estimated])
        )

    def split(self, g: Float[Array, " ng"]):
        """``(theta, knots, calibration [S, 2])`` of the global vector."""
        p, k = self.n_params, self.n_knots
        return g[:p], g[p : p + k], g[p + k :].reshape(self.n_sessions, 2)

    def to_window(self, g: Float[Array, " ng"]) -> Float[Array, "windows nu"]:
        """Per-window unknowns u_w = [theta, log B_w, sensor gain z, offset z]."""
        p = self.n_params
        theta, knots, cal = self.split(g)
        xp = jnp if isinstance(g, jax.Array) else np  # numpy stays on the host
        interp, session = self.windows.interp, self.windows.session
        if xp is np:
            interp, session = np.asarray(interp), np.asarray(session)
        logb = interp @ knots
        return xp.concatenate(
            [xp.broadcast_to(theta, (logb.shape[0], p)), logb[:, None], session @ cal],
            axis=1,
        )

    def calibrate(self, cgm, cal):
        """Sensor reading from interstitial glucose: gain × IG + offset [mg/dL].

        ``cal`` holds standard-normal scores: gain = exp(σ_gain z₀), offset = σ_off z₁.
        """
        prior = self.prior
        gain = jnp.exp(prior.sensor_gain_log_sd * cal[0])
        return gain * cgm + prior.sensor_offset_sd * cal[1]

    @property
    def field_groups(self) -> tuple[tuple[str, ...], ...]:
        """The `Params` fields the unknowns scale, in the fewest groups that move together.

        Each estimated field (its θ) and each day-window effect (`daily_effects`)
        scales some fields on the log scale. Fields scaled by exactly the same unknowns
        form one group, so the derivative with respect to any of these unknowns is a
        sum of the derivatives with respect to whole groups' log-scales (the chain
        rule; `simulate_window`'s ``log_shift``). Forward-mode Jacobians then carry
        one tangent per group instead of one per unknown. With the default `Prior`:
        the six estimated fields alone, and ka1 with ka2 (scaled together by the daily
        insulin-absorption effect only), 7 groups for 9 unknowns.
        """
        columns = [(n,) for n in self.prior.estimated]
        columns += [fields for fields, _ in self.daily_effects]
        fields = dict.fromkeys(f for c in columns for f in c)
        groups: dict[tuple[bool, ...], list[str]] = {}
        for f in fields:
            groups.setdefault(tuple(f in c for c in columns), []).append(f)
        return tuple(tuple(g) for g in groups.values())

    @property
    def n_shifts(self) -> int:
        """Number of `shifted` directions (groups, log B, glucose factor, meals)."""
        return len(self.field_groups) + 2 + self.windows.slots.shape[1]

    def shifted(self, u, loc, w: int | Array, d: Float[Array, " shifts"]):
        """`simulate_window` at ``(u, loc)`` moved by the shifts ``d``.

        ``d`` holds shifts of the log-scales of the `field_groups`, then of log B, of
        the initial-glucose factor and of each latent meal's log carbohydrate: a
        forward-mode Jacobian with respect to ``d`` at 0 carries one tangent per
        direction that the unknowns move (`shift_columns` maps it to the unknowns).
        """
        p, start, groups = self.n_params, self.meal_start, self.field_groups
        n = len(groups)
        shift = {f: d[c] for c, fields in enumerate(groups) for f in fields}
        u = u.at[p].add(d[n])
        loc = loc.at[0].add(d[n + 1]).at[start:].add(d[n + 2 :])
        return self.simulate_window(u, loc, w, log_shift=shift)

    def shift_columns(self, theta: Float[Array, " p"]):
        """Maps of the `shifted` directions to the unknowns ``(u[: p + 1], loc)``.

        Returns ``(to_u [n_shifts, p + 1], to_l [n_shifts, n_local])``: a Jacobian
        with respect to the shifts, times these, is the Jacobian with respect to θ and
        log B, and to the local unknowns. θ's column is its group's times the slope
        of the soft bounds at ``theta`` (`soft_bounded`); a day-window effect's is the
        sum of the columns of the groups it scales.
        """
        p, start, groups = self.n_params, self.meal_start, self.field_groups
        n, names = len(groups), self.prior.estimated
        group_of = {f: c for c, fields in enumerate(groups) for f in fields}
        to_u = np.zeros((self.n_shifts, p + 1))
        for i, name in enumerate(names):
            to_u[group_of[name], i] = 1.0
        to_u[n, p] = 1.0
        to_l = np.zeros((self.n_shifts, self.n_local))
        to_l[n + 1, 0] = 1.0
        for k, (fields, _) in enumerate(self.daily_effects):
            for c in {group_of[f] for f in fields}:
                to_l[c, 1 + k] = 1.0
        to_l[n + 2 :, start:] = np.eye(self.n_local - start)
        slope = [
            jax.grad(functools.partial(soft_bounded, name))(theta[i])
            for i, name in enumerate(names)
        ]
        slope = jnp.stack([*slope, jnp.ones((), theta.dtype)])
        return to_u * slope[None, :], to_l

    def simulate_window(
        self,
        u,
        loc,
        w: int | Array,
        *,
        forward_mode: bool = True,
        log_shift: dict[str, Array] | None = None,
    ):
        """Simulated CGM of window ``w`` (an index into the windows) [mg/dL].

        ``log_shift`` maps `Params` fields to shifts of their log, applied on top of
        the unknowns' values (zero shifts change nothing; their derivatives are those
        of `field_groups`).
        """
        win = self.windows
        p = self.n_params
        params = self.params_from(u[:p])
        scales = [
            (fields, loc[1 + k]) for k, (fields, _) in enumerate(self.daily_effects)
        ]
        scales += [((f,), d) for f, d in (log_shift or {}).items()]
        for fields, log_factor in scales:
            factor = jnp.exp(log_factor)
            params = eqx.tree_at(
                lambda q, fields=fields: tuple(getattr(q, f) for f in fields),
                params,
                tuple(getattr(params, f) * factor for f in fields),
            )
        b = jnp.where(win.graft_on[w], jnp.exp(u[p]), 0.0)
        t0 = win.t0[w]
        inputs = jax.tree.map(lambda x: x[w], win.inputs)
        if win.slots.shape[1] > 0:
            meals = jnp.exp(loc[self.meal_start :])
            inputs = _with_latent_meals(inputs, win.slots[w], meals)
        basal0 = inputs.basal_rate(t0)
        g_start = steady_state_glucose(params, b=b, basal=basal0) * jnp.exp(loc[0])
        y0 = steady_state_at_glucose(params, g_start, b=b, basal=basal0)
        grid = self.model.grid
        if grid is not None:  # one fused fixed-step loop (see `simulate_grid`)
            sim = simulate_grid(
                params,
                inputs,
                win.ts[w],
                b=b,
                y0=y0,
                t0=t0,
                grid=grid,
                substeps=grid.steps_for(self.model.step_min),
                warmup_steps=grid.steps_for(self.model.warmup_min),
                cgm_only=True,
            )
            return sim.cgm, sim.successful
        # the step bound keeps forward-mode tangents stable (see `stable_step`)
        controller = dfx.PIDController(
            rtol=self.model.rtol, atol=self.model.rtol, dtmax=stable_step(params, b)
        )
        sim = simulate(
            params,
            inputs,
            win.ts[w],
            b=b,
            y0=y0,
            t0=t0,
            save_state=False,
            stepsize_controller=controller,
            max_steps=self.model.max_steps,
            adjoint=dfx.ForwardMode()
            if forward_mode
            else dfx.RecursiveCheckpointAdjoint(),
        )
        return sim.cgm, sim.successful

    def window_residual(
        self, u, loc, w, noise, weights, *, aux: bool = False, forward_mode: bool = True
    ):
        """Weighted residuals of window ``w``: readings then local priors.

        ``noise = (sigma, phi)``: marginal SD of the CGM error [mg/dL] and its AR(1)
        coefficient between consecutive readings. Exact readings are prewhitened, so
        the sum of squares is the exact Gaussian AR(1) likelihood: the first reading of
        each run is e/σ, the next ones (e_t − φ e_{t−1})/(σ√(1−φ²)). Censored readings
        contribute a hinge (only when the model is on the wrong side of the device
        limit). With ``aux=True`` also returns the predicted CGM and solver success;
        ``forward_mode=False`` makes the solve reverse-differentiable (for gradients).
        """
        p = self.n_params
        cgm, ok = self.simulate_window(u[: p + 1], loc, w, forward_mode=forward_mode)
        out, pred = self.residual_from_cgm(cgm, ok, u[p + 1 :], loc, w, noise, weights)
        return (out, pred, ok) if aux else out

    def residual_from_cgm(self, cgm, ok, cal, loc, w, noise, weights):
        """Window residuals given the model's interstitial glucose (see above).

        Returns ``(residuals, predicted CGM readings)``; cheap (no ODE solve), so its
        derivatives with respect to the sensor calibration are taken separately.
        """
        sigma, phi = noise
        win = self.windows
        pred = self.calibrate(cgm, cal)
        obs, mask, cens = win.obs[w], win.mask[w], win.censor[w]
        use = mask & win.valid[w]
        is_exact = use & (cens == 0)
        e = jnp.where(is_exact, (pred - obs) * jnp.sqrt(weights), 0.0)
        prev_exact = jnp.concatenate([jnp.zeros((1,), bool), is_exact[:-1]])
        e_prev = jnp.concatenate([jnp.zeros((1,), e.dtype), e[:-1]])
        innov = (e - phi * e_prev) / jnp.sqrt(1.0 - phi**2)
        exact = jnp.where(prev_exact, innov, e)
        low = jnp.maximum(pred - self.model.low_mg_dl, 0.0)
        high = jnp.maximum(self.model.high_mg_dl - pred, 0.0)
        r = jnp.where(cens < 0, low, jnp.where(cens > 0, high, exact)) / sigma
        r = jnp.where(use, r, 0.0)
        r = jnp.where(ok, r, jnp.nan)
        local = [loc[:1] / self.prior.initial_glucose_log_sd]
        for k, (_, sd) in enumerate(self.daily_effects):
            local.append(loc[1 + k : 2 + k] / sd)
        if win.slots.shape[1] > 0:
            mean = self.model.meals.prior_mean_g
            local.append(jnp.sqrt(2.0 / mean) * jnp.exp(0.5 * loc[self.meal_start :]))
        return jnp.concatenate([r, *local]), pred

    def global_residual(self, g):
        """Prior residuals of the global unknowns."""
        win, prior = self.windows, self.prior
        theta, knots, cal = self.split(g)
        r_theta = (theta - self.prior_centre()) / jnp.asarray(prior.log_sd)
        first = jnp.argmax(win.knot_valid)
        r_level = ((knots[first] - jnp.log(prior.graft_median)) / prior.graft_log_sd)[
            None
        ]
        dt = jnp.diff(win.knot_days)
        pair = win.knot_valid[1:]
        r_rw = jnp.where(
            pair, jnp.diff(knots) / (prior.graft_rw_sigma * jnp.sqrt(dt)), 0.0
        )
        r_pad = jnp.where(win.knot_valid, 0.0, knots)  # padding knots stay at 0
        return jnp.concatenate([r_theta, r_level, r_rw, r_pad, cal.ravel()])


def _with_latent_meals(inputs: Inputs, slot_t, grams) -> Inputs:
    """Add latent meal slots (carbohydrate [g]) to the recorded meals of a window."""
    t = jnp.concatenate([inputs.meal_t, slot_t])
    m = jnp.concatenate([inputs.meal, grams * 1000.0 / inputs.weight_kg])
    order = jnp.argsort(t)
    return eqx.tree_at(lambda x: (x.meal_t, x.meal), inputs, (t[order], m[order]))
