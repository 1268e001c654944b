"""Fitting speed: one patient, 6 visits x 14 days of 5-minute CGM, cold and warm.

A synthetic transplant recipient (tests/fit_fixtures.py: known parameters and graft,
8 mg/dL sensor noise) is fitted with `isletfit.fitting.fit_patient`: wall time of the
first call (with compilation) and of a second call (compiled), with the default
fixed-grid windows (`FixedGrid`), the day-windows split over the CPU's cores (each
core a JAX device, ``fit_patient(mesh=...)``; ``isletfit_*``). In the same process:
the same split fits without the optimiser's line search after rejected steps
(``no_line_search_*``, `LevenbergMarquardt.line_search`), the same fits on one
device (``one_device_*``, what a session that does not expose its cores gets), and,
as the baseline of the fixed grid, the adaptive solver on one
device (``FitModel(grid=None)``; ``adaptive_*``). Also in the same run:

- the baseline the issue names: the same model and objective written without JAX
  (benchmarks/scipy_baseline.py: numpy vector field, ``solve_ivp(LSODA)`` between
  events, ``least_squares`` with a finite-difference Jacobian and its sparsity pattern),
  from the same start, with the CGM error SD and AR(1) coefficient fixed at isletfit's
  estimates; its wall time, the ratio, and both fits' RMSE;
- a cross-check of the two implementations: the largest CGM difference at the same
  parameters;
- the optimiser comparison: Levenberg–Marquardt (isletfit's) against L-BFGS
  (optimistix, reverse-mode gradients) on the same objective from the same start.

Run: ``python benchmarks/fit.py [--quick] [--json] [--skip-lbfgs] [--only-fits]``. The full run
takes tens of minutes on a 2-core CPU (the scipy baseline about 9, L-BFGS about 10);
``--quick`` uses 1 CGM day, one warm fit, and skips L-BFGS, the one-device
and adaptive fits and the fresh-Jacobian solve. The warm figure is the median of
three fits with different starting jitter. Also timed: one Levenberg–Marquardt solve
with chord steps (held Jacobians, the default) and with a fresh Jacobian at every
trial point.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from common import machine, parse_args, report

jax.config.update("jax_enable_x64", True)
# every core a JAX device, so that a fit can split its windows over them
jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import equinox as eqx  # noqa: E402
import optimistix as optx  # noqa: E402
import scipy_baseline  # noqa: E402

from isletfit.fitting import FitModel, LevenbergMarquardt, Prior, fit_patient  # noqa: E402
from isletfit.fitting._fit import _pad_events, _solve  # noqa: E402
from isletfit.fitting._problem import (  # noqa: E402
    _BOUND_SHARPNESS,
    Objective,
    prepare_windows,
)
from isletfit.model import param_info  # noqa: E402

from fit_fixtures import REFERENCE, synthetic_patient  # noqa: E402


def scipy_problem(obj: Objective, n_windows: int, n_knots: int, noise) -> dict:
    """The same windows, inputs, priors and unknowns, as plain numpy for scipy."""
    win, prior = obj.windows, obj.prior
    base = {
        k: float(getattr(obj.model.params, k))
        for k in obj.model.params.__dataclass_fields__
    }
    inputs = jax.tree.map(np.asarray, win.inputs)
    windows = []
    for w in range(n_windows):
        mt, mm = inputs.meal_t[w], inputs.meal[w]
        bt, bb = inputs.bolus_t[w], inputs.bolus[w]
        st, sr = inputs.basal_t[w], inputs.basal[w]
        events = {}
        for t, m in zip(mt[np.isfinite(mt)], mm[np.isfinite(mt)], strict=True):
            events.setdefault(float(t), [0.0, 0.0])[0] += float(m)
        for t, u in zip(bt[np.isfinite(bt)], bb[np.isfinite(bt)], strict=True):
            events.setdefault(float(t), [0.0, 0.0])[1] += float(u)
        seg_t, seg_r = st[np.isfinite(st)], sr[np.isfinite(st)]

        def basal_rate(t, seg_t=seg_t, seg_r=seg_r):
            i = np.searchsorted(seg_t, t, side="right") - 1
            return float(seg_r[i]) if i >= 0 else 0.0

        windows.append(
            {
                "t0": float(win.t0[w]),
                "ts": np.asarray(win.ts[w]),
                "obs": np.asarray(win.obs[w]),
                "mask": np.asarray(win.mask[w] & (win.censor[w] == 0)),
                "events": sorted((t, m, u) for t, (m, u) in events.items()),
                "basal_t": seg_t,
                "basal_rate": basal_rate,
                "interp": np.asarray(win.interp[w, :n_knots]),
                "graft_on": bool(win.graft_on[w]),
            }
        )
    p = len(prior.estimated)
    bounds = {r["name"]: (r["lower"], r["upper"]) for r in param_info()}
    t_len = windows[0]["ts"].size
    n_rows = n_windows * t_len + p + 1 + (n_knots - 1) + 2 * n_windows
    n_cols = p + n_knots + 2 * n_windows
    sparsity = scipy.sparse.lil_matrix((n_rows, n_cols), dtype=int)
    for w, wd in enumerate(windows):
        rows = slice(w * t_len, (w + 1) * t_len)
        sparsity[rows, :p] = 1
        for k in np.flatnonzero(wd["interp"]):
            sparsity[rows, p + k] = 1
        sparsity[rows, p + n_knots + 2 * w : p + n_knots + 2 * w + 2] = 1
    r = n_windows * t_len
    for i in range(p):
        sparsity[r + i, i] = 1
    sparsity[r + p, p] = 1
    for k in range(n_knots - 1):
        sparsity[r + p + 1 + k, p + k : p + k + 2] = 1
    r0 = r + p + n_knots
    for w in range(n_windows):
        sparsity[r0 + w, p + n_knots + 2 * w] = 1
        sparsity[r0 + n_windows + w, p + n_knots + 2 * w + 1] = 1
    dt = np.diff(np.asarray(win.knot_days[:n_knots]))
    return {
        "base": base,
        "names": list(prior.estimated),
        "n_knots": n_knots,
        "windows": windows,
        "sigma": float(noise[0]),
        "phi": float(noise[1]),
        "theta_prior": np.asarray(obj.prior_centre()),
        "theta_sd": np.asarray(prior.log_sd),
        # the soft physiological bounds of `Objective.params_from`
        "theta_lo": np.log([max(bounds[n][0], 1e-12) for n in prior.estimated]),
        "theta_hi": np.log([bounds[n][1] for n in prior.estimated]),
        "bound_sharpness": _BOUND_SHARPNESS,
        "knot_level": np.log(prior.graft_median),
        "knot_level_sd": prior.graft_log_sd,
        "rw_sd": prior.graft_rw_sigma * np.sqrt(dt),
        "glucose_sd": prior.initial_glucose_log_sd,
        "sensitivity_sd": prior.daily_sensitivity_log_sd,
        "sparsity": sparsity.tocsr(),
    }


def rmse_of(problem, x) -> float:
    """RMSE [mg/dL] of the scipy fit's CGM against the readings."""
    err = []
    for win, pred in zip(
        problem["windows"], scipy_baseline.predictions(problem, x), strict=True
    ):
        err.append((pred - win["obs"])[win["mask"]])
    err = np.concatenate(err)
    return float(np.sqrt(np.mean(err**2)))


def _cold_and_warm(
    patient, model, kw, keys=(1, 2, 3)
) -> tuple[float, list[float], object, dict]:
    """First fit [s] (key 0), warm [min, median, max] [s], median result, results by key.

    The warm figure is a median because the starting jitter differs between keys,
    and with it the number of iterations.
    """
    start = time.perf_counter()
    fit_patient(patient, key=jax.random.key(0), model=model, **kw)
    first = time.perf_counter() - start
    warm, by_key = [], {}
    for k in keys:
        start = time.perf_counter()
        by_key[k] = fit_patient(patient, key=jax.random.key(k), model=model, **kw)
        warm.append((time.perf_counter() - start, by_key[k]))
    warm.sort(key=lambda x: x[0])
    times = [t for t, _ in warm]
    return (
        first,
        [times[0], times[len(times) // 2], times[-1]],
        warm[len(warm) // 2][1],
        by_key,
    )


def _without_line_search(patient, kw, figures, warm, split) -> None:
    """The same split fits without the optimiser's line search, its baseline.

    `LevenbergMarquardt.line_search`: a rejected step retried at the parabola's minimum.
    """
    plain = LevenbergMarquardt(line_search=False)
    first, warm_p, _, by_key = _cold_and_warm(
        patient, FitModel(), dict(kw, optimiser=plain)
    )
    figures["no_line_search_first_s"] = first
    figures["no_line_search_warm_s"] = warm_p[1]
    figures["line_search_speedup_warm_ratio"] = warm_p[1] / warm[1]
    figures["no_line_search_iterations_by_key"] = [by_key[k].iterations for k in by_key]
    figures["isletfit_iterations_by_key"] = [split[k].iterations for k in by_key]
    # where each stopped: the cost (negative log posterior) with minus without
    figures["line_search_minus_plain_cost_by_key"] = [
        split[k].cost - by_key[k].cost for k in by_key
    ]


def _one_device_and_adaptive(patient, kw, figures, warm, res, split) -> None:
    """The same fits on one device, and with the adaptive solver (one device)."""
    # the one-device fits (the first call compiles the one-device programs)
    first, warm_1, res_1, one = _cold_and_warm(patient, FitModel(), kw)
    figures["one_device_first_s"], figures["one_device_warm_s"] = first, warm_1[1]
    figures["one_device_iterations"] = res_1.iterations
    figures["split_speedup_warm_ratio"] = warm_1[1] / warm[1]
    figures["split_minus_one_device_max_abs_log_b"] = max(  # the same keys
        float(np.max(np.abs(split[k].log_b - one[k].log_b))) for k in split
    )
    # the adaptive solver (`FitModel(grid=None)`), the fixed grid's baseline
    first, warm_a, res_a, _ = _cold_and_warm(patient, FitModel(grid=None), kw)
    figures["adaptive_first_s"], figures["adaptive_warm_s"] = first, warm_a[1]
    figures["adaptive_iterations"] = res_a.iterations
    figures["adaptive_rmse_mg_dl"] = res_a.rmse_mg_dl
    figures["adaptive_over_grid_warm_ratio"] = (
        figures["adaptive_warm_s"] / figures["one_device_warm_s"]
    )
    figures["adaptive_minus_grid_max_abs_log_b"] = float(
        np.max(np.abs(np.asarray(res_a.log_b) - np.asarray(res.log_b)))
    )


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        ("--skip-lbfgs", "leave out the L-BFGS comparison (about 10 minutes)"),
        ("--only-fits", "only the fit_patient timings (default and adaptive)"),
    )
    figures: dict = {f"machine_{k}": v for k, v in machine().items()}
    blocks = (
        ((60, 1),)
        if args.quick
        else tuple((d, 14) for d in (-14, 30, 90, 180, 270, 365))
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        patient, _ = synthetic_patient(Path(tmp) / "p.csv", seed=1, blocks=blocks)
    figures["simulate_patient_s"] = time.perf_counter() - start
    kw = dict(weight_kg=70.0, transplant_date=REFERENCE)
    devices = len(jax.devices())
    mesh = jax.make_mesh((devices,), ("windows",)) if devices > 1 else None
    # --quick: one warm fit, and neither the one-device nor the adaptive comparison
    keys = (1,) if args.quick else (1, 2, 3)
    cold, warm, res, split = _cold_and_warm(
        patient, FitModel(), dict(kw, mesh=mesh), keys
    )
    figures["isletfit_devices"] = devices
    figures["isletfit_cold_s"] = cold
    figures["isletfit_warm_min_s"], figures["isletfit_warm_s"] = warm[0], warm[1]
    figures["isletfit_warm_max_s"] = warm[2]
    figures["isletfit_rmse_mg_dl"] = res.rmse_mg_dl
    figures["isletfit_iterations"] = res.iterations
    figures["windows"] = res.info.n_windows
    figures["readings"] = res.n_readings
    if not args.quick:
        _without_line_search(patient, dict(kw, mesh=mesh), figures, warm, split)
        _one_device_and_adaptive(patient, kw, figures, warm, res, split)
    if args.only_fits:
        report(figures, as_json=args.json, title="isletfit fit of one patient")
        return

    # ---- the same objective, one start, fixed noise: LM vs L-BFGS vs scipy
    # the objective of the baseline: daily effects on insulin sensitivity only, no
    # sensor calibration (its unknowns stay inert at a prior SD of 0)
    model = FitModel()
    prior = Prior(
        daily_meal_absorption_log_sd=0.0,
        daily_insulin_absorption_log_sd=0.0,
        sensor_gain_log_sd=0.0,
        sensor_offset_sd=0.0,
    )
    windows, info = prepare_windows(
        patient,
        model=model,
        **{
            "weight_kg": 70.0,
            "transplant_day": float(
                (REFERENCE - patient.reference_time.normalize()).days
            ),
        },
    )
    windows = eqx.tree_at(lambda w: w.inputs, windows, _pad_events(windows.inputs))
    obj = Objective(windows=windows, model=model, prior=prior)
    noise = (jnp.asarray(res.sigma_mg_dl), jnp.asarray(res.ar1))
    p = obj.n_params
    g0 = jnp.concatenate(
        [
            obj.prior_centre(),
            jnp.where(windows.knot_valid, jnp.log(prior.graft_median), 0.0),
            jnp.zeros(2 * obj.n_sessions),
        ]
    )
    l0 = jnp.zeros((windows.ts.shape[0], obj.n_local))
    weights = jnp.ones(windows.obs.shape)

    def timed_solve(lm: LevenbergMarquardt):
        """Wall time [s] of a compiled solve from (g0, l0), and its result."""
        args_ = (g0, l0, noise, weights, jnp.asarray(lm.max_iter))
        start = time.perf_counter()
        _solve(obj, lm, *args_)  # compile
        figures.setdefault("lm_first_call_s", time.perf_counter() - start)
        start = time.perf_counter()
        result = jax.block_until_ready(_solve(obj, lm, *args_))
        return time.perf_counter() - start, result

    figures["lm_s"], out = timed_solve(LevenbergMarquardt())
    figures["lm_cost"] = float(out.blocks.cost)
    figures["lm_iterations"] = int(out.iterations)
    figures["lm_jacobians"] = int(out.jacobians)
    if not args.quick:  # the same with a fresh Jacobian at every trial point
        seconds, ref = timed_solve(LevenbergMarquardt(reuse_jacobian=0))
        figures["lm_fresh_jacobians_s"] = seconds
        figures["lm_fresh_jacobians_cost"] = float(ref.blocks.cost)
        figures["lm_fresh_jacobians_iterations"] = int(ref.iterations)

    def value(z, _):
        g, loc = z
        u = obj.to_window(g)
        rw = jax.vmap(
            lambda uw, lw, w, wt: obj.window_residual(
                uw, lw, w, noise, wt, forward_mode=False
            )
        )(u, loc, jnp.arange(u.shape[0]), weights)
        r0 = obj.global_residual(g)
        return 0.5 * (jnp.sum(rw**2) + jnp.sum(r0**2))

    if not (args.quick or args.skip_lbfgs):
        solver = optx.LBFGS(rtol=1e-8, atol=1e-8)
        run = eqx.filter_jit(
            lambda z: optx.minimise(value, solver, z, max_steps=1000, throw=False)
        )
        sol = run((g0, l0))
        start = time.perf_counter()
        sol = jax.block_until_ready(run((g0, l0)))
        figures["lbfgs_s"] = time.perf_counter() - start
        figures["lbfgs_cost"] = float(value(sol.value, None))
        figures["lbfgs_steps"] = int(sol.stats["num_steps"])
        figures["lbfgs_over_lm_time_ratio"] = figures["lbfgs_s"] / figures["lm_s"]

    # ---- the scipy baseline on the same problem
    n_windows, n_knots = info.n_windows, info.n_knots
    problem = scipy_problem(obj, n_windows, n_knots, noise)
    x_start = np.concatenate(
        [np.asarray(g0[:p]), np.asarray(g0[p : p + n_knots]), np.zeros(2 * n_windows)]
    )
    # cross-check of the two implementations at the isletfit optimum
    x_fit = np.concatenate(
        [
            np.asarray(out.g[:p]),
            np.asarray(out.g[p : p + n_knots]),
            np.asarray(out.loc[:n_windows]).ravel(),
        ]
    )
    figures["cross_check_rmse_difference_mg_dl"] = abs(
        rmse_of(problem, x_fit)
        - float(
            np.sqrt(
                np.mean(
                    (
                        np.asarray(out.aux[0])[:n_windows]
                        - np.asarray(windows.obs)[:n_windows]
                    )[np.asarray(windows.mask & (windows.censor == 0))[:n_windows]]
                    ** 2
                )
            )
        )
    )
    start = time.perf_counter()
    result, _ = scipy_baseline.fit(problem, x_start, max_nfev=None)
    figures["scipy_s"] = time.perf_counter() - start
    figures["scipy_nfev"] = int(result.nfev)
    figures["scipy_cost"] = float(result.cost)
    figures["scipy_rmse_mg_dl"] = rmse_of(problem, result.x)
    figures["scipy_over_isletfit_warm_ratio"] = (
        figures["scipy_s"] / figures["isletfit_warm_s"]
    )
    figures["scipy_over_isletfit_cold_ratio"] = (
        figures["scipy_s"] / figures["isletfit_cold_s"]
    )
    report(figures, as_json=args.json, title="isletfit fit of one patient")


if __name__ == "__main__":
    main()
