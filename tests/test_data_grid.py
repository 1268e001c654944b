"""resample, stack and stack_events: shapes, masks, padding, vmap."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import isletfit.data as data
from isletfit import InputError

FIX = Path(__file__).parent / "fixtures" / "data"


def _cgm(times, values, censored=None):
    n = len(times)
    return data.CGMReadings(
        time_min=times,
        timestamp=pd.Timestamp("2024-03-05") + pd.to_timedelta(times, unit="min"),
        glucose_mg_dl=values,
        censored=np.zeros(n) if censored is None else censored,
        row=np.arange(n) + 2,
        source=np.zeros(n),
    )


def test_resample_nearest_within_half_step():
    cgm = _cgm([1.0, 4.0, 6.0, 23.0], [100.0, 110.0, 120.0, 130.0], [0, -1, 0, 1])
    g = data.resample(cgm, step_min=5.0)
    np.testing.assert_allclose(g.time_min, [0, 5, 10, 15, 20, 25])
    # slot 0 <- 1.0; slot 5: 4.0 and 6.0 tie at 1 min, the earlier reading wins
    assert g.mask.tolist() == [True, True, False, False, False, True]
    np.testing.assert_allclose(g.reading_time_min, [1, 4, 10, 15, 20, 23])
    np.testing.assert_allclose(g.glucose_mg_dl, [100, 110, 110, 110, 110, 130])
    assert g.censored.tolist() == [0, -1, 0, 0, 0, 1]
    assert g.censored.dtype == np.int8 and g.mask.dtype == bool


def test_resample_picks_the_reading_nearest_the_centre():
    g = data.resample(_cgm([8.0, 9.5, 11.0], [1.0, 2.0, 3.0]), step_min=5.0)
    assert g.time_min.tolist() == [5.0, 10.0, 15.0]
    # all three readings are nearest the 10-min slot; the one closest to it wins
    assert g.mask.tolist() == [False, True, False]
    np.testing.assert_allclose(g.glucose_mg_dl, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(g.reading_time_min, [5.0, 9.5, 15.0])


def test_resample_window_and_leading_gap():
    g = data.resample(_cgm([30.0, 35.0], [90.0, 95.0]), start_min=0, end_min=60)
    assert len(g) == 13 and g.mask.sum() == 2
    assert np.all(g.glucose_mg_dl[:6] == 90.0)  # before the first reading: finite
    assert np.all(np.isfinite(g.glucose_mg_dl))


def test_resample_patient():
    p = data.read(FIX / "dexcom_mgdl.csv")
    g = data.resample(p)
    assert g.patient_id == p.patient_id
    assert g.mask.sum() == len(p.cgm)  # one reading per 5-min slot
    assert g.time_min[0] == 360.0 and g.time_min[-1] == 600.0
    assert (g.censored != 0).sum() == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"step_min": 0}, {"step_min": -5}, {"start_min": 10, "end_min": 0}],
)
def test_resample_bad_arguments(kwargs):
    with pytest.raises(InputError):
        data.resample(_cgm([1.0], [100.0]), **kwargs)


def test_resample_empty_needs_a_window():
    empty = data.CGMReadings.empty()
    with pytest.raises(InputError):
        data.resample(empty)
    g = data.resample(empty, start_min=0, end_min=10)
    assert g.mask.sum() == 0 and np.all(g.glucose_mg_dl == 0)


def test_stack_pads_and_masks():
    a = data.resample(_cgm([0.0, 5.0, 10.0], [100.0, 101.0, 102.0]))
    b = data.resample(_cgm([0.0, 5.0, 10.0, 15.0, 20.0], [1.0, 2.0, 3.0, 4.0, 5.0]))
    s = data.stack([a, b])
    assert s.glucose_mg_dl.shape == (2, 5) and s.mask.shape == (2, 5)
    assert s.n_times.tolist() == [3, 5]
    assert s.mask[0].tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(s.time_min[0], [0, 5, 10, 15, 20])
    np.testing.assert_allclose(s.glucose_mg_dl[0, 3:], 102.0)
    assert np.all(np.isfinite(s.glucose_mg_dl))
    assert s.patient_ids == (None, None)


def test_stack_refuses_mixed_steps():
    a = data.resample(_cgm([0.0], [100.0]), step_min=5)
    b = data.resample(_cgm([0.0], [100.0]), step_min=15)
    with pytest.raises(InputError):
        data.stack([a, b])
    with pytest.raises(InputError):
        data.stack([])


def test_stacked_grid_vmaps():
    ps = data.read_many([FIX / "generic_multi.csv", FIX / "dexcom_mgdl.csv"])
    s = data.stack([data.resample(p) for p in ps])

    def masked_mean(g):
        m = jnp.asarray(g.mask)
        total = jnp.sum(jnp.where(m, jnp.asarray(g.glucose_mg_dl), 0.0))
        return total / jnp.sum(m.astype(jnp.float64))

    means = jax.vmap(masked_mean)(s)
    expected = [p.cgm.glucose_mg_dl.mean() for p in ps]
    np.testing.assert_allclose(np.asarray(means), expected)
    leaves = jax.tree.leaves(s)
    assert len(leaves) == 6  # arrays are leaves; step and ids are static


def test_stack_events():
    p = data.read(FIX / "tidepool.json")
    q = data.read(FIX / "p017.csv")
    e = data.stack_events([p.boluses, q.boluses, (np.array([1.0]), np.array([2.0]))])
    assert e.time_min.shape == (3, 11)
    assert e.count.tolist() == [11, 2, 1]
    assert np.isinf(e.time_min[1, 2:]).all() and (e.amount[1, 2:] == 0).all()
    assert e.mask.sum() == 14
    f = data.stack_events([p.basal, q.basal], pad_time=1e6, length=8)
    assert f.time_min.shape == (2, 8) and f.time_min[1, 3] == 1e6
    jax.vmap(lambda ev: jnp.sum(jnp.where(ev.mask, ev.amount, 0.0)))(e)


def test_stack_events_errors():
    with pytest.raises(InputError):
        data.stack_events([])
    with pytest.raises(InputError):
        data.stack_events([(np.zeros(2), np.zeros(3))])
    with pytest.raises(InputError):
        data.stack_events([(np.zeros(4), np.zeros(4))], length=2)
