r"""The simulation of one virtual patient's year, written for one patient and vmapped.

The follow-up is a sequence of simulated days (`VisitPlan`): each visit's CGM block and
short titration check-ins between visits. Days are simulated in order (a ``lax.scan``
over days, so that the clinic's titration can react to what happened), and every day
is cut at the person's decision points — fixed CGM checks (every 3 h) and the main
meals' bolus decisions — into segments solved one after another (a ``lax.scan`` over
segments) with the fast model (`isletfit.model.vector_field`, integrated as in
`isletfit.model.simulate`; see `_solve_segment`). At the start of a segment
the person looks at the CGM: takes carbohydrate for a low, and, at a meal, a bolus
computed from the counted carbohydrate and the correction factor, scaled by the
clinic's titration. Consecutive days carry the full state over midnight; the first day
of a block or check-in starts from the fasting steady state. Each day has its own
insulin sensitivity (``vmx`` times the day's factor) and graft function B (the graft
trajectory at mid-day).

A solver failure in a segment marks the patient as failed (the day and the diffrax
result are recorded); the patient's remaining segments are then skipped (solved over
zero length), so the rest of the batch is unaffected and loses no time.
"""

from __future__ import annotations

import dataclasses
import itertools

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Bool, Float, Int
from ..model import (
    PMOL_PER_U,
    FixedGrid,
    Inputs,
    Params,
    State,
    steady_state,
    vector_field,
)
from ..model._grid import grid_solve
from ._labs import (
    MixedMealTest,
    MixedMealTestResult,
    hba1c_trajectory,
    mixed_meal_test,
)
from ._life import DailyLife, sample_day
from ._population import Population, VirtualPatients
from ._sensor import SensorModel, sensor_readings
from ._titration import ReviewData, TitrationProtocol, TitrationState, review

__all__ = ["VisitPlan"]

_MIN_PER_DAY = 1440.0
_STEP = 5.0
_PER_DAY = 288
#: Largest number of 5-min grid points in one segment (checks are <= 3 h apart).
_SEG_POINTS = 36


@dataclasses.dataclass(frozen=True)
class VisitPlan:
    """When the virtual trial looks at its patients.

    Visit ``v`` opens a CGM block of ``block_days`` days starting on its day (the
    baseline visit's block ends the day before the infusion on day 0). Between blocks,
    one-day titration check-ins every ``checkin_every_days`` let the clinic follow the
    graft (their CGM days are simulated but not reported). The clinic reviews the CGM
    at every check-in and every ``review_every_days`` within a block.

    Attributes:
        visit_days: Day of each visit [day after infusion]; the first is the baseline.
        block_days: CGM days per visit [day].
        checkin_every_days: Spacing of titration check-ins [day] (0: none).
        review_every_days: Spacing of reviews within a block [day].
    """

    visit_days: tuple[int, ...] = (-14, 30, 90, 180, 270, 365)
    block_days: int = 14
    checkin_every_days: int = 14
    review_every_days: int = 7

    def __post_init__(self):
        v = list(self.visit_days)
        if v != sorted(v) or len(set(v)) != len(v) or not v:
            raise ValueError(f"VisitPlan.visit_days must ascend, got {v}")
        if any(b - a < self.block_days for a, b in itertools.pairwise(v)):
            raise ValueError("VisitPlan: visit blocks must not overlap")
        if self.block_days < 1:
            raise ValueError("VisitPlan.block_days must be >= 1")

    def schedule(self) -> dict[str, np.ndarray]:
        """The simulated days and their roles (host-side numpy arrays).

        Returns:
            ``day`` (int, ascending), ``visit`` (visit index of a block day, -1 for a
            check-in), ``review`` (bool), ``consecutive`` (bool: the previous
            simulated day is the day before).
        """
        block = {}
        for i, v in enumerate(self.visit_days):
            for k in range(self.block_days):
                block[v + k] = (i, (k + 1) % self.review_every_days == 0)
        days = dict(block)
        if self.checkin_every_days > 0:
            last = self.visit_days[-1]
            for d in range(self.checkin_every_days, last, self.checkin_every_days):
                if d not in days and d > self.visit_days[0] + self.block_days - 1:
                    days[d] = (-1, True)
        order = sorted(days)
        day = np.asarray(order, dtype=np.int64)
        visit = np.asarray([days[d][0] for d in order], dtype=np.int64)
        rev = np.asarray([days[d][1] for d in order], dtype=bool)
        for i in range(len(self.visit_days)):  # a review closes every block
            rev[np.flatnonzero(visit == i)[-1]] = True
        consecutive = np.r_[False, np.diff(day) == 1]
        return {"day": day, "visit": visit, "review": rev, "consecutive": consecutive}


@dataclasses.dataclass(frozen=True)
class _Config:
    population: Population
    visits: VisitPlan
    titration: TitrationProtocol
    sensor: SensorModel
    mmtt: MixedMealTest
    max_steps: int


class DayOutput(eqx.Module):
    """What one simulated day of one patient produced."""

    ig: Float[Array, " 288"]
    glucose: Float[Array, " 288"]
    meal_t: Float[Array, " meals"]
    meal_g: Float[Array, " meals"]
    bolus_t: Float[Array, " boluses"]
    bolus_u: Float[Array, " boluses"]
    basal_u_per_h: Float[Array, ""]
    insulin_u: Float[Array, ""]
    mean_glucose: Float[Array, ""]
    hours_below_54: Float[Array, ""]
    on_insulin: Bool[Array, ""]
    basal_scale: Float[Array, ""]
    bolus_scale: Float[Array, ""]
    b: Float[Array, ""]
    ok: Bool[Array, ""]
    result: Int[Array, ""]
    num_steps: Int[Array, ""]


def _observed(t, y, args):
    return y.gp, y.gs


def _solve_segment(
    params: Params,
    inputs: Inputs,
    b,
    y0: State,
    t0,
    t1,
    ts,
    solver,
    controller,
    max_steps: int,
):
    """One segment of the fast model: glucose at ``ts`` and the full state at ``t1``.

    The same formulation as `isletfit.model.simulate` (meals and boluses as impulses
    handled by shifting the state by the doses given since ``t0``, the solver stepping
    onto every event), but saving only plasma and interstitial glucose on the output
    grid plus the full state at the end (``diffrax.SubSaveAt``): the segment-by-segment
    simulation needs the end state to continue, and saving all 14 compartments at
    every reading costs about a third of the run time.

    With a `FixedGrid` as ``solver`` (``controller`` unused) the segment is
    integrated by `grid_solve` (isletfit/model/_grid.py) instead: fixed steps on the output
    grid, every input event merged into it, and one more output interval that ends
    at ``t1`` (a segment longer than its outputs gets longer steps there, which the
    grid's stability check reports as a failure rather than integrating unstably).

    Returns:
        ``(glucose [mg/dL], interstitial [mg/dL], end state, result, num_steps)``.
    """
    if isinstance(solver, FixedGrid):
        sim, end = grid_solve(
            params,
            inputs,
            jnp.concatenate([ts, jnp.reshape(t1, (1,))]),
            b=b,
            y0=y0,
            t0=t0,
            grid=solver,
            substeps=solver.steps_for(_STEP),
            warmup_steps=solver.steps_for(_STEP),
        )
        return sim.glucose[:-1], sim.cgm[:-1], end, sim.result, sim.num_steps
    schedule = inputs.schedule(t0)

    def field(t, ytilde, args):
        meal, bolus = schedule.doses(t)
        y = eqx.tree_at(
            lambda s: (s.qsto1, s.isc1),
            ytilde,
            (ytilde.qsto1 + meal, ytilde.isc1 + bolus),
        )
        return vector_field(t, y, (params, schedule, b))

    if isinstance(controller, dfx.AbstractAdaptiveStepSizeController):
        controller = dfx.ClipStepSizeController(
            controller, jump_ts=inputs.event_times()
        )
    sol = dfx.diffeqsolve(
        dfx.ODETerm(field),
        solver,
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        saveat=dfx.SaveAt(
            subs=[dfx.SubSaveAt(ts=ts, fn=_observed), dfx.SubSaveAt(t1=True)]
        ),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
    )
    (gp, gs), end = sol.ys
    meal, bolus = schedule.doses(t1)
    end = jax.tree.map(lambda x: x[-1], end)
    end = eqx.tree_at(
        lambda s: (s.qsto1, s.isc1), end, (end.qsto1 + meal, end.isc1 + bolus)
    )
    return gp / params.vg, gs, end, sol.result, sol.stats["num_steps"]


def _round_to(x, step):
    return jnp.round(x / step) * step


def _tree_where(cond, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _simulate_day(
    cfg: _Config,
    patient: VirtualPatients,
    carry,
    day,
    b,
    consecutive,
    key,
    solver,
    controller,
):
    """One day of one patient (see the module docstring)."""
    life: DailyLife = cfg.population.life
    bb = life.bolus
    y, prev_t, prev_g, tit, dead = carry
    dtype = patient.weight_kg.dtype
    start = day * _MIN_PER_DAY
    plan = sample_day(
        life,
        day,
        appetite=patient.appetite,
        count_bias=patient.count_bias,
        key=key,
    )
    base = patient.params
    params_day: Params = base.replace(
        kmax=base.kmax * plan.meal_absorption,
        kabs=base.kabs * plan.meal_absorption,
        kd=base.kd * plan.insulin_absorption,
        ka2=base.ka2 * plan.insulin_absorption,
    )
    params = params_day.replace(vmx=base.vmx * plan.sensitivity[0])
    increment = jnp.where(patient.pump, bb.pump_increment_u, bb.pen_increment_u)
    basal_u_h = jnp.where(tit.on_insulin, patient.basal_u_per_h * tit.basal_scale, 0.0)
    basal_u_h = jnp.where(
        patient.pump, _round_to(basal_u_h, 0.05), jnp.round(basal_u_h * 24.0) / 24.0
    )
    basal_pmol = basal_u_h * PMOL_PER_U / 60.0 / patient.weight_kg
    y_rest = steady_state(params, b=b, basal=basal_pmol)
    y = _tree_where(consecutive, y, y_rest)
    prev_t = jnp.where(consecutive, prev_t, jnp.inf)
    prev_g = jnp.where(consecutive, prev_g, 0.0)

    checks = start + 60.0 * jnp.asarray(life.check_times_h, dtype)
    bounds = jnp.sort(jnp.concatenate([checks, plan.decision_t]))
    ends = jnp.concatenate([bounds[1:], jnp.reshape(start + _MIN_PER_DAY, (1,))])
    nm = plan.decision_t.shape[0]
    meal_bolus_t = plan.decision_t + jnp.maximum(plan.bolus_delay, 0.0)
    bed_t = start + 60.0 * bb.bedtime_h
    bolus_t = jnp.concatenate([meal_bolus_t, jnp.reshape(bed_t, (1,))])
    n_seg = bounds.shape[0]
    hypo = life.hypo
    night = (hypo.night_h[0] * 60.0, hypo.night_h[1] * 60.0)
    meal_order = jnp.argsort(plan.meal_t)
    day_meal_t = plan.meal_t[meal_order]
    day_meal_g = plan.meal_g[meal_order]
    n_meals = day_meal_t.shape[0]

    def segment(c, s):
        y, ctx_t, ctx_g, bolus_u, rescue_g, ig_grid, g_grid, dec_ig, ok, res, nsteps = c
        t0 = bounds[s]
        # after a failure the patient's remaining segments are not solved (zero
        # length), so that one failed patient costs the batch no more steps
        t1 = jnp.where(dead | ~ok, t0, ends[s])
        ig0 = y.gs
        clock = t0 - start
        p_treat = jnp.where(
            (clock >= night[0]) & (clock < night[1]), hypo.p_night, hypo.p_day
        )
        treat = (ig0 < hypo.below) & (t1 > t0) & (plan.treat_u[s] < p_treat)
        rescue = jnp.where(treat, hypo.carbs_g, 0.0)
        rescue_g = rescue_g.at[s].set(rescue)
        # meal boluses decided at this segment's start
        decide = (plan.decision_t >= t0) & (plan.decision_t < t1)
        counted = plan.main_g * plan.count_factor
        corr = jnp.where(
            (ig0 > bb.correction_above) & ~treat,
            (ig0 - bb.correction_target) / patient.correction_mg_dl_per_u,
            0.0,
        )
        dose = tit.bolus_scale * (counted / patient.carb_ratio_g_per_u + corr)
        dose = jnp.where(plan.missed | (plan.main_g <= 0) | ~tit.on_insulin, 0.0, dose)
        dose = _round_to(jnp.maximum(dose, 0.0), increment)
        bolus_u = bolus_u.at[:nm].set(jnp.where(decide, dose, bolus_u[:nm]))
        dec_ig = jnp.where(decide, ig0, dec_ig)
        # bedtime correction
        bed = (bed_t >= t0) & (bed_t < t1)
        bed_dose = (
            tit.bolus_scale
            * bb.bedtime_fraction
            * (ig0 - bb.correction_target)
            / patient.correction_mg_dl_per_u
        )
        bed_dose = jnp.where(
            (ig0 > bb.bedtime_above) & (plan.bedtime_u < bb.p_bedtime) & tit.on_insulin,
            _round_to(jnp.maximum(bed_dose, 0.0), increment),
            0.0,
        )
        bolus_u = bolus_u.at[nm].set(jnp.where(bed, bed_dose, bolus_u[nm]))
        # this segment's inputs, as few events as possible (each costs solver time):
        # the last meal before it (for gastric emptying only; not dosed again), a
        # hypoglycaemia treatment at its start, and the (at most two) meals and the
        # boluses inside [t0, t1)
        i0 = jnp.searchsorted(day_meal_t, t0, side="left")
        i1 = jnp.minimum(i0 + 1, n_meals - 1)
        i0c = jnp.minimum(i0, n_meals - 1)
        m1_in = (i0 < n_meals) & (day_meal_t[i0c] < t1)
        m2_in = (i0 + 1 < n_meals) & (day_meal_t[i1] < t1)
        mt = jnp.stack(
            [
                ctx_t,
                jnp.where(rescue > 0, t0, jnp.inf),
                jnp.where(m1_in, day_meal_t[i0c], jnp.inf),
                jnp.where(m2_in, day_meal_t[i1], jnp.inf),
            ]
        )
        mg = jnp.stack(
            [
                ctx_g,
                rescue,
                jnp.where(m1_in, day_meal_g[i0c], 0.0),
                jnp.where(m2_in, day_meal_g[i1], 0.0),
            ]
        )
        order = jnp.argsort(mt)
        mt, mg = mt[order], mg[order]
        bt = jnp.where(
            (bolus_t >= t1) | (bolus_t < t0) | (bolus_u <= 0), jnp.inf, bolus_t
        )
        bu = jnp.where(jnp.isinf(bt), 0.0, bolus_u)
        border = jnp.argsort(bt)
        inputs = Inputs(
            weight_kg=patient.weight_kg,
            meal_times=mt,
            meal_carbs_g=mg,
            bolus_times=bt[border],
            bolus_u=bu[border],
            basal_times=jnp.reshape(start, (1,)),
            basal_u_per_h=jnp.reshape(basal_u_h, (1,)),
        )
        g0 = jnp.ceil((t0 - start) / _STEP - 1e-9)
        idx = g0 + jnp.arange(_SEG_POINTS, dtype=dtype)
        grid_t = start + _STEP * idx
        glucose, ig, y_end, result, steps = _solve_segment(
            params_day.replace(vmx=base.vmx * plan.sensitivity[s]),
            inputs,
            b,
            y,
            t0,
            t1,
            jnp.minimum(grid_t, t1),
            solver,
            controller,
            cfg.max_steps,
        )
        valid = grid_t < t1
        where_idx = jnp.where(valid, idx, _PER_DAY).astype(jnp.int32)
        ig_grid = ig_grid.at[where_idx].set(ig, mode="drop")
        g_grid = g_grid.at[where_idx].set(glucose, mode="drop")
        success = result == dfx.RESULTS.successful
        y_end = _tree_where(success, y_end, y_rest)
        res = jnp.where(ok & ~success, result._value, res)
        ok = ok & success
        nsteps = nsteps + steps
        # the last meal eaten before t1 is the next segment's context
        eaten = (mg > 0) & (mt < t1)
        last = jnp.argmax(jnp.where(eaten, mt, -jnp.inf))
        ctx_t = jnp.where(eaten.any(), mt[last], ctx_t)
        ctx_g = jnp.where(eaten.any(), mg[last], ctx_g)
        return (
            y_end,
            ctx_t,
            ctx_g,
            bolus_u,
            rescue_g,
            ig_grid,
            g_grid,
            dec_ig,
            ok,
            res,
            nsteps,
        ), None

    init = (
        y,
        prev_t,
        prev_g,
        jnp.zeros(nm + 1, dtype),
        jnp.zeros(n_seg, dtype),
        jnp.full(_PER_DAY, jnp.nan, dtype),
        jnp.full(_PER_DAY, jnp.nan, dtype),
        jnp.full(nm, jnp.nan, dtype),
        jnp.ones((), bool),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
    )
    (
        (y, prev_t, prev_g, bolus_u, rescue_g, ig, glucose, dec_ig, ok, res, nsteps),
        _,
    ) = jax.lax.scan(segment, init, jnp.arange(n_seg))
    meal_t = jnp.concatenate([plan.meal_t, jnp.where(rescue_g > 0, bounds, jnp.inf)])
    meal_g = jnp.concatenate([plan.meal_g, rescue_g])
    eaten = jnp.isfinite(meal_t) & (meal_g > 0)
    bolus_t_out = jnp.where(bolus_u > 0, bolus_t, jnp.nan)

    # review data of the day (interstitial glucose, as the clinic sees it)
    main_meal_t = plan.decision_t + jnp.maximum(-plan.bolus_delay, 0.0)
    post_idx = jnp.clip(
        jnp.round((main_meal_t + 120.0 - start) / _STEP), 0, _PER_DAY - 1
    ).astype(jnp.int32)
    has_post = plan.main_g > 0
    post = ig[post_idx]
    p = cfg.titration
    fasting = dec_ig[0]
    data = ReviewData(
        n=jnp.asarray(_PER_DAY, dtype),
        below_70=jnp.sum(ig < 70.0).astype(dtype),
        below_54=jnp.sum(ig < 54.0).astype(dtype),
        above_180=jnp.sum(ig > 180.0).astype(dtype),
        fasting_n=jnp.ones((), dtype),
        fasting_sum=fasting,
        fasting_high=(fasting > p.fasting_limit).astype(dtype),
        post_n=jnp.sum(has_post).astype(dtype),
        post_sum=jnp.sum(jnp.where(has_post, post, 0.0)),
        post_high=jnp.sum(has_post & (post > p.post_meal_limit)).astype(dtype),
    )
    out = DayOutput(
        ig=ig.astype(jnp.float32),
        glucose=glucose.astype(jnp.float32),
        meal_t=jnp.where(eaten, meal_t, jnp.nan),
        meal_g=jnp.where(eaten, meal_g, 0.0),
        bolus_t=bolus_t_out,
        bolus_u=bolus_u,
        basal_u_per_h=basal_u_h,
        insulin_u=basal_u_h * 24.0 + jnp.sum(bolus_u),
        mean_glucose=jnp.mean(glucose),
        hours_below_54=jnp.sum(glucose < 54.0).astype(dtype) * _STEP / 60.0,
        on_insulin=tit.on_insulin,
        basal_scale=tit.basal_scale,
        bolus_scale=tit.bolus_scale,
        b=b,
        ok=ok,
        result=res,
        num_steps=nsteps,
    )
    return (y, prev_t, prev_g, dead | ~ok), data, out


class PatientOutput(eqx.Module):
    """Everything simulated for one patient (leading axes: days, visits, ...)."""

    days: DayOutput
    cgm: Float[Array, "days 288"]
    censored: Int[Array, "days 288"]
    mmtt: MixedMealTestResult
    hba1c_daily: Float[Array, " all_days"]
    severe_hypo_daily: Int[Array, " all_days"]
    b_daily: Float[Array, " all_days"]


def _simulate_patient(
    cfg: _Config, patient: VirtualPatients, key, solver, controller
) -> PatientOutput:
    sched = cfg.visits.schedule()
    days = jnp.asarray(sched["day"], float)
    dtype = patient.weight_kg.dtype
    days = days.astype(dtype)
    is_review = jnp.asarray(sched["review"])
    consecutive = jnp.asarray(sched["consecutive"])
    k_life, k_sensor, k_insert, k_hypo, k_prior, k_place = jax.random.split(key, 6)
    # the graft trajectory, solved once for every day it is needed on
    first_day, last_day = int(sched["day"][0]), int(sched["day"][-1])
    all_days = jnp.arange(first_day - 365, last_day + 1, dtype=dtype)
    visit_days = jnp.asarray(cfg.visits.visit_days, dtype)
    b_all = patient.graft(jnp.concatenate([all_days + 0.5, visit_days]))
    b_visit = b_all[all_days.shape[0] :]
    b_all = b_all[: all_days.shape[0]]
    b_days = b_all[jnp.asarray(sched["day"] - (first_day - 365))]
    y0 = steady_state(patient.params, b=0.0, basal=0.0)
    tit0 = TitrationState.initial(dtype)
    proto = cfg.titration

    def step(carry, x):
        y, prev_t, prev_g, tit, acc, dead = carry
        day, b, rev, cons = x
        k_day = jax.random.fold_in(k_life, day.astype(jnp.int32) + 100_000)
        (y, prev_t, prev_g, dead), data, out = _simulate_day(
            cfg,
            patient,
            (y, prev_t, prev_g, tit, dead),
            day,
            b,
            cons,
            k_day,
            solver,
            controller,
        )
        acc = acc + data
        reviewed = review(proto, tit, acc, patient.basal_fraction)
        apply = rev & (day >= proto.start_day)
        tit = _tree_where(apply, reviewed, tit)
        acc = _tree_where(rev, ReviewData.zeros(dtype), acc)
        return (y, prev_t, prev_g, tit, acc, dead), out

    carry0 = (
        y0,
        jnp.asarray(jnp.inf, dtype),
        jnp.zeros((), dtype),
        tit0,
        ReviewData.zeros(dtype),
        jnp.zeros((), bool),
    )
    _, out = jax.lax.scan(step, carry0, (days, b_days, is_review, consecutive))

    # CGM sensor over all simulated readings, in time order
    times = (
        days[:, None] * _MIN_PER_DAY
        + _STEP * jnp.arange(_PER_DAY, dtype=dtype)[None, :]
    )
    life_min = cfg.sensor.lifetime_days * _MIN_PER_DAY
    first = times[0, 0] - jax.random.uniform(k_insert, (), dtype, 0.0, life_min)
    sensor = sensor_readings(
        cfg.sensor,
        out.ig.astype(dtype).ravel(),
        times.ravel(),
        first_insertion_min=first,
        key=k_sensor,
    )
    shape = (days.shape[0], _PER_DAY)

    # labs at the visits: mixed-meal test on the visit day
    first_day_of_visit = np.asarray(
        [np.flatnonzero(sched["visit"] == i)[0] for i in range(len(visit_days))]
    )
    basal_at_visit = out.basal_u_per_h[first_day_of_visit]
    mmtt = jax.vmap(
        lambda b, basal: mixed_meal_test(
            patient.params,
            patient.c_peptide,
            b=b,
            basal_u_per_h=basal,
            weight_kg=patient.weight_kg,
            test=cfg.mmtt,
            solver=solver,
            stepsize_controller=controller,
            max_steps=cfg.max_steps,
        )
    )(b_visit, basal_at_visit)

    # daily series over every day (interpolated between simulated days)
    pre = all_days < first_day
    baseline = jnp.asarray(sched["visit"] == 0)
    n_base = float(np.sum(sched["visit"] == 0))
    base_g = jnp.sum(jnp.where(baseline, out.mean_glucose, 0.0)) / n_base
    base_h54 = jnp.sum(jnp.where(baseline, out.hours_below_54, 0.0)) / n_base
    mean_g = jnp.where(pre, base_g, jnp.interp(all_days, days, out.mean_glucose))
    pop = cfg.population
    hba1c = hba1c_trajectory(pop.hba1c, mean_g, patient.hba1c_offset)
    h54 = jnp.where(pre, base_h54, jnp.interp(all_days, days, out.hours_below_54))
    rate = pop.severe_hypo.daily_rate(h54, b_all)
    counts = jax.random.poisson(k_hypo, jnp.where(pre, 0.0, rate)).astype(jnp.int32)
    n_prior = pop.severe_hypo.sample_prior_year(rate[0], key=k_prior)
    slots = jax.random.randint(k_place, (64,), 0, 365)
    prior = (
        jnp.zeros(all_days.shape[0], jnp.int32)
        .at[slots]
        .add((jnp.arange(64, dtype=n_prior.dtype) < n_prior).astype(jnp.int32))
    )
    return PatientOutput(
        days=out,
        cgm=jnp.reshape(sensor.value, shape).astype(jnp.float32),
        censored=jnp.reshape(sensor.censored, shape),
        mmtt=mmtt,
        hba1c_daily=hba1c,
        severe_hypo_daily=counts + prior,
        b_daily=b_all,
    )


def _chunk(
    cfg: _Config,
    patients: VirtualPatients,
    keys,
    solver: dfx.AbstractSolver,
    controller: dfx.AbstractStepSizeController,
    mesh: jax.sharding.Mesh | None = None,
) -> PatientOutput:
    """All patients of a chunk in one program; with a mesh, split over its devices.

    With several devices (e.g. the cores of a CPU exposed as devices, or several
    GPUs) each device simulates its share of the chunk independently (``shard_map``:
    no communication, one compilation).
    """

    def run(p, k):
        return jax.vmap(lambda a, b: _simulate_patient(cfg, a, b, solver, controller))(
            p, k
        )

    if mesh is None:
        return run(patients, keys)
    spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
    return jax.shard_map(
        run, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=False
    )(patients, keys)


#: The cohort program compiled for speed (XLA's default optimisation).
_simulate_chunk = eqx.filter_jit(_chunk)

#: The same program compiled with the CPU backend's optimisation level 0: on the
#: 2-core CPU its compilation took 10 s less (3 patients, 2 visits x 2 days: 24.7
#: against 34.7 s to the end of the first call) and its runs 2.6x as long (12
#: patients x 67 days: 2.9 against 1.1 s), so it pays below a few thousand
#: patient-days (`QUICK_COMPILE_PATIENT_DAYS`).
_simulate_chunk_quick_compile = eqx.filter_jit(
    _chunk, compiler_options={"xla_backend_optimization_level": 0}
)

#: Largest chunk (patients x simulated days) compiled with `_simulate_chunk_quick_compile`
#: on a CPU: break-even of 10 s of compilation saved against about 2.2 ms per
#: patient-day of extra run time.
QUICK_COMPILE_PATIENT_DAYS = 4000
