r"""Daily life of a virtual person with type 1 diabetes: meals, bolus habits, variation.

One day is drawn at a time from the day's own key (`sample_day`), so a day's meals do
not depend on which other days are simulated:

- **Meals and snacks** follow the random daily scenario of the UVA/Padova simulator as
  distributed in simglucose (Xie 2018, ``simulation/scenario_gen.py``, described in
  ../shared/reference/domain.md §10): breakfast 45 ± 10 g at 7:00 ± 60 min (p = 0.95),
  snack 10 ± 5 g at 9:30 ± 30 min (p = 0.3), lunch 70 ± 10 g at 12:00 ± 60 min (0.95),
  snack 10 ± 5 g at 15:00 ± 30 min (0.3), dinner 80 ± 10 g at 18:00 ± 60 min (0.95),
  snack 10 ± 5 g at 21:30 ± 30 min (0.3); times are normal, truncated to each slot's
  window, and rounded to the minute, amounts are normal truncated at 5 g and rounded
  to the gram. A per-person appetite factor scales the amounts.
- **Bolus habits** (`BolusBehaviour`): meal boluses from the carbohydrate ratio with a
  correction by the correction factor; boluses are sometimes missed, given late or
  ahead of the meal, and carbohydrate is miscounted (a per-person bias and a per-meal
  error: adults with type 1 diabetes misestimate meal carbohydrate by about 20-30 %,
  Brazeau et al. 2013); snacks are not bolused. A correction bolus at bedtime when
  glucose is high.
- **Hypoglycaemia treatment** (`HypoTreatment`): at each check the person eats fast
  carbohydrate ("rule of 15") when the CGM shows < 70 mg/dL — with a probability below
  one, lower at night, since these people have impaired awareness.
- **Day-to-day variation of insulin sensitivity** (`DailyLife.sensitivity_sd`): a
  per-day log-normal factor on ``vmx`` (intra-individual variability of insulin
  sensitivity in type 1 diabetes is of the order of 20-30 %; Vettoretti et al. 2020 use
  day-varying SI in their simulator).

References:
    - Dalla Man C et al. The UVA/PADOVA type 1 diabetes simulator: new features. J
      Diabetes Sci Technol 8:26-34, 2014; simglucose (Xie J, 2018), random scenario.
    - Brazeau AS et al. Carbohydrate counting accuracy and blood glucose variability in
      adults with type 1 diabetes. Diabetes Res Clin Pract 99:19-23, 2013.
    - Visentin R et al. Circadian variability of insulin sensitivity: physiological
      input for in silico artificial pancreas. Diabetes Technol Ther 17:1-7, 2015.
    - American Diabetes Association. Standards of Care, glycaemic targets ("rule of
      15" for hypoglycaemia treatment).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Bool, Float, PRNGKeyArray

__all__ = [
    "SIMGLUCOSE_SCENARIO",
    "BolusBehaviour",
    "DailyLife",
    "DayPlan",
    "HypoTreatment",
    "MealSlot",
    "sample_day",
]

_MIN_PER_DAY = 1440.0


@dataclasses.dataclass(frozen=True)
class MealSlot:
    """One meal or snack of the daily scenario.

    Attributes:
        name: Label (``breakfast``, ``snack``, ...).
        time_h: Mean clock time [h].
        time_sd_min: SD of the time [min].
        window_h: Earliest and latest clock time [h] (truncation window).
        carbs_g: Mean carbohydrate [g].
        carbs_sd_g: SD of the carbohydrate [g].
        probability: Chance that the meal is eaten on a given day [-].
        main: True for a main meal (bolused, and a decision point of the day).
    """

    name: str
    time_h: float
    time_sd_min: float
    window_h: tuple[float, float]
    carbs_g: float
    carbs_sd_g: float
    probability: float
    main: bool


#: The random daily scenario of simglucose (three meals, three optional snacks).
SIMGLUCOSE_SCENARIO: tuple[MealSlot, ...] = (
    MealSlot("breakfast", 7.0, 60.0, (5.0, 9.0), 45.0, 10.0, 0.95, True),
    MealSlot("snack", 9.5, 30.0, (9.0, 10.0), 10.0, 5.0, 0.3, False),
    MealSlot("lunch", 12.0, 60.0, (10.0, 14.0), 70.0, 10.0, 0.95, True),
    MealSlot("snack", 15.0, 30.0, (14.0, 16.0), 10.0, 5.0, 0.3, False),
    MealSlot("dinner", 18.0, 60.0, (16.0, 20.0), 80.0, 10.0, 0.95, True),
    MealSlot("snack", 21.5, 30.0, (20.0, 23.0), 10.0, 5.0, 0.3, False),
)


@dataclasses.dataclass(frozen=True)
class BolusBehaviour:
    """How a person doses meal and correction insulin, errors included.

    A meal bolus is ``counted / carb_ratio + correction`` with ``counted`` the
    carbohydrate as the person estimates it and the correction ``(CGM - target)/CF``
    when the CGM exceeds ``correction_above`` (the simglucose basal–bolus controller
    uses 150 and 140 mg/dL), rounded to the pen's or pump's increment.

    Attributes:
        p_missed: Chance a meal bolus is forgotten [-].
        p_late: Chance a bolus is given after the meal started [-].
        late_min: Range of the delay of a late bolus [min].
        p_early: Chance a bolus is given ahead of the meal (pre-bolus) [-].
        early_min: Range of the lead of a pre-bolus [min].
        count_sd: SD of the per-meal log error of carbohydrate counting [-].
        count_bias_mean: Mean per-person log bias of carbohydrate counting [-]
            (negative: carbohydrate is underestimated, as is usual for large meals).
        count_bias_sd: SD of the per-person log bias of carbohydrate counting [-].
        correction_above: CGM above which a correction is added [mg/dL].
        correction_target: Glucose a correction aims at [mg/dL].
        bedtime_h: Clock time of the bedtime check [h] (one of the check times).
        bedtime_above: CGM above which a bedtime correction is taken [mg/dL].
        bedtime_fraction: Fraction of the full correction taken at bedtime [-].
        p_bedtime: Chance the bedtime correction is taken when indicated [-].
        pen_increment_u: Smallest dose step of a pen [U].
        pump_increment_u: Smallest dose step of a pump [U].
    """

    p_missed: float = 0.1
    p_late: float = 0.2
    late_min: tuple[float, float] = (15.0, 60.0)
    p_early: float = 0.2
    early_min: tuple[float, float] = (5.0, 20.0)
    count_sd: float = 0.25
    count_bias_mean: float = 0.0
    count_bias_sd: float = 0.15
    correction_above: float = 150.0
    correction_target: float = 120.0
    bedtime_h: float = 21.0
    bedtime_above: float = 250.0
    bedtime_fraction: float = 0.5
    p_bedtime: float = 0.5
    pen_increment_u: float = 0.5
    pump_increment_u: float = 0.05


@dataclasses.dataclass(frozen=True)
class HypoTreatment:
    """Treatment of low glucose with fast carbohydrate at the day's checks.

    Attributes:
        below: CGM below which carbohydrate is taken [mg/dL].
        carbs_g: Fast carbohydrate taken [g] ("rule of 15").
        p_day: Chance of treating a low noticed during the day [-].
        p_night: Chance of treating a low at night (asleep; an alarm may wake) [-].
        night_h: Clock hours [start, end) counted as night [h].
    """

    below: float = 70.0
    carbs_g: float = 15.0
    p_day: float = 0.9
    p_night: float = 0.5
    night_h: tuple[float, float] = (0.0, 6.0)


@dataclasses.dataclass(frozen=True)
class DailyLife:
    """Everything about a virtual person's days that is random.

    Attributes:
        meals: The daily meal scenario (main meals are the bolus decision points).
        bolus: Bolus habits and errors.
        hypo: Treatment of lows.
        sensitivity_sd: SD of the per-day log factor on insulin sensitivity ``vmx``.
        sensitivity_within_day_sd: SD of an extra log factor on ``vmx`` drawn for each
            segment between decision points (variation within the day).
        meal_absorption_sd: SD of the per-day log factor on gastric emptying and gut
            absorption (``kmax``, ``kabs``; meal composition).
        insulin_absorption_sd: SD of the per-day log factor on subcutaneous insulin
            absorption (``kd``, ``ka2``; Heinemann 2002: within-person variability of
            the action of injected insulin of 15-30 %).
        appetite_sd: SD of the per-person log factor on all meal sizes.
        check_times_h: Clock times at which the person looks at the CGM besides meals
            [h]; consecutive checks must be at most 3 h apart and include 0.
    """

    meals: tuple[MealSlot, ...] = SIMGLUCOSE_SCENARIO
    bolus: BolusBehaviour = BolusBehaviour()
    hypo: HypoTreatment = HypoTreatment()
    sensitivity_sd: float = 0.25
    sensitivity_within_day_sd: float = 0.0
    meal_absorption_sd: float = 0.0
    insulin_absorption_sd: float = 0.0
    appetite_sd: float = 0.1
    check_times_h: tuple[float, ...] = (0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0)

    def __post_init__(self):
        checks = self.check_times_h
        gaps = [b - a for a, b in zip(checks, (*checks[1:], 24.0), strict=True)]
        if checks[0] != 0.0 or max(gaps) > 3.0 or min(gaps) <= 0.0:
            raise ValueError(
                "DailyLife.check_times_h must start at 0, ascend, and be at most 3 h "
                f"apart [h], got {checks}"
            )
        if self.bolus.bedtime_h not in checks:
            raise ValueError(
                f"BolusBehaviour.bedtime_h ({self.bolus.bedtime_h}) must be one of "
                f"DailyLife.check_times_h {checks}"
            )
        if sum(m.main for m in self.meals) < 1:
            raise ValueError("DailyLife.meals needs at least one main meal")

    @property
    def n_main(self) -> int:
        """Number of main (bolused) meals."""
        return sum(m.main for m in self.meals)

    @property
    def n_segments(self) -> int:
        """Decision points per day: the checks plus the main meals."""
        return len(self.check_times_h) + self.n_main


class DayPlan(eqx.Module):
    """The random draws of one person's day (absolute times in minutes).

    Attributes:
        meal_t: Time each scenario meal is eaten [min], in the scenario's slot order;
            ``+inf`` if skipped.
        meal_g: Carbohydrate eaten [g]; 0 if skipped.
        main_g: Carbohydrate eaten at each main meal [g] (0 if skipped).
        decision_t: Time of each main meal's bolus decision [min] (the scheduled meal
            time; with a pre-bolus the meal follows it).
        bolus_delay: Bolus time minus decision time for each main meal [min] (> 0: late).
        count_factor: Factor of counted over eaten carbohydrate of each main meal [-].
        missed: Whether each main meal's bolus is forgotten.
        treat_u: Uniform draws deciding hypoglycaemia treatment at each decision point.
        bedtime_u: Uniform draw deciding the bedtime correction.
        sensitivity: The day's factor on ``vmx`` for each segment [-].
        meal_absorption: The day's factor on ``kmax`` and ``kabs`` [-].
        insulin_absorption: The day's factor on ``kd`` and ``ka2`` [-].
    """

    meal_t: Float[Array, " meals"]
    meal_g: Float[Array, " meals"]
    main_g: Float[Array, " main"]
    decision_t: Float[Array, " main"]
    bolus_delay: Float[Array, " main"]
    count_factor: Float[Array, " main"]
    missed: Bool[Array, " main"]
    treat_u: Float[Array, " segments"]
    bedtime_u: Float[Array, ""]
    sensitivity: Float[Array, " segments"]
    meal_absorption: Float[Array, ""]
    insulin_absorption: Float[Array, ""]


def sample_day(
    life: DailyLife,
    day: Float[ArrayLike, ""],
    *,
    appetite: Float[ArrayLike, ""],
    count_bias: Float[ArrayLike, ""],
    key: PRNGKeyArray,
) -> DayPlan:
    """Draw one day of meals, bolus errors and insulin-sensitivity variation.

    Args:
        life: The daily-life model.
        day: Day number (midnight at ``1440·day`` minutes) [day].
        appetite: The person's factor on meal sizes [-].
        count_bias: The person's log bias of carbohydrate counting [-].
        key: The day's key.

    Returns:
        The `DayPlan` (times rounded to whole minutes, carbohydrate to whole grams).
    """
    day = jnp.asarray(day, float)
    dtype = day.dtype
    slots = life.meals
    n = len(slots)
    (
        k_time,
        k_carbs,
        k_eat,
        k_delay,
        k_kind,
        k_count,
        k_miss,
        k_treat,
        k_bed,
        k_si,
        k_siw,
        k_meal,
        k_ins,
    ) = jax.random.split(key, 13)
    mean = jnp.asarray([s.time_h * 60.0 for s in slots], dtype)
    sd = jnp.asarray([s.time_sd_min for s in slots], dtype)
    lo = jnp.asarray([s.window_h[0] * 60.0 for s in slots], dtype)
    hi = jnp.asarray([s.window_h[1] * 60.0 for s in slots], dtype)
    z = jax.random.truncated_normal(k_time, (lo - mean) / sd, (hi - mean) / sd, (n,))
    clock = jnp.round(mean + sd * z.astype(dtype))
    cmean = jnp.asarray([s.carbs_g for s in slots], dtype) * appetite
    csd = jnp.asarray([s.carbs_sd_g for s in slots], dtype)
    zc = jax.random.truncated_normal(k_carbs, (5.0 - cmean) / csd, jnp.inf, (n,))
    carbs = jnp.round(cmean + csd * zc.astype(dtype))
    eaten = jax.random.uniform(k_eat, (n,), dtype) < jnp.asarray(
        [s.probability for s in slots], dtype
    )
    main_idx = [i for i, s in enumerate(slots) if s.main]
    nm = len(main_idx)
    bb = life.bolus
    kind = jax.random.uniform(k_kind, (nm,), dtype)
    delay_u = jax.random.uniform(k_delay, (nm,), dtype)
    late = bb.late_min[0] + delay_u * (bb.late_min[1] - bb.late_min[0])
    early = bb.early_min[0] + delay_u * (bb.early_min[1] - bb.early_min[0])
    delay = jnp.where(
        kind < bb.p_late, late, jnp.where(kind < bb.p_late + bb.p_early, -early, 0.0)
    )
    delay = jnp.round(delay)
    start = day * _MIN_PER_DAY
    decision = start + clock[jnp.asarray(main_idx)]
    # a pre-bolus (delay < 0) moves the meal after the decision; a late bolus follows it
    meal_t = start + clock
    main_meal_t = decision + jnp.maximum(-delay, 0.0)
    meal_t = meal_t.at[jnp.asarray(main_idx)].set(main_meal_t)
    # snacks come at least 30 min after the preceding main meal and before the next
    # main decision (keeps every event inside its day and the order of the slots)
    for i, s in enumerate(slots):
        if s.main:
            continue
        before = [j for j in main_idx if j < i]
        after = [j for j in main_idx if j > i]
        t = meal_t[i]
        if before:
            t = jnp.maximum(t, meal_t[before[-1]] + 30.0)
        if after:
            t = jnp.minimum(t, decision[main_idx.index(after[0])] - 1.0)
        meal_t = meal_t.at[i].set(jnp.minimum(t, start + _MIN_PER_DAY - 2.0))
    meal_g = jnp.where(eaten, carbs, 0.0)
    meal_t = jnp.where(eaten, meal_t, jnp.inf)
    count = jnp.exp(count_bias + bb.count_sd * jax.random.normal(k_count, (nm,), dtype))
    return DayPlan(
        meal_t=meal_t,
        meal_g=meal_g,
        main_g=meal_g[jnp.asarray(main_idx)],
        decision_t=decision,
        bolus_delay=delay,
        count_factor=count,
        missed=jax.random.uniform(k_miss, (nm,), dtype) < bb.p_missed,
        treat_u=jax.random.uniform(k_treat, (life.n_segments,), dtype),
        bedtime_u=jax.random.uniform(k_bed, (), dtype),
        sensitivity=jnp.exp(
            life.sensitivity_sd * jax.random.normal(k_si, (), dtype)
            + life.sensitivity_within_day_sd
            * jax.random.normal(k_siw, (life.n_segments,), dtype)
        ),
        meal_absorption=jnp.exp(
            life.meal_absorption_sd * jax.random.normal(k_meal, (), dtype)
        ),
        insulin_absorption=jnp.exp(
            life.insulin_absorption_sd * jax.random.normal(k_ins, (), dtype)
        ),
    )
