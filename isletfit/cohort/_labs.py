r"""Clinic labs of the virtual patients: C-peptide, HbA1c and severe hypoglycaemia.

- **C-peptide** is secreted equimolar with insulin, so the graft's insulin secretion of
  the fast model (`isletfit.model.fluxes`, ``secretion`` [pmol/kg/min]) times body weight
  is the C-peptide secretion rate [pmol/min]. Its plasma concentration follows the
  two-compartment kinetics of Van Cauter et al. (1992),

  $$\dot C_1 = -(k_1 + k_3) C_1 + k_2 C_2 + \mathrm{ISR}/V,\qquad
  \dot C_2 = k_1 C_1 - k_2 C_2,$$

  with the population regressions of the same paper for the half-lives, the fraction of
  the short component and the distribution volume (`van_cauter_kinetics`). The system
  is linear, so it is integrated exactly for a piecewise-constant secretion rate
  (matrix exponential; `c_peptide_concentration`). Fasting and stimulated values come
  from a mixed-meal tolerance test (`MixedMealTest`, `mixed_meal_test`).
- **HbA1c** follows mean plasma glucose through the ADAG relation (Nathan et al. 2008,
  eAG [mg/dL] = 28.7 × HbA1c [%] − 46.7) with first-order glycation kinetics: about half
  of HbA1c reflects the last 30 days (`HbA1cModel`).
- **Severe hypoglycaemia** (level 3: needing another person's help) is a documented
  stochastic rule: events occur as a Poisson process whose daily rate is proportional to
  the hours that plasma glucose spends below 54 mg/dL (level 2 hypoglycaemia), reduced
  by the counter-regulation the graft's alpha cells restore (`SevereHypoglycaemia`).

References:
    - Van Cauter E, Mestrez F, Sturis J, Polonsky KS. Estimation of insulin secretion
      rates from C-peptide levels: comparison of individual and standard kinetic
      parameters for C-peptide clearance. Diabetes 41:368-377, 1992.
    - Nathan DM, Kuenen J, Borg R, Zheng H, Schoenfeld D, Heine RJ. Translating the A1C
      assay into estimated average glucose values. Diabetes Care 31:1473-1478, 2008
      (ADAG).
    - Tahara Y, Shima K. Kinetics of HbA1c, glycated albumin, and fructosamine and
      analysis of their weight functions against preceding plasma glucose level.
      Diabetes Care 18:440-447, 1995 (about 50 % of HbA1c from the last 30 days).
    - Battelino T et al. Diabetes Care 42:1593, 2019 (hypoglycaemia levels 1-3).
    - Rickels MR et al. Transplantation 102:1479, 2018 (Igls: severe hypoglycaemia as
      an outcome of beta-cell replacement).
"""

from __future__ import annotations

import dataclasses
import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray
from ..model import (
    FixedGrid,
    Inputs,
    Params,
    fluxes,
    simulate,
    simulate_grid,
    steady_state,
)

__all__ = [
    "CPeptideKinetics",
    "HbA1cModel",
    "MixedMealTest",
    "MixedMealTestResult",
    "SevereHypoglycaemia",
    "c_peptide_concentration",
    "hba1c_trajectory",
    "mixed_meal_test",
    "van_cauter_kinetics",
]

_LN2 = math.log(2.0)


# ------------------------------------------------------------------ C-peptide kinetics
class CPeptideKinetics(eqx.Module):
    """Two-compartment C-peptide kinetics of one person (Van Cauter et al. 1992).

    Attributes:
        k1: Transfer plasma -> peripheral compartment [1/min].
        k2: Transfer peripheral -> plasma compartment [1/min].
        k3: Elimination from plasma [1/min].
        volume_l: Distribution volume of the plasma compartment [L].
    """

    k1: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    k2: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    k3: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    volume_l: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    def matrix(self) -> Float[Array, "2 2"]:
        """The system matrix M of d(C1, C2)/dt = M (C1, C2) + (ISR/V, 0) [1/min]."""
        return jnp.stack(
            [
                jnp.stack([-(self.k1 + self.k3), self.k2]),
                jnp.stack([self.k1, -self.k2]),
            ]
        )

    def steady_state(self, isr: Float[ArrayLike, ""]) -> Float[Array, " 2"]:
        r"""Steady state for a constant secretion rate ISR [pmol/min].

        $C_1 = \mathrm{ISR}/(k_3 V)$ [pmol/L] and $C_2 = k_1 C_1/k_2$.
        """
        c1 = jnp.asarray(isr) / (self.k3 * self.volume_l)
        return jnp.stack([c1, self.k1 * c1 / self.k2])


def van_cauter_kinetics(
    age_years: Float[ArrayLike, ""],
    bsa_m2: Float[ArrayLike, ""],
    female: Bool[ArrayLike, ""],
    obese: Bool[ArrayLike, ""] = False,
) -> CPeptideKinetics:
    r"""Standard C-peptide kinetic parameters from age, body surface area and sex.

    The population regressions of Van Cauter et al. (1992): short half-life 4.95 min and
    short-component fraction F = 0.76 (4.55 min and 0.78 if obese), long half-life
    0.14·age + 29.16 min, volume 1.92·BSA + 0.64 L (men) or 1.11·BSA + 2.04 L (women).
    With $a = \ln 2/t_{short}$ and $b = \ln 2/t_{long}$: $k_2 = F b + (1 - F) a$,
    $k_3 = a b/k_2$, $k_1 = a + b - k_2 - k_3$, so that the response to an intravenous
    bolus decays as $F e^{-at} + (1 - F) e^{-bt}$.

    Args:
        age_years: Age [years].
        bsa_m2: Body surface area [m²].
        female: True for a woman.
        obese: True for BMI >= 30 kg/m² (obese short-component values).

    Returns:
        The `CPeptideKinetics`.
    """
    age = jnp.asarray(age_years, float)
    bsa = jnp.asarray(bsa_m2, age.dtype)
    short = jnp.where(obese, 4.55, 4.95)
    frac = jnp.where(obese, 0.78, 0.76)
    long = 0.14 * age + 29.16
    volume = jnp.where(female, 1.11 * bsa + 2.04, 1.92 * bsa + 0.64)
    a = _LN2 / short
    b = _LN2 / long
    k2 = frac * b + (1.0 - frac) * a
    k3 = a * b / k2
    k1 = a + b - k2 - k3
    return CPeptideKinetics(k1=k1, k2=k2, k3=k3, volume_l=volume)


def c_peptide_concentration(
    kinetics: CPeptideKinetics,
    isr_pmol_per_min: Float[ArrayLike, " times"],
    dt_min: float,
    initial: Float[ArrayLike, " 2"] | None = None,
) -> Float[Array, " times"]:
    r"""Plasma C-peptide for a secretion-rate series, integrated exactly.

    Between samples the secretion is held at the mean of its two end values; the linear
    system is then advanced exactly, $c_{k+1} = \Phi c_k + \Gamma u_k$ with
    $\Phi = e^{M\Delta t}$ and $\Gamma = M^{-1}(\Phi - I)(1/V, 0)^T$.

    Args:
        kinetics: The person's C-peptide kinetics.
        isr_pmol_per_min: Secretion rate on a regular grid [pmol/min].
        dt_min: Grid spacing [min].
        initial: (C1, C2) at the first sample [pmol/L]; default the steady state of the
            first secretion rate.

    Returns:
        Plasma C-peptide C1 at each sample [pmol/L].
    """
    isr = jnp.asarray(isr_pmol_per_min, jnp.result_type(kinetics.k1, float))
    m = kinetics.matrix()
    phi = jax.scipy.linalg.expm(m * dt_min)
    unit_input = jnp.stack([1.0 / kinetics.volume_l, jnp.zeros_like(kinetics.k1)])
    gamma = jnp.linalg.solve(m, (phi - jnp.eye(2, dtype=isr.dtype)) @ unit_input)
    c0 = kinetics.steady_state(isr[0]) if initial is None else jnp.asarray(initial)
    u = 0.5 * (isr[1:] + isr[:-1])

    def step(c, u_k):
        c = phi @ c + gamma * u_k
        return c, c[0]

    _, c1 = jax.lax.scan(step, c0, u)
    return jnp.concatenate([c0[:1], c1])


# ------------------------------------------------------------------ mixed-meal test
@dataclasses.dataclass(frozen=True)
class MixedMealTest:
    """A standard mixed-meal tolerance test (MMTT), as in islet-transplant trials.

    After an overnight fast the person drinks 6 mL/kg (at most 360 mL) of a liquid meal
    (Boost; taken here as 0.17 g carbohydrate per mL, i.e. about 41 g per 237 mL) with
    no bolus insulin; basal insulin continues. Fasting samples are taken at time 0 and
    the stimulated C-peptide at 90 min (the CIT protocols' sample; the peak is reported
    too).

    The fasting state is the fast model's steady state for the visit's graft function and
    basal rate (an overnight fast).

    Attributes:
        ml_per_kg: Drink volume per kg body weight [mL/kg].
        max_ml: Largest volume [mL].
        carbs_g_per_ml: Carbohydrate content [g/mL] (flagged: Boost Original label).
        stimulated_min: Time of the stimulated sample [min].
        duration_min: Length of the test [min].

    References:
        Clinical Islet Transplantation Consortium protocol CIT-07 (MMTT with Boost
        6 mL/kg up to 360 mL; samples at -10, 0, 15, 30, 60, 90, 120 min).
    """

    ml_per_kg: float = 6.0
    max_ml: float = 360.0
    carbs_g_per_ml: float = 0.17
    stimulated_min: float = 90.0
    duration_min: float = 120.0

    def carbs_g(self, weight_kg: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Carbohydrate of the test drink for a body weight [g]."""
        volume = jnp.minimum(self.ml_per_kg * jnp.asarray(weight_kg), self.max_ml)
        return volume * self.carbs_g_per_ml


class MixedMealTestResult(eqx.Module):
    """Outcome of one mixed-meal test.

    Attributes:
        fasting_glucose: Plasma glucose at time 0 [mg/dL].
        fasting_c_peptide: Plasma C-peptide at time 0 [nmol/L].
        stimulated_c_peptide: Plasma C-peptide at the stimulated sample [nmol/L].
        peak_c_peptide: Highest C-peptide during the test [nmol/L].
        glucose_stimulated: Plasma glucose at the stimulated sample [mg/dL].
        successful: Whether the solve succeeded.
    """

    fasting_glucose: Float[Array, ""]
    fasting_c_peptide: Float[Array, ""]
    stimulated_c_peptide: Float[Array, ""]
    peak_c_peptide: Float[Array, ""]
    glucose_stimulated: Float[Array, ""]
    successful: Bool[Array, ""]


def mixed_meal_test(
    params: Params,
    kinetics: CPeptideKinetics,
    *,
    b: Float[ArrayLike, ""],
    basal_u_per_h: Float[ArrayLike, ""],
    weight_kg: Float[ArrayLike, ""],
    test: MixedMealTest = MixedMealTest(),
    solver: dfx.AbstractSolver | FixedGrid = dfx.Tsit5(),
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    max_steps: int = 4096,
) -> MixedMealTestResult:
    """Simulate a mixed-meal test and the C-peptide it shows (one person).

    Args:
        params: The person's model parameters.
        kinetics: The person's C-peptide kinetics (`van_cauter_kinetics`).
        b: Graft functional capacity on the test day [fraction of a healthy adult's].
        basal_u_per_h: Basal insulin running during the test [U/h].
        weight_kg: Body weight [kg].
        test: The test protocol.
        solver: diffrax solver, or a `FixedGrid` (`isletfit.model.simulate_grid`,
            steps of at most 1 min and at most its ``max_step``;
            ``stepsize_controller`` and ``max_steps`` unused).
        stepsize_controller: diffrax step-size controller (default: the model's).
        max_steps: Solver step limit.

    Returns:
        The `MixedMealTestResult` (C-peptide in nmol/L).
    """
    dtype = jnp.result_type(params.vg, float)
    weight = jnp.asarray(weight_kg, dtype)
    inputs = Inputs(
        weight_kg=weight,
        meal_times=jnp.zeros(1, dtype),
        meal_carbs_g=jnp.reshape(test.carbs_g(weight), (1,)),
        basal_times=jnp.zeros(1, dtype),
        basal_u_per_h=jnp.reshape(jnp.asarray(basal_u_per_h, dtype), (1,)),
    )
    b = jnp.asarray(b, dtype)
    y0 = steady_state(params, b=b, basal=inputs.basal[0])
    n = round(test.duration_min) + 1
    ts = jnp.arange(n, dtype=dtype)
    if isinstance(solver, FixedGrid):
        sim = simulate_grid(
            params,
            inputs,
            ts,
            b=b,
            y0=y0,
            t0=0.0,
            grid=solver,
            substeps=solver.steps_for(1.0),
            warmup_steps=0,
            save_state=True,
        )
    else:
        sim = simulate(
            params,
            inputs,
            ts,
            b=b,
            y0=y0,
            t0=0.0,
            solver=solver,
            stepsize_controller=stepsize_controller,
            max_steps=max_steps,
        )
    secretion = jax.vmap(lambda t, y: fluxes(t, y, (params, inputs, b))["secretion"])(
        ts, sim.state
    )
    isr = jnp.maximum(secretion, 0.0) * weight  # [pmol/min]
    c = c_peptide_concentration(kinetics, isr, 1.0) / 1000.0  # [nmol/L]
    k = round(test.stimulated_min)
    return MixedMealTestResult(
        fasting_glucose=y0.gp / params.vg,
        fasting_c_peptide=c[0],
        stimulated_c_peptide=c[k],
        peak_c_peptide=jnp.max(c),
        glucose_stimulated=sim.glucose[k],
        successful=sim.successful,
    )


# ------------------------------------------------------------------ HbA1c
@dataclasses.dataclass(frozen=True)
class HbA1cModel:
    r"""HbA1c from the history of mean plasma glucose.

    The equilibrium HbA1c of a mean glucose $\bar G$ is the inverse of the ADAG relation,
    $A_{eq} = (\bar G + 46.7)/28.7$ [%]; HbA1c relaxes towards it with first-order
    kinetics, $\dot A = (A_{eq}(\bar G(t)) - A)/\tau$, with $\tau = 30/\ln 2 ≈ 43$ days so
    that half of HbA1c reflects the last 30 days and a quarter the 30 days before
    (Tahara & Shima 1995). Each person has a constant offset (the "glycation gap",
    between-person variation of HbA1c at equal mean glucose; the ADAG regression has a
    residual SD of about 0.5 %, part of it analytical).

    Attributes:
        slope: ADAG slope [mg/dL per %].
        intercept: ADAG intercept [mg/dL].
        tau_days: Glycation time constant [day].
        offset_sd: SD of the per-person offset [% HbA1c].

    References:
        Nathan DM et al. Diabetes Care 31:1473-1478, 2008; Tahara Y, Shima K. Diabetes
        Care 18:440-447, 1995.
    """

    slope: float = 28.7
    intercept: float = -46.7
    tau_days: float = 30.0 / math.log(2.0)
    offset_sd: float = 0.25

    def equilibrium(self, mean_glucose: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """HbA1c in equilibrium with a constant mean glucose [%] (inverse ADAG)."""
        return (jnp.asarray(mean_glucose) - self.intercept) / self.slope


def hba1c_trajectory(
    model: HbA1cModel,
    daily_mean_glucose: Float[ArrayLike, " days"],
    offset: Float[ArrayLike, ""] = 0.0,
) -> Float[Array, " days"]:
    """HbA1c at the end of each day of a daily mean-glucose series [%].

    The series starts in equilibrium with its first value and is advanced exactly for a
    mean glucose held constant within each day.

    Args:
        model: The HbA1c model.
        daily_mean_glucose: Mean plasma glucose of each consecutive day [mg/dL].
        offset: The person's glycation offset [% HbA1c].

    Returns:
        HbA1c at the end of each day [%].
    """
    g = jnp.asarray(daily_mean_glucose)
    decay = math.exp(-1.0 / model.tau_days)
    eq = model.equilibrium(g)

    def step(a, a_eq):
        a = a_eq + (a - a_eq) * decay
        return a, a

    _, a = jax.lax.scan(step, eq[0], eq)
    return a + offset


# ------------------------------------------------------------------ severe hypoglycaemia
@dataclasses.dataclass(frozen=True)
class SevereHypoglycaemia:
    r"""A stochastic rule for severe (level 3) hypoglycaemic events.

    Events form a Poisson process with daily intensity

    $$\lambda_d = r\,h_d\,e^{-B_d/B_{cr}},$$

    where $h_d$ is the number of hours plasma glucose spends below 54 mg/dL on day $d$,
    $r$ the chance per such hour that the person, who has impaired awareness and no
    glucagon response, needs help, and $e^{-B/B_{cr}}$ the protection restored by the
    graft's alpha cells and by regained awareness (both scale with graft function;
    Rickels et al. 2018 report that beta-cell replacement abolishes severe events). The
    count in the year before enrolment is drawn conditioned on at least
    ``prior_year_minimum`` events (the trial's eligibility criterion).

    Attributes:
        rate_per_hour_below_54: r [events per hour below 54 mg/dL, without graft].
        protection_b: $B_{cr}$ [fraction of a healthy adult's]: graft function that
            reduces the rate e-fold.
        prior_year_minimum: Minimum severe events in the year before enrolment.

    References:
        Battelino et al. 2019 (levels of hypoglycaemia); Reichman et al. NEJM 2025
        (eligibility: impaired awareness and >= 2 severe events in the prior year).
    """

    rate_per_hour_below_54: float = 0.015
    protection_b: float = 0.05
    prior_year_minimum: int = 2

    def daily_rate(
        self,
        hours_below_54: Float[ArrayLike, "..."],
        b: Float[ArrayLike, "..."],
    ) -> Float[Array, "..."]:
        """Expected severe events per day [events/day]."""
        return (
            self.rate_per_hour_below_54
            * jnp.asarray(hours_below_54)
            * jnp.exp(-jnp.asarray(b) / self.protection_b)
        )

    def sample_prior_year(
        self, daily_rate: Float[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> Int[Array, ""]:
        """Events in the year before enrolment, at least ``prior_year_minimum``."""
        lam = 365.0 * jnp.asarray(daily_rate)
        k = jnp.arange(400, dtype=lam.dtype)
        logp = (
            k * jnp.log(jnp.maximum(lam, 1e-12))
            - lam
            - jax.scipy.special.gammaln(k + 1.0)
        )
        cdf = jnp.cumsum(jnp.exp(logp))
        m = self.prior_year_minimum
        lo = cdf[m - 1] if m > 0 else jnp.zeros((), lam.dtype)
        u = jax.random.uniform(key, (), lam.dtype, 0.0, 1.0)
        target = lo + u * (cdf[-1] - lo)
        return jnp.maximum(jnp.searchsorted(cdf, target, side="left"), m)
