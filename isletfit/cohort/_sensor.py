r"""A factory-calibrated 10-day CGM (Dexcom G6-like) observing interstitial glucose.

Each reading of sensor $s$ at time $t$ is

$$y(t) = a_s(\tau)\,IG(t) + b_s + v_s(t),\qquad a_s(\tau) = a_0 + a_1\tau + a_2\tau^2,$$

with $IG$ the model's interstitial (CGM) glucose, which already carries the blood-to-
interstitium lag ``tau_sensor``, $\tau$ the sensor's age [day], and $v_s$ an AR(2)
process $v_k = c_1 v_{k-1} + c_2 v_{k-2} + \varepsilon_k$, $\varepsilon_k \sim
\mathcal N(0, \sigma^2)$ per 5-min step. The mean parameters are those of the Dexcom G6
model of Vettoretti et al. (2019, *Sensors*), as in ReplayBG: $a = (0.942, 0.00494,
-0.000585)$, $b = 6.38$ mg/dL, $c = (1.260, -0.402)$, $\sigma = 3.25$ mg/dL (stationary
noise SD ≈ 8.1 mg/dL). Each sensor draws its own parameters around these means (SDs
below are isletfit choices, as the published 7-D covariance is not reproduced here);
as in ReplayBG, AR coefficients are kept stationary and the innovation SD is reduced
when the stationary noise SD would exceed 10 mg/dL.

A new sensor is inserted every ``lifetime_days`` (10 days) from a per-person start, and
reads nothing during its ``warmup_min`` (2 h) warm-up. Readings also drop out at random
(isolated losses and gaps of a few readings, e.g. signal loss). Values are rounded to
whole mg/dL and clipped to the display range: below 40 mg/dL the device shows "Low",
above 400 mg/dL "High" (``censored`` = -1/+1, value stored at the limit).

Where consecutive simulated readings are not 5 min apart (days that were not
simulated), the noise restarts from its stationary distribution.

References:
    - Vettoretti M, Del Favero S, Sparacino G, Facchinetti A. Modeling the error of
      factory-calibrated continuous glucose monitoring sensors: application to Dexcom
      G6 sensor data. Annu Int Conf IEEE Eng Med Biol Soc 2019:750-753; and Sensors
      2019 (parameters as in py-replay-bg, ``sensors/Vettoretti19CGM.py``).
    - Facchinetti A et al. Modeling the error of continuous glucose monitoring sensor
      data: critical aspects discussed through simulation studies. J Diabetes Sci
      Technol 4:4-14, 2010; IEEE Trans Biomed Eng 61:620-629, 2014.
    - Dexcom G6 labelling: 5-min readings, 40-400 mg/dL, 10-day wear, 2-h warm-up.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

__all__ = ["SensorModel", "SensorReadings", "ar2_stationary_sd", "sensor_readings"]

_MIN_PER_DAY = 1440.0


def ar2_stationary_sd(
    c1: Float[ArrayLike, "..."],
    c2: Float[ArrayLike, "..."],
    sigma: Float[ArrayLike, "..."],
) -> Float[Array, "..."]:
    r"""Stationary SD of an AR(2) process [unit of sigma].

    $\gamma_0 = \sigma^2 (1 - c_2)/\{(1 + c_2)[(1 - c_2)^2 - c_1^2]\}$.
    """
    c1, c2, sigma = jnp.asarray(c1), jnp.asarray(c2), jnp.asarray(sigma)
    var = sigma**2 * (1.0 - c2) / ((1.0 + c2) * ((1.0 - c2) ** 2 - c1**2))
    return jnp.sqrt(var)


@dataclasses.dataclass(frozen=True)
class SensorModel:
    """The CGM device and its error model (see the module docstring).

    Attributes:
        step_min: Reading interval [min].
        lifetime_days: Wear time of one sensor [day].
        warmup_min: Warm-up without readings after insertion [min].
        gain: Mean (a0, a1, a2) of the gain polynomial in sensor age [-, 1/day, 1/day²].
        gain_sd: Between-sensor SD of (a0, a1, a2).
        offset: Mean offset b [mg/dL].
        offset_sd: Between-sensor SD of the offset [mg/dL].
        ar: Mean AR(2) coefficients (c1, c2) per 5-min step [-].
        ar_sd: Between-sensor SD of (c1, c2).
        noise_sd: Mean innovation SD sigma [mg/dL].
        noise_sd_cv: Between-sensor coefficient of variation of sigma [-].
        max_stationary_sd: Largest stationary noise SD of a sensor [mg/dL].
        p_drop: Chance that a single reading is lost [-].
        p_gap: Chance per reading that a longer gap starts [-].
        gap_mean_readings: Mean length of such a gap [readings] (geometric).
        low: Lowest displayed value [mg/dL] ("Low" below).
        high: Highest displayed value [mg/dL] ("High" above).
    """

    step_min: float = 5.0
    lifetime_days: float = 10.0
    warmup_min: float = 120.0
    gain: tuple[float, float, float] = (0.942, 0.00494, -0.000585)
    gain_sd: tuple[float, float, float] = (0.04, 0.003, 0.0003)
    offset: float = 6.38
    offset_sd: float = 4.0
    ar: tuple[float, float] = (1.260, -0.402)
    ar_sd: tuple[float, float] = (0.04, 0.04)
    noise_sd: float = 3.25
    noise_sd_cv: float = 0.15
    max_stationary_sd: float = 10.0
    p_drop: float = 0.005
    p_gap: float = 0.002
    gap_mean_readings: float = 6.0
    low: float = 40.0
    high: float = 400.0


class SensorReadings(eqx.Module):
    """CGM readings of one person (same shape as the input times).

    Attributes:
        value: Displayed value [mg/dL] (at the limit when censored; NaN when missing).
        censored: -1 for "Low", +1 for "High", 0 otherwise (int8).
        observed: True where a reading exists.
        sensor: Index of the sensor that took each reading.
        age_days: Age of that sensor [day].
    """

    value: Float[Array, " readings"]
    censored: Int[Array, " readings"]
    observed: Bool[Array, " readings"]
    sensor: Int[Array, " readings"]
    age_days: Float[Array, " readings"]


def _sensor_parameters(model: SensorModel, key):
    k_gain, k_off, k_ar, k_sd = jax.random.split(key, 4)
    gain = jnp.asarray(model.gain) + jnp.asarray(model.gain_sd) * jax.random.normal(
        k_gain, (3,)
    )
    offset = model.offset + model.offset_sd * jax.random.normal(k_off, ())
    c = jnp.asarray(model.ar) + jnp.asarray(model.ar_sd) * jax.random.normal(k_ar, (2,))
    # stationarity triangle: |c2| < 1, c2 + c1 < 1, c2 - c1 < 1 (with a margin)
    c2 = jnp.clip(c[1], -0.95, 0.95)
    c1 = jnp.clip(c[0], -(1.0 - c2) + 0.02, (1.0 - c2) - 0.02)
    sigma = model.noise_sd * jnp.exp(
        model.noise_sd_cv * jax.random.normal(k_sd, ()) - 0.5 * model.noise_sd_cv**2
    )
    sd = ar2_stationary_sd(c1, c2, sigma)
    sigma = sigma * jnp.minimum(1.0, model.max_stationary_sd / sd)
    return gain, offset, c1, c2, sigma


def sensor_readings(
    model: SensorModel,
    interstitial: Float[ArrayLike, " readings"],
    time_min: Float[ArrayLike, " readings"],
    *,
    first_insertion_min: Float[ArrayLike, ""],
    key: PRNGKeyArray,
) -> SensorReadings:
    """What the CGM shows for one person's interstitial glucose.

    Args:
        model: The sensor model.
        interstitial: Interstitial glucose at the reading times [mg/dL] (the model's
            ``cgm`` output), in time order.
        time_min: Reading times [min], ascending, on the sensor's 5-min grid.
        first_insertion_min: When the first sensor was inserted [min] (at or before the
            first reading); later sensors follow every ``lifetime_days``.
        key: The person's sensor key (sensor ``s`` uses ``fold_in(key, s)``).

    Returns:
        The `SensorReadings`.
    """
    ig = jnp.asarray(interstitial)
    dtype = ig.dtype
    t = jnp.asarray(time_min, dtype)
    life = model.lifetime_days * _MIN_PER_DAY
    since = t - jnp.asarray(first_insertion_min, dtype)
    sensor = jnp.floor(since / life).astype(jnp.int32)
    age_min = since - sensor.astype(dtype) * life
    age = age_min / _MIN_PER_DAY
    gain, offset, c1, c2, sigma = jax.vmap(
        lambda s: _sensor_parameters(model, jax.random.fold_in(key, s))
    )(sensor)
    gain = gain.astype(dtype)
    k_eps, k_init, k_drop, k_gap, k_len = jax.random.split(key, 5)
    n = ig.shape[0]
    eps = jax.random.normal(k_eps, (n,), dtype) * sigma.astype(dtype)
    init = jax.random.normal(k_init, (n, 2), dtype)
    drop = jax.random.uniform(k_drop, (n,), dtype) < model.p_drop
    gap_start = jax.random.uniform(k_gap, (n,), dtype) < model.p_gap
    p_end = 1.0 / model.gap_mean_readings
    gap_len = (
        jnp.floor(
            jnp.log(jax.random.uniform(k_len, (n,), dtype, 1e-12, 1.0))
            / math.log(1.0 - p_end)
        )
        + 1.0
    )
    prev_t = jnp.concatenate([t[:1] - 2.0 * model.step_min, t[:-1]])
    prev_s = jnp.concatenate([sensor[:1] - 1, sensor[:-1]])
    restart = (jnp.abs(t - prev_t - model.step_min) > 1e-6) | (sensor != prev_s)
    sd0 = ar2_stationary_sd(c1, c2, sigma).astype(dtype)
    rho1 = (c1 / (1.0 - c2)).astype(dtype)

    def step(carry, x):
        v1, v2, gap_left = carry
        c1k, c2k, e, r, z, sd, rho, g_start, g_len = x
        # stationary initial pair (v_{k-1}, v_{k-2}) after a restart
        v1_0 = sd * z[0]
        v2_0 = rho * v1_0 + sd * jnp.sqrt(jnp.maximum(1.0 - rho**2, 0.0)) * z[1]
        v1 = jnp.where(r, v1_0, v1)
        v2 = jnp.where(r, v2_0, v2)
        v = c1k * v1 + c2k * v2 + e
        gap_left = jnp.where(r, 0.0, gap_left)
        gap_left = jnp.where((gap_left <= 0) & g_start, g_len, gap_left)
        in_gap = gap_left > 0
        return (v, v1, gap_left - 1.0), (v, in_gap)

    xs = (
        c1.astype(dtype),
        c2.astype(dtype),
        eps,
        restart,
        init,
        sd0,
        rho1,
        gap_start,
        gap_len,
    )
    zero = jnp.zeros((), dtype)
    _, (noise, in_gap) = jax.lax.scan(step, (zero, zero, zero), xs)
    a = gain[:, 0] + gain[:, 1] * age + gain[:, 2] * age**2
    raw = jnp.round(a * ig + offset.astype(dtype) + noise)
    censored = jnp.where(raw < model.low, -1, jnp.where(raw > model.high, 1, 0))
    value = jnp.clip(raw, model.low, model.high)
    observed = (age_min >= model.warmup_min) & ~drop & ~in_gap & jnp.isfinite(ig)
    return SensorReadings(
        value=jnp.where(observed, value, jnp.nan),
        censored=jnp.where(observed, censored, 0).astype(jnp.int8),
        observed=observed,
        sensor=sensor,
        age_days=age,
    )
