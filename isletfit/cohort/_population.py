r"""The virtual population: who the patients are, and `sample_patients`.

A `Population` describes adults with type 1 diabetes who receive an islet graft:

- **Physiology** (`Physiology`): log-normal between-patient variability around the
  model's default `Params` for the parameters that differ most between people (insulin
  sensitivity ``vmx``, glucose production ``kp1``/``kp3``, insulin action ``p2u``, meal
  absorption ``kmax``/``kabs``, subcutaneous insulin absorption ``kd``/``ka2``, the
  sensor lag ``tau_sensor``), truncated to each parameter's plausible bounds
  (`isletfit.model.param_info`). The spreads are of the order of those of the
  UVA/Padova adults (simglucose: vmx 0.017-0.109, kp3 0.005-0.024, p2u 0.017-0.053,
  ksc lag 6.6-18.7 min; ../shared/reference/domain.md §3.2).
- **Demographics** (`Demographics`): weight, height, sex and age of adult trial
  participants (body surface area by Mosteller; they set the C-peptide kinetics).
- **Insulin regimen before transplant** (`Regimen`): the basal rate is the one that
  holds this person's fasting glucose at the clinic's target (the model's steady state,
  `basal_for_fasting_glucose`), mis-titrated by a log-normal factor; the basal share of
  the total daily dose (TDD) is 40-60 %; the carbohydrate ratio follows the 500 rule
  (500/TDD g/U) and the correction factor the 1800 rule (1800/TDD mg/dL/U). Half use a
  pump (doses in 0.05 U), half injections (pens in 0.5 U; long-acting insulin is
  modelled as a constant basal rate, its daily dose rounded to 1 U).
- **Daily life** (`isletfit.cohort.DailyLife`).
- **The graft** (`GraftPopulation`): a `MechanisticGraft` per person, infused on day 0:
  engrafted mass (the plateau of B), onset lag, width and time constant of maturation
  vary between people; a share of grafts are partial or fail; some decline late.
- **Labs** (`isletfit.cohort.HbA1cModel`, `isletfit.cohort.SevereHypoglycaemia`).

References:
    - Kovatchev BP et al. J Diabetes Sci Technol 3:44-55, 2009 (UVA/Padova population);
      simglucose 0.2.11 ``params/vpatient_params.csv`` and ``params/Quest.csv``.
    - Walsh J, Roberts R. Pumping Insulin (500 and 1800 rules); ADA Standards of Care
      (TDD 0.4-1.0 U/kg/day, basal 40-60 %).
    - Mosteller RD. Simplified calculation of body-surface area. N Engl J Med 317:1098,
      1987.
    - Reichman TW et al. N Engl J Med 393:858-868, 2025 (zimislecel; C-peptide by day 90,
      function rising to day 365).
"""

# Configuration objects are frozen dataclasses (immutable): safe as defaults.
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Bool, Float, PRNGKeyArray
from ..model import (
    PMOL_PER_U,
    MechanisticGraft,
    Params,
    basal_for_fasting_glucose,
    param_info,
)
from ._distributions import AbstractDistribution, LogNormal, Normal, Uniform
from ._labs import (
    CPeptideKinetics,
    HbA1cModel,
    SevereHypoglycaemia,
    van_cauter_kinetics,
)
from ._life import DailyLife

__all__ = [
    "Demographics",
    "GraftPopulation",
    "Physiology",
    "Population",
    "Regimen",
    "VirtualPatients",
    "sample_patients",
    "zimislecel_like",
]

_MIN_PER_H = 60.0


@dataclasses.dataclass(frozen=True)
class Physiology:
    """Between-patient variability of the model parameters.

    Attributes:
        typical: Overrides of the `Params` defaults for the typical (median) patient,
            as ``(name, value)`` pairs in model units.
        variability: ``(name, sigma)`` pairs: each named parameter is the typical value
            times a log-normal factor with log-SD ``sigma``, truncated to the parameter's
            bounds.
    """

    typical: tuple[tuple[str, float], ...] = ()
    variability: tuple[tuple[str, float], ...] = (
        ("vmx", 0.3),
        ("kp1", 0.06),
        ("kp3", 0.25),
        ("p2u", 0.25),
        ("kmax", 0.25),
        ("kabs", 0.3),
        ("kd", 0.2),
        ("ka2", 0.2),
        ("tau_sensor", 0.2),
    )

    def typical_values(self) -> dict[str, float]:
        """The median patient's parameter values (model units), by name."""
        values = {row["name"]: row["default"] for row in param_info()}
        values.update(dict(self.typical))
        return values

    def typical_params(self) -> Params:
        """The median patient's `Params`."""
        return Params(**self.typical_values())


@dataclasses.dataclass(frozen=True)
class Demographics:
    """Body size, sex and age of adult trial participants.

    Attributes:
        weight_kg: Body weight [kg].
        age_years: Age [years] (trial eligibility 18-65).
        p_female: Share of women [-].
        height_male_cm: Height of men [cm].
        height_female_cm: Height of women [cm].
    """

    weight_kg: AbstractDistribution = LogNormal(72.0, 0.15, 50.0, 110.0)
    age_years: AbstractDistribution = Normal(43.0, 11.0, 18.0, 65.0)
    p_female: float = 0.5
    height_male_cm: AbstractDistribution = Normal(178.0, 7.0, 155.0, 200.0)
    height_female_cm: AbstractDistribution = Normal(164.0, 6.5, 145.0, 185.0)


@dataclasses.dataclass(frozen=True)
class Regimen:
    """Basal–bolus therapy before the transplant.

    Attributes:
        fasting_target: Fasting glucose the basal rate was titrated to [mg/dL].
        mistitration_sd: Log-SD of the factor between the prescribed basal and the one
            that holds the target [-].
        basal_fraction: Basal share of the total daily dose [-].
        p_pump: Share of pump users [-].
        carb_rule: The "500 rule": carbohydrate ratio = carb_rule/TDD [g/U].
        correction_rule: The "1800 rule": correction factor = correction_rule/TDD
            [mg/dL/U].
    """

    fasting_target: float = 120.0
    mistitration_sd: float = 0.15
    basal_fraction: AbstractDistribution = Uniform(0.4, 0.6)
    p_pump: float = 0.5
    carb_rule: float = 500.0
    correction_rule: float = 1800.0


@dataclasses.dataclass(frozen=True)
class GraftPopulation:
    """Between-patient variability of the graft trajectory (`MechanisticGraft`).

    The plateau of B (the engrafted functional mass) comes from a mixture: a failed
    graft with probability ``p_failed``, a partial one with ``p_partial``, otherwise a
    full one; a share ``p_decline`` lose function at ``decline_rate`` (rejection or
    exhaustion), visible once maturation is over.

    Attributes:
        infusion_day: Day of the infusion [day].
        p_failed: Share of failed grafts [-].
        p_partial: Share of partial grafts [-].
        plateau: Plateau of a full graft [fraction of a healthy adult's].
        plateau_partial: Plateau of a partial graft.
        plateau_failed: Plateau of a failed graft.
        initial_maturation: Per-cell function at infusion [-].
        onset_lag: Days until maturation is half switched on [day].
        onset_width: Width of the switch [day].
        tau_maturation: Time constant of maturation [day].
        p_decline: Share of grafts that decline [-].
        decline_rate: Loss rate of a declining graft [1/day].
    """

    infusion_day: float = 0.0
    p_failed: float = 0.03
    p_partial: float = 0.12
    plateau: AbstractDistribution = LogNormal(0.6, 0.3, 0.3, 1.5)
    plateau_partial: AbstractDistribution = Uniform(0.1, 0.3)
    plateau_failed: AbstractDistribution = Uniform(0.0, 0.03)
    initial_maturation: AbstractDistribution = Uniform(0.0, 0.05)
    onset_lag: AbstractDistribution = LogNormal(45.0, 0.25, 14.0, 120.0)
    onset_width: AbstractDistribution = LogNormal(10.0, 0.2, 3.0, 30.0)
    tau_maturation: AbstractDistribution = LogNormal(80.0, 0.3, 25.0, 250.0)
    p_decline: float = 0.1
    decline_rate: AbstractDistribution = LogNormal(0.002, 0.5, 2e-4, 0.02)


@dataclasses.dataclass(frozen=True)
class Population:
    """A virtual population of islet-graft recipients with type 1 diabetes.

    Attributes:
        physiology: Model-parameter variability.
        demographics: Body size, sex, age.
        regimen: Pre-transplant insulin therapy.
        life: Meals, bolus habits, treatment of lows, day-to-day variation.
        graft: Graft trajectories.
        hba1c: HbA1c from mean glucose.
        severe_hypo: Severe hypoglycaemia rule.
    """

    physiology: Physiology = Physiology()
    demographics: Demographics = Demographics()
    regimen: Regimen = Regimen()
    life: DailyLife = DailyLife()
    graft: GraftPopulation = GraftPopulation()
    hba1c: HbA1cModel = HbA1cModel()
    severe_hypo: SevereHypoglycaemia = SevereHypoglycaemia()


class VirtualPatients(eqx.Module):
    """Sampled patients (leaves carry a leading patient axis when sampled in bulk).

    Attributes:
        params: Model parameters.
        weight_kg: Body weight [kg].
        height_cm: Height [cm].
        female: True for women.
        age_years: Age [years].
        bsa_m2: Body surface area (Mosteller) [m²].
        pump: True for pump users (else injections).
        basal_u_per_h: Pre-transplant basal rate [U/h].
        basal_fraction: Basal share of the nominal total daily dose [-].
        tdd_u_per_day: Nominal pre-transplant total daily dose [U/day].
        carb_ratio_g_per_u: Carbohydrate ratio (500 rule) [g/U].
        correction_mg_dl_per_u: Correction factor (1800 rule) [mg/dL/U].
        appetite: Factor on meal sizes [-].
        count_bias: Log bias of carbohydrate counting [-].
        graft: The true graft trajectory.
        c_peptide: C-peptide kinetics (Van Cauter).
        hba1c_offset: Glycation offset [% HbA1c].
    """

    params: Params
    weight_kg: Float[Array, "*patients"]
    height_cm: Float[Array, "*patients"]
    female: Bool[Array, "*patients"]
    age_years: Float[Array, "*patients"]
    bsa_m2: Float[Array, "*patients"]
    pump: Bool[Array, "*patients"]
    basal_u_per_h: Float[Array, "*patients"]
    basal_fraction: Float[Array, "*patients"]
    tdd_u_per_day: Float[Array, "*patients"]
    carb_ratio_g_per_u: Float[Array, "*patients"]
    correction_mg_dl_per_u: Float[Array, "*patients"]
    appetite: Float[Array, "*patients"]
    count_bias: Float[Array, "*patients"]
    graft: MechanisticGraft
    c_peptide: CPeptideKinetics
    hba1c_offset: Float[Array, "*patients"]

    @property
    def n(self) -> int:
        """Number of patients (leading axis)."""
        return int(jnp.shape(self.weight_kg)[0]) if jnp.ndim(self.weight_kg) else 1

    def take(self, index) -> VirtualPatients:
        """A subset of the patients (any numpy index on the leading axis)."""
        return jax.tree.map(lambda x: x[index], self)


def _sample_params(physiology: Physiology, key) -> Params:
    values = physiology.typical_values()
    bounds = {row["name"]: (row["lower"], row["upper"]) for row in param_info()}
    keys = jax.random.split(key, max(len(physiology.variability), 1))
    sampled = dict(values)
    for k, (name, sigma) in zip(keys, physiology.variability, strict=False):
        lo, hi = bounds[name]
        dist = LogNormal(values[name], sigma, max(lo, 1e-12), hi)
        sampled[name] = dist.sample(k, ())
    return Params(**sampled)


def _round_to(x, step):
    return jnp.round(x / step) * step


def _sample_one(population: Population, key: PRNGKeyArray) -> VirtualPatients:
    k_par, k_demo, k_reg, k_life, k_graft, k_lab = jax.random.split(key, 6)
    params = _sample_params(population.physiology, k_par)
    d = population.demographics
    kw, ka, ks, khm, khf = jax.random.split(k_demo, 5)
    weight = d.weight_kg.sample(kw, ())
    age = d.age_years.sample(ka, ())
    female = jax.random.uniform(ks, ()) < d.p_female
    height = jnp.where(
        female, d.height_female_cm.sample(khf, ()), d.height_male_cm.sample(khm, ())
    )
    bsa = jnp.sqrt(height * weight / 3600.0)
    bmi = weight / (height / 100.0) ** 2

    r = population.regimen
    km, kf, kp = jax.random.split(k_reg, 3)
    need = basal_for_fasting_glucose(params, b=0.0, target=r.fasting_target)
    need_u_per_h = need * weight * _MIN_PER_H / PMOL_PER_U
    basal = need_u_per_h * jnp.exp(r.mistitration_sd * jax.random.normal(km, ()))
    pump = jax.random.uniform(kp, ()) < r.p_pump
    basal = jnp.where(
        pump, _round_to(basal, 0.05), jnp.maximum(jnp.round(basal * 24.0), 1.0) / 24.0
    )
    fraction = r.basal_fraction.sample(kf, ())
    tdd = basal * 24.0 / fraction

    life = population.life
    k_app, k_bias = jax.random.split(k_life)
    appetite = jnp.exp(life.appetite_sd * jax.random.normal(k_app, ()))
    count_bias = (
        life.bolus.count_bias_mean
        + life.bolus.count_bias_sd * jax.random.normal(k_bias, ())
    )

    g = population.graft
    kc, kfull, kpart, kfail, kmat, klag, kwid, ktau, kdec, krate = jax.random.split(
        k_graft, 10
    )
    u = jax.random.uniform(kc, ())
    plateau = jnp.where(
        u < g.p_failed,
        g.plateau_failed.sample(kfail, ()),
        jnp.where(
            u < g.p_failed + g.p_partial,
            g.plateau_partial.sample(kpart, ()),
            g.plateau.sample(kfull, ()),
        ),
    )
    k_dec_u, _ = jax.random.split(kdec)
    decline = jax.random.uniform(k_dec_u, ()) < g.p_decline
    graft = MechanisticGraft(
        infusion_day=g.infusion_day,
        engrafted=plateau,
        initial_maturation=g.initial_maturation.sample(kmat, ()),
        onset_lag=g.onset_lag.sample(klag, ()),
        onset_width=g.onset_width.sample(kwid, ()),
        tau_maturation=g.tau_maturation.sample(ktau, ()),
        loss_rate=jnp.where(decline, g.decline_rate.sample(krate, ()), 0.0),
        turnover_gain=0.0,
        feedback=None,
    )
    c_peptide = van_cauter_kinetics(age, bsa, female, bmi >= 30.0)
    offset = population.hba1c.offset_sd * jax.random.normal(k_lab, ())
    return VirtualPatients(
        params=params,
        weight_kg=weight,
        height_cm=height,
        female=female,
        age_years=age,
        bsa_m2=bsa,
        pump=pump,
        basal_u_per_h=basal,
        basal_fraction=fraction,
        tdd_u_per_day=tdd,
        carb_ratio_g_per_u=r.carb_rule / tdd,
        correction_mg_dl_per_u=r.correction_rule / tdd,
        appetite=appetite,
        count_bias=count_bias,
        graft=graft,
        c_peptide=c_peptide,
        hba1c_offset=offset,
    )


def sample_patients(
    population: Population, n: int, *, key: PRNGKeyArray
) -> VirtualPatients:
    """Draw ``n`` virtual patients.

    Patient ``i`` depends only on ``key`` and ``i`` (its key is
    ``jax.random.fold_in(key, i)``), so the same key gives the same first patients
    whatever ``n``, batch or chunking.

    Args:
        population: The population.
        n: Number of patients.
        key: PRNG key.

    Returns:
        `VirtualPatients` with a leading axis of length ``n``.
    """
    if int(n) < 1:
        raise ValueError(f"sample_patients: n must be >= 1, got {n}")
    return _sample_batch(population, patient_keys(key, int(n)))


# Compiled with the CPU backend's optimisation level 0: the program runs once per
# cohort, and level 0 halves its compilation (2-core CPU: 3.5 against 6.5 s) while
# drawing 1,000 patients takes 0.7 instead of 0.2 s.
@functools.partial(
    eqx.filter_jit, compiler_options={"xla_backend_optimization_level": 0}
)
def _sample_batch(population: Population, keys) -> VirtualPatients:
    return jax.vmap(lambda k: _sample_one(population, k))(keys)


def patient_keys(key: PRNGKeyArray, n: int) -> PRNGKeyArray:
    """Per-patient keys: ``fold_in(key, i)`` for ``i < n`` (independent of ``n``)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def zimislecel_like() -> Population:
    """A population like the full-dose cohort of the zimislecel (VX-880) trial.

    Adults with long-standing type 1 diabetes, impaired awareness of hypoglycaemia and
    recurrent severe events, on basal–bolus therapy, who receive one full dose of
    stem-cell-derived islets on day 0 (Reichman et al. 2025; outcomes in
    ../shared/reference/domain.md §7). Calibrated so that the simulated full-dose cohort
    matches the published outcomes (see ``examples/virtual_trial.py``):

    - **Before transplant** the glycaemia of these people (HbA1c ≈ 7.8 %, time in range
      ≈ 49.5 %, with hypoglycaemia) comes from daily life, not from abnormal physiology:
      a relaxed basal target (fasting 158 mg/dL, as advised for people with
      hypoglycaemia unawareness) titrated imprecisely (log-SD 0.2); 30 % of meal boluses
      missed and 30 % late (missed and mistimed doses are common, Robinson et al. 2021);
      carbohydrate underestimated by about 14 % with a per-meal error of 35 %
      (Brazeau et al. 2013); day-to-day (30 %) and within-day (25 %) variation of insulin
      sensitivity, day-to-day variation of meal (30 %) and insulin (25 %) absorption;
      lows noticed and treated with probability 0.8 by day and 0.3 at night. Meal
      absorption is that of the UVA/Padova adults with type 1 diabetes (simglucose
      means kabs ≈ 0.21, kmax ≈ 0.039 1/min).
    - **The graft** engrafts in everyone but 2 %; 12 % of grafts are partial (plateau B
      0.08-0.25), the others plateau at B ≈ 0.65 (log-SD 0.3, 0.3-1.5); maturation
      switches on after ≈ 65 days (log-SD 0.25) and proceeds with a time constant of
      ≈ 110 days (log-SD 0.3): C-peptide appears by day 90 and keeps rising to day
      365, and most stop insulin at or after day 180. 5 % of grafts decline slowly.

    References:
        - Reichman TW et al. Stem cell-derived, fully differentiated islets for type 1
          diabetes. N Engl J Med 393:858-868, 2025. doi:10.1056/NEJMoa2506549
        - Robinson S et al. Missed and mistimed insulin doses in people with diabetes: a
          systematic literature review. Diabetes Technol Ther 23:844-856, 2021.
        - Brazeau AS et al. Diabetes Res Clin Pract 99:19-23, 2013.
        - American Diabetes Association. Standards of Care in Diabetes, section 6
          (less stringent glycaemic goals with hypoglycaemia unawareness).

    Returns:
        The `Population`.
    """
    from ._life import BolusBehaviour, HypoTreatment

    return Population(
        physiology=Physiology(typical=(("kabs", 0.2), ("kmax", 0.039))),
        regimen=Regimen(fasting_target=158.0, mistitration_sd=0.2),
        life=DailyLife(
            bolus=BolusBehaviour(
                p_missed=0.3,
                p_late=0.3,
                count_sd=0.35,
                count_bias_mean=-0.15,
            ),
            hypo=HypoTreatment(p_day=0.8, p_night=0.3),
            sensitivity_sd=0.3,
            sensitivity_within_day_sd=0.25,
            meal_absorption_sd=0.3,
            insulin_absorption_sd=0.25,
        ),
        graft=GraftPopulation(
            p_failed=0.02,
            p_partial=0.12,
            plateau=LogNormal(0.65, 0.3, 0.3, 1.5),
            plateau_partial=Uniform(0.08, 0.25),
            onset_lag=LogNormal(65.0, 0.25, 14.0, 150.0),
            tau_maturation=LogNormal(110.0, 0.3, 25.0, 300.0),
            p_decline=0.05,
        ),
    )
