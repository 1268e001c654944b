"""JAX metrics: equal to the numpy path, jit == eager, vmap == loop, gradients sane."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import isletfit.metrics as M

from helpers import tree_allclose

STEP = 5.0


def _data(n_patients=6, days=2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(days * 1440 / STEP)) * STEP
    g = 150 + 70 * np.sin(
        2 * np.pi * (t[None] + rng.uniform(0, 1440, (n_patients, 1))) / 300
    )
    g = np.clip(g + rng.normal(0, 20, g.shape), 40, 400)
    m = rng.uniform(size=g.shape) > 0.25
    m[-1] = False  # an all-masked patient
    g[0, :10] = np.nan  # non-finite readings are left out too
    return g, m


def _numpy_reference(g, m):
    out = M.cgm_metrics_batch(g, m, step_min=STEP)
    del out["mage_mg_dl"], out["adrr"]  # not in the JAX path
    return out


def test_jax_equals_numpy_on_random_masked_data():
    g, m = _data()
    ref = _numpy_reference(g, m)
    got = jax.vmap(M.cgm_metrics_jax)(jnp.asarray(g), jnp.asarray(m))
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k]), ref[k], rtol=1e-10, err_msg=k)
    assert np.isnan(np.asarray(got["mean_mg_dl"])[-1])
    assert float(got["percent_data"][-1]) == 0.0


def test_single_functions_equal_cgm_metrics_jax():
    g, m = _data(2)
    g, m = jnp.asarray(g[0]), jnp.asarray(m[0])
    out = M.cgm_metrics_jax(g, m)
    assert out["mean_mg_dl"] == pytest.approx(float(M.mean_glucose_jax(g, m)))
    assert out["sd_mg_dl"] == pytest.approx(float(M.sd_glucose_jax(g, m)))
    assert out["cv_percent"] == pytest.approx(float(M.cv_percent_jax(g, m)))
    assert out["gmi_percent"] == pytest.approx(float(M.gmi_percent_jax(g, m)))
    assert out["lbgi"] == pytest.approx(float(M.lbgi_jax(g, m)))
    assert out["hbgi"] == pytest.approx(float(M.hbgi_jax(g, m)))
    assert out["j_index"] == pytest.approx(float(M.j_index_jax(g, m)))
    assert out["modd_mg_dl"] == pytest.approx(float(M.modd_jax(g, m)))
    assert out["conga_1h_mg_dl"] == pytest.approx(float(M.conga_jax(g, m)))
    assert tree_allclose(M.time_in_ranges_jax(g, m), M.time_in_ranges(g, m))
    assert tree_allclose(
        M.gri_jax(g, m), {k: out[k] for k in ("gri", "gri_hypo", "gri_hyper")}
    )
    suff = M.data_sufficiency_jax(g, m)
    assert float(suff["days"]) == 2.0 and not bool(suff["sufficient"])


def test_jit_equals_eager_and_vmap_equals_loop():
    g, m = _data(4, seed=1)
    g, m = jnp.asarray(g), jnp.asarray(m)
    f = jax.jit(jax.vmap(lambda a, b: M.cgm_metrics_jax(a, b, conga_hours=2.0)))
    batched = f(g, m)
    for i in range(g.shape[0]):
        eager = M.cgm_metrics_jax(g[i], m[i], conga_hours=2.0)
        one = jax.tree.map(lambda x, i=i: x[i], batched)
        assert tree_allclose(one, eager), i


def test_hand_values_through_jax():
    g = jnp.array([100.0, 120.0, 140.0, 160.0, 180.0])
    m = jnp.ones(5, bool)
    assert float(M.mean_glucose_jax(g, m)) == pytest.approx(140.0)
    assert float(M.sd_glucose_jax(g, m)) == pytest.approx(np.sqrt(1000.0))
    # boundary inclusivity is the same as in numpy
    edges = jnp.array([54.0, 70.0, 180.0, 250.0])
    b = M.time_in_ranges_jax(edges, jnp.ones(4, bool))
    assert float(b["tbr_below_54_percent"]) == 0.0
    assert float(b["tbr_54_69_percent"]) == 25.0
    assert float(b["tir_70_180_percent"]) == 50.0
    assert float(b["tar_181_250_percent"]) == 25.0
    assert float(b["tar_above_250_percent"]) == 0.0


def test_gradients_are_finite_with_masked_patient():
    g, m = _data(3, seed=2)
    g = np.nan_to_num(g, nan=120.0)
    g, m = jnp.asarray(g), jnp.asarray(m)

    def loss(x):
        out = jax.vmap(M.cgm_metrics_jax)(x, m)
        keep = ("mean_mg_dl", "sd_mg_dl", "lbgi", "hbgi", "j_index", "modd_mg_dl")
        # the all-masked patient's nan is selected away, its gradient must stay finite
        return sum(jnp.sum(jnp.where(jnp.isnan(out[k]), 0.0, out[k])) for k in keep)

    grad = jax.jit(jax.grad(loss))(g)
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(grad[-1] == 0.0))
    # d mean / d g_i = 1 / n over observed readings
    gm = jax.grad(lambda x: M.mean_glucose_jax(x, m[0]))(g[0])
    n = float(jnp.sum(m[0]))
    np.testing.assert_allclose(np.asarray(gm), np.where(np.asarray(m[0]), 1 / n, 0.0))


def test_dtype_follows_input():
    g = jnp.full(288, 120.0, dtype=jnp.float32)
    m = jnp.ones(288, bool)
    out = M.cgm_metrics_jax(g, m)
    assert out["mean_mg_dl"].dtype == jnp.float32
    assert out["lbgi"].dtype == jnp.float32
    gi = jnp.full(288, 120, dtype=jnp.int32)
    assert float(M.mean_glucose_jax(gi, m)) == 120.0


def test_short_grid_gives_nan_modd_conga():
    g = jnp.full(10, 120.0)
    m = jnp.ones(10, bool)
    # 10 readings x 5 min = 50 min: no 1-h pair, no 24-h pair
    assert bool(jnp.isnan(M.modd_jax(g, m)))
    assert bool(jnp.isnan(M.conga_jax(g, m)))
    assert np.isnan(M.conga(np.asarray(g)))
    # 14 readings: two 1-h pairs, both differences 0 -> CONGA 0
    assert float(M.conga_jax(jnp.full(14, 120.0), jnp.ones(14, bool))) == 0.0
