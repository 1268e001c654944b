r"""Insulin titration after the islet infusion, as a transplant clinic does it.

The clinic reviews the CGM record at regular intervals (`TitrationProtocol`) and adjusts
two scales on the person's pre-transplant regimen: ``basal_scale`` on the basal rate and
``bolus_scale`` on meal and correction boluses (1 = the pre-transplant doses). At each
review, from the readings since the previous review:

1. **Hypoglycaemia first.** If time below 70 mg/dL exceeds 4 % or time below 54 mg/dL
   exceeds 1 % (the consensus targets, Battelino 2019), both scales are cut by
   ``hypo_cut`` (20 %).
2. **Wean while at target.** Otherwise, when glucose is at target — mean pre-breakfast
   glucose ≤ ``target_fasting`` (126 mg/dL) and mean glucose 2 h after main meals
   ≤ ``post_meal_high`` (180 mg/dL) — both scales are cut by ``wean_step`` (15 %): the
   graft is given the chance to take over.
3. **Otherwise adjust towards target.** The basal scale is raised by ``step`` (10 %)
   when mean fasting glucose is above ``fasting_high`` (140 mg/dL), the bolus scale when
   mean 2-h post-meal glucose is above ``post_meal_high`` (180 mg/dL); neither above
   ``max_scale`` (the pre-transplant dose).
4. **Stop** insulin when the dose (the two scales weighted by the pre-transplant basal
   share) is at most ``stop_below`` (25 %) of the pre-transplant dose and glucose is at
   target (rule 2).
5. **Restart** (off insulin) when glucose worsens: more than 3 of 7 fasting values
   > 140 mg/dL or mean fasting glucose > 140 mg/dL, or more than 4 of 21 post-meal
   values > 180 mg/dL together with time above 180 mg/dL over 25 %. Both scales restart
   at ``restart_scale`` (25 %) and are titrated again.

The glucose thresholds of rules 4 and 5 are those of the definition of insulin
independence of the Clinical Islet Transplantation consortium (fasting capillary glucose
not above 140 mg/dL more than three times a week, 2-h post-prandial glucose not above
180 mg/dL more than four times a week; protocol CIT-07, Hering et al. 2016 — thresholds
as recalled, flagged); insulin independence itself is judged at the visits as no insulin
on ≥ 14 consecutive days (Shapiro et al. 2006). The stepwise dose cuts model the
weaning practised after islet transplantation (Shapiro et al. 2000: insulin reduced as
graft function appeared, to avoid hypoglycaemia, and stopped when glucose targets were
met without it).

Decisions use the interstitial glucose the CGM senses, without the sensor's error (the
clinic looks at the CGM; a documented simplification). Before ``start_day`` (and before
the infusion) the regimen is left as it is.

References:
    - Shapiro AMJ et al. Islet transplantation in seven patients with type 1 diabetes
      mellitus using a glucocorticoid-free immunosuppressive regimen. N Engl J Med
      343:230-238, 2000.
    - Shapiro AMJ et al. International trial of the Edmonton protocol for islet
      transplantation. N Engl J Med 355:1318-1330, 2006.
    - Hering BJ et al. Phase 3 trial of transplantation of human islets in type 1
      diabetes complicated by severe hypoglycemia. Diabetes Care 39:1230-1240, 2016.
    - Battelino T et al. Diabetes Care 42:1593-1603, 2019 (time-in-range targets).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Bool, Float

__all__ = ["ReviewData", "TitrationProtocol", "TitrationState", "review"]


@dataclasses.dataclass(frozen=True)
class TitrationProtocol:
    """The clinic's insulin titration after the infusion (see the module docstring).

    Attributes:
        start_day: First day reviews may change doses [day after infusion].
        hypo_tbr70: Time below 70 mg/dL that counts as hypoglycaemia [fraction].
        hypo_tbr54: Time below 54 mg/dL that counts as hypoglycaemia [fraction].
        hypo_cut: Relative cut of both scales on hypoglycaemia [-].
        wean_step: Relative cut of both scales while glucose is at target [-].
        step: Relative rise of one scale for a glucose above target [-].
        fasting_high: Mean fasting glucose above which basal is raised [mg/dL].
        post_meal_high: Mean 2-h post-meal glucose above which boluses are raised
            [mg/dL].
        max_scale: Largest scale [-] (1 = pre-transplant dose).
        stop_below: Dose (fraction of the pre-transplant total) at or below which
            insulin is stopped when glucose is at target [-].
        target_fasting: Highest mean fasting glucose at target [mg/dL].
        fasting_limit: Fasting value counted as high [mg/dL].
        fasting_high_share: Largest share of high fasting values (3 of 7) [-].
        post_meal_limit: 2-h post-meal value counted as high [mg/dL].
        post_meal_high_share: Largest share of high post-meal values (4 of 21) [-].
        restart_tar180: Time above 180 mg/dL that, with too many high post-meal values,
            restarts insulin [fraction].
        restart_scale: Scale at which insulin restarts [-].
    """

    start_day: float = 7.0
    hypo_tbr70: float = 0.04
    hypo_tbr54: float = 0.01
    hypo_cut: float = 0.2
    wean_step: float = 0.15
    step: float = 0.1
    fasting_high: float = 140.0
    post_meal_high: float = 180.0
    max_scale: float = 1.0
    stop_below: float = 0.25
    target_fasting: float = 126.0
    fasting_limit: float = 140.0
    fasting_high_share: float = 3.0 / 7.0
    post_meal_limit: float = 180.0
    post_meal_high_share: float = 4.0 / 21.0
    restart_tar180: float = 0.25
    restart_scale: float = 0.25


class TitrationState(eqx.Module):
    """A person's current insulin doses relative to the pre-transplant regimen.

    Attributes:
        basal_scale: Factor on the pre-transplant basal rate [-].
        bolus_scale: Factor on meal and correction boluses [-].
        on_insulin: False once insulin has been stopped.
        stops: Number of times insulin was stopped.
        restarts: Number of times insulin was restarted.
    """

    basal_scale: Float[Array, ""]
    bolus_scale: Float[Array, ""]
    on_insulin: Bool[Array, ""]
    stops: Float[Array, ""]
    restarts: Float[Array, ""]

    @classmethod
    def initial(cls, dtype=float) -> TitrationState:
        """The pre-transplant regimen (both scales 1, on insulin)."""
        one = jnp.ones((), dtype)
        return cls(one, one, jnp.ones((), bool), 0.0 * one, 0.0 * one)


class ReviewData(eqx.Module):
    """Glucose summaries accumulated between two reviews (counts of readings/values).

    Attributes:
        n: CGM readings.
        below_70: Readings < 70 mg/dL.
        below_54: Readings < 54 mg/dL.
        above_180: Readings > 180 mg/dL.
        fasting_n: Fasting (pre-breakfast) values.
        fasting_sum: Sum of fasting values [mg/dL].
        fasting_high: Fasting values above the protocol's limit.
        post_n: 2-h post-meal values.
        post_sum: Sum of 2-h post-meal values [mg/dL].
        post_high: Post-meal values above the protocol's limit.
    """

    n: Float[Array, ""]
    below_70: Float[Array, ""]
    below_54: Float[Array, ""]
    above_180: Float[Array, ""]
    fasting_n: Float[Array, ""]
    fasting_sum: Float[Array, ""]
    fasting_high: Float[Array, ""]
    post_n: Float[Array, ""]
    post_sum: Float[Array, ""]
    post_high: Float[Array, ""]

    @classmethod
    def zeros(cls, dtype=float) -> ReviewData:
        """Nothing accumulated."""
        z = jnp.zeros((), dtype)
        return cls(z, z, z, z, z, z, z, z, z, z)

    def __add__(self, other: ReviewData) -> ReviewData:
        return ReviewData(
            *(getattr(self, f.name) + getattr(other, f.name) for f in _fields(self))
        )


def _fields(x):
    return dataclasses.fields(x)


def review(
    protocol: TitrationProtocol,
    state: TitrationState,
    data: ReviewData,
    basal_fraction: Float[Array, ""],
) -> TitrationState:
    """One review of the clinic's protocol (pure; see the module docstring).

    Args:
        protocol: The protocol.
        state: The doses before the review.
        data: Glucose summaries since the previous review.
        basal_fraction: Basal share of the pre-transplant total daily dose [-], to
            weigh the two scales into one dose fraction.

    Returns:
        The doses after the review.
    """
    p = protocol
    n = jnp.maximum(data.n, 1.0)
    tbr70 = data.below_70 / n
    tbr54 = data.below_54 / n
    tar180 = data.above_180 / n
    has_fasting = data.fasting_n > 0
    fasting = data.fasting_sum / jnp.maximum(data.fasting_n, 1.0)
    fasting_high_share = data.fasting_high / jnp.maximum(data.fasting_n, 1.0)
    has_post = data.post_n > 0
    post = data.post_sum / jnp.maximum(data.post_n, 1.0)
    post_high_share = data.post_high / jnp.maximum(data.post_n, 1.0)
    hypo = (tbr70 > p.hypo_tbr70) | (tbr54 > p.hypo_tbr54)

    at_target = (
        ~hypo
        & (~has_fasting | (fasting <= p.target_fasting))
        & (~has_post | (post <= p.post_meal_high))
    )
    # rules 1-3: on insulin
    cut = jnp.where(hypo, p.hypo_cut, jnp.where(at_target, p.wean_step, 0.0))
    raise_basal = ~hypo & ~at_target & has_fasting & (fasting > p.fasting_high)
    raise_bolus = ~hypo & ~at_target & has_post & (post > p.post_meal_high)
    basal = state.basal_scale * (1.0 - cut)
    bolus = state.bolus_scale * (1.0 - cut)
    basal = jnp.where(
        raise_basal, jnp.minimum(basal * (1.0 + p.step), p.max_scale), basal
    )
    bolus = jnp.where(
        raise_bolus, jnp.minimum(bolus * (1.0 + p.step), p.max_scale), bolus
    )
    # rule 4: stop
    dose = basal_fraction * basal + (1.0 - basal_fraction) * bolus
    stop = state.on_insulin & (dose <= p.stop_below) & at_target
    # rule 5: restart
    worse = (
        (has_fasting & (fasting_high_share > p.fasting_high_share))
        | (has_fasting & (fasting > p.fasting_high))
        | ((post_high_share > p.post_meal_high_share) & (tar180 > p.restart_tar180))
    )
    restart = ~state.on_insulin & worse
    on = jnp.where(state.on_insulin, ~stop, restart)
    basal = jnp.where(
        state.on_insulin, basal, jnp.where(restart, p.restart_scale, state.basal_scale)
    )
    bolus = jnp.where(
        state.on_insulin, bolus, jnp.where(restart, p.restart_scale, state.bolus_scale)
    )
    return TitrationState(
        basal_scale=basal,
        bolus_scale=bolus,
        on_insulin=on,
        stops=state.stops + stop.astype(state.stops.dtype),
        restarts=state.restarts + restart.astype(state.restarts.dtype),
    )
