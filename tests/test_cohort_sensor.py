"""The CGM sensor model against its specification (Vettoretti 2019 G6, domain.md §6.2)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isletfit.cohort import SensorModel, ar2_stationary_sd, sensor_readings

DAYS = 60
N = DAYS * 288
TIMES = jnp.arange(N, dtype=float) * 5.0
#: No between-sensor variability and no dropouts: every sensor is the mean G6 sensor.
EXACT = SensorModel(
    gain_sd=(0.0, 0.0, 0.0),
    offset_sd=0.0,
    ar_sd=(0.0, 0.0),
    noise_sd_cv=0.0,
    p_drop=0.0,
    p_gap=0.0,
)


def _read(model, ig, *, first=-300.0, seed=0, times=TIMES):
    out = sensor_readings(
        model,
        jnp.broadcast_to(jnp.asarray(ig, float), times.shape),
        times,
        first_insertion_min=first,
        key=jax.random.key(seed),
    )
    return jax.tree.map(np.asarray, out)


def test_ar2_stationary_sd_of_the_g6_model():
    assert float(ar2_stationary_sd(1.260, -0.402, 3.25)) == pytest.approx(8.1, abs=0.05)


def test_ten_day_sensors_with_two_hour_warmup():
    r = _read(EXACT, 150.0, first=-300.0)
    life = 10 * 1440.0
    expected_sensor = np.floor((np.asarray(TIMES) + 300.0) / life)
    np.testing.assert_array_equal(r.sensor, expected_sensor)
    age_min = np.asarray(TIMES) + 300.0 - expected_sensor * life
    np.testing.assert_array_equal(r.observed, age_min >= 120.0)
    # every new sensor: 24 missing readings (2 h at 5 min), then readings again
    starts = np.flatnonzero(np.diff(r.sensor) == 1) + 1
    assert len(starts) == DAYS // 10
    for s in starts:
        assert not r.observed[s : s + 24].any()
        assert r.observed[s + 24]
    assert np.isnan(r.value[~r.observed]).all()


def _noise(r, ig=150.0, model=EXACT):
    a0, a1, a2 = model.gain
    gain = a0 + a1 * r.age_days + a2 * r.age_days**2
    return r.value - (gain * ig + model.offset)


def test_noise_sd_and_ar2_correlation_match_the_specification():
    r = _read(EXACT, 150.0, seed=1)
    e = _noise(r)
    ok = r.observed
    # rounding to whole mg/dL adds variance 1/12
    sd = float(np.sqrt(np.var(e[ok]) - 1.0 / 12.0))
    assert sd == pytest.approx(float(ar2_stationary_sd(1.260, -0.402, 3.25)), rel=0.08)
    assert abs(float(np.mean(e[ok]))) < 1.0
    # autocorrelation within sensors (pairs of consecutive observed readings)
    c1, c2 = EXACT.ar
    rho1 = c1 / (1.0 - c2)
    rho2 = c1 * rho1 + c2

    def acf(lag):
        both = ok[lag:] & ok[:-lag] & (r.sensor[lag:] == r.sensor[:-lag])
        x, y = e[lag:][both], e[:-lag][both]
        return float(np.corrcoef(x, y)[0, 1])

    assert acf(1) == pytest.approx(rho1, abs=0.04)
    assert acf(2) == pytest.approx(rho2, abs=0.06)
    # Yule-Walker estimates of the AR(2) coefficients
    r1, r2 = acf(1), acf(2)
    c1_hat = r1 * (1 - r2) / (1 - r1**2)
    c2_hat = (r2 - r1**2) / (1 - r1**2)
    assert c1_hat == pytest.approx(c1, abs=0.1)
    assert c2_hat == pytest.approx(c2, abs=0.1)


def test_calibration_drift_over_sensor_life():
    """Mean error follows the gain polynomial a0 + a1 t + a2 t² and offset b0."""
    r = _read(EXACT, 200.0, seed=2)
    ok = r.observed
    early = ok & (r.age_days < 2.0)
    late = ok & (r.age_days > 8.0)
    a0, a1, a2 = EXACT.gain
    for sel in (early, late):
        t = r.age_days[sel].mean()
        expected = (a0 + a1 * t + a2 * t**2) * 200.0 + EXACT.offset
        assert r.value[sel].mean() == pytest.approx(expected, abs=1.5)


def test_low_and_high_are_censored_at_40_and_400():
    low = _read(EXACT, 5.0)
    ok = low.observed
    assert np.mean(low.censored[ok] == -1) > 0.999
    assert (low.value[ok & (low.censored == -1)] == 40.0).all()
    assert (low.value[ok & (low.censored == 0)] >= 40.0).all()
    high = _read(EXACT, 480.0)
    ok = high.observed
    assert np.mean(high.censored[ok] == 1) > 0.999
    assert (high.value[ok & (high.censored == 1)] == 400.0).all()
    normal = _read(EXACT, 120.0)
    ok = normal.observed
    assert (normal.censored[ok] == 0).all()
    assert (normal.value[ok] == np.round(normal.value[ok])).all()
    assert ((normal.value[ok] >= 40) & (normal.value[ok] <= 400)).all()
    assert normal.censored.dtype == np.int8


def test_random_dropouts():
    model = dataclasses.replace(EXACT, p_drop=0.01, p_gap=0.002, gap_mean_readings=6.0)
    r = _read(model, 150.0, seed=3)
    warm = np.asarray(r.age_days) * 1440.0 >= 120.0
    missing = float(np.mean(~r.observed[warm]))
    # isolated losses + gaps: about 0.01 + 0.002 * 6
    assert 0.012 < missing < 0.035
    # gaps of several readings exist
    runs = np.diff(np.flatnonzero(np.diff(np.r_[1, r.observed[warm].astype(int), 1])))
    assert runs.max() > 5


def test_each_sensor_draws_its_own_error_within_limits():
    model = SensorModel()
    keys = jax.random.split(jax.random.key(4), 400)
    from isletfit.cohort._sensor import _sensor_parameters

    gain, offset, c1, c2, sigma = jax.vmap(lambda k: _sensor_parameters(model, k))(keys)
    sd = np.asarray(ar2_stationary_sd(c1, c2, sigma))
    assert (sd <= model.max_stationary_sd + 1e-9).all()
    assert np.std(np.asarray(offset)) == pytest.approx(model.offset_sd, rel=0.2)
    assert np.std(np.asarray(gain[:, 0])) > 0.0
    # stationarity triangle
    c1, c2 = np.asarray(c1), np.asarray(c2)
    assert (np.abs(c2) < 1).all() and (c1 + c2 < 1).all() and (c2 - c1 < 1).all()


def test_noise_restarts_across_gaps_in_time():
    """Non-consecutive days: readings after the gap are still stationary noise."""
    day = jnp.arange(288, dtype=float) * 5.0
    times = jnp.concatenate([day, day + 5 * 1440.0])
    r = _read(EXACT, 150.0, times=times, first=-1440.0)
    e = _noise(r)
    assert np.isfinite(e[r.observed]).all()
    assert np.std(e[r.observed]) < 15.0


def test_same_key_same_readings_and_missing_interstitial_is_missing():
    a = _read(SensorModel(), 150.0, seed=5)
    b = _read(SensorModel(), 150.0, seed=5)
    np.testing.assert_array_equal(a.value, b.value)
    ig = np.full(N, 150.0)
    ig[100:110] = np.nan
    r = sensor_readings(
        SensorModel(),
        jnp.asarray(ig),
        TIMES,
        first_insertion_min=-300.0,
        key=jax.random.key(0),
    )
    assert not np.asarray(r.observed)[100:110].any()
