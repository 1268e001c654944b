"""Forward simulation at scale: the fused fixed-step loop against the adaptive solves.

Patient-days per second (compilation excluded, best of 2) of `simulate_grid` (one
fused ``lax.scan`` per window, fixed steps on a grid holding every input event)
vmapped over n virtual patients, each with its own parameters, graft B in [0, 1] and
meal/bolus record, for whole 1-day and 14-day windows. Variants:

- ``grid``: the default `FixedGrid` (Bosh3, 4 steps per 5-min interval), float64;
- ``grid_f32``: the same in float32;
- ``grid_u8``: the same with ``unroll=8`` (8 steps per loop iteration; only when
  named in ``--variants``: on the CPU it compiled for 58 s and ran 4× slower);
- ``grid_tsit5``: Tsit5 with 3 steps per 5 minutes, float64;
- ``grid_rk35``: `StabilisedRK35` (third order, 5 stages, real stability interval
  10.5) with one 5-min step per CGM interval, float64 (a quarter of the steps);
- ``grid_rk34``: `StabilisedRK34` (4 stages, interval 6.0) with 2.5-min steps;
- ``grid_etd``: `ExponentialRK3` (third-order exponential Runge–Kutta, the plasma–liver
  insulin exchange, gut absorption and sensor lag solved exactly) with one 5-min step
  per CGM interval, float64;
- ``grid_etd4``: `ExponentialRK4` (the same, fourth order, one more stage);
- ``grid_bosh3``: the default grid written out (for ``--variants`` lists);

and, in the same process and on the same patients (the first ``--baseline-n`` of the
first size):
``lean`` (`simulate`, adaptive Tsit5, rtol = atol = 1e-6) and ``naive`` (a 10-state
vmapped diffrax prototype, the issue's baseline; from benchmarks/simulate.py), with the
ratios ``grid / lean`` and ``grid / naive`` of their patient-days per second.
Accuracy: each variant's largest CGM difference from a tight adaptive solve (rtol =
atol = 1e-10, on the CPU) over the first 16 patients.

Patients beyond the 64 distinct ones of benchmarks/simulate.py's cohort are copies
with their own meal-time shifts (±20 min), parameter factors and B, built with numpy
(not one `Inputs` at a time).

Run: ``python benchmarks/grid.py [--quick] [--json] [--sizes 64,1024] [--days 1,14]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from common import machine, report, timed

jax.config.update("jax_enable_x64", True)

from simulate import cohort, isletfit_runner, naive_runner  # noqa: E402

from isletfit.model import (  # noqa: E402
    ExponentialRK3,
    ExponentialRK4,
    FixedGrid,
    StabilisedRK34,
    StabilisedRK35,
    simulate,
    simulate_grid,
)


def population(n: int, days: int, seed: int = 1):
    """``n`` patients from 64 distinct ones, each copy shifted and perturbed."""
    params, inputs, b, ts = cohort(min(n, 64), days)
    if n <= 64:
        return params, inputs, b, ts
    rng = np.random.default_rng(seed)
    idx = np.arange(n) % 64
    take = lambda x: np.asarray(x)[idx]  # noqa: E731
    params = jax.tree.map(take, params)
    params = eqx.tree_at(
        lambda p: (p.vmx, p.kp1),
        params,
        tuple(
            np.asarray(getattr(params, f)) * np.exp(0.1 * rng.standard_normal(n))
            for f in ("vmx", "kp1")
        ),
    )
    shift = rng.uniform(-20.0, 20.0, (n, 1))
    inputs = jax.tree.map(take, inputs)
    inputs = eqx.tree_at(
        lambda i: (i.meal_t, i.bolus_t),
        inputs,
        (np.asarray(inputs.meal_t) + shift, np.asarray(inputs.bolus_t) + shift),
    )
    b = rng.uniform(0.0, 1.0, n)
    as_jnp = lambda x: jnp.asarray(x)  # noqa: E731
    return jax.tree.map(as_jnp, params), jax.tree.map(as_jnp, inputs), as_jnp(b), ts


def grid_runner(grid: FixedGrid):
    @jax.jit
    def run(params, inputs, b, ts):
        step = grid.steps_for(5.0)  # the cohort's 5-min output grid
        sims = jax.vmap(
            lambda p, i, b: simulate_grid(p, i, ts, b=b, grid=grid, substeps=step)
        )(params, inputs, b)
        return sims.cgm, sims.successful

    return run


def reference(params, inputs, b, ts, k: int = 16):
    """CGM of the first ``k`` patients from a tight adaptive solve, on the CPU."""
    cpu = jax.devices("cpu")[0]
    first = jax.tree.map(lambda x: x[:k], (params, inputs, b))
    first = jax.device_put(first, cpu)
    run = jax.jit(
        jax.vmap(
            lambda p, i, b: (
                simulate(
                    p,
                    i,
                    jax.device_put(ts, cpu),
                    b=b,
                    save_state=False,
                    stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-10),
                    max_steps=2**20,
                ).cgm
            )
        )
    )
    return np.asarray(run(*first))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small version, < 1 min")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizes", default=None, help="patients, e.g. 64,1024")
    parser.add_argument("--days", default=None, help="window lengths, e.g. 1,14")
    parser.add_argument(
        "--baseline-n",
        type=int,
        default=64,
        help="patients for lean and naive (0: no baselines)",
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated (default grid,grid_f32,grid_tsit5,grid_rk35,grid_etd; "
        "--quick grid,grid_rk35,grid_etd)",
    )
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else None
    days_list = [int(x) for x in args.days.split(",")] if args.days else None
    if args.quick:
        sizes, days_list = sizes or [64], days_list or [1]
    sizes, days_list = sizes or [64, 1024], days_list or [1, 14]
    all_variants = {
        "grid": (FixedGrid(), jnp.float64),
        "grid_f32": (FixedGrid(), jnp.float32),
        "grid_u8": (FixedGrid(unroll=8), jnp.float64),
        "grid_tsit5": (FixedGrid(max_step=5.0 / 3.0, solver=dfx.Tsit5()), jnp.float64),
        "grid_bosh3": (FixedGrid(max_step=1.25, solver=dfx.Bosh3()), jnp.float64),
        "grid_rk34": (FixedGrid(max_step=2.5, solver=StabilisedRK34()), jnp.float64),
        "grid_rk35": (FixedGrid(max_step=5.0, solver=StabilisedRK35()), jnp.float64),
        "grid_etd": (FixedGrid(max_step=5.0, solver=ExponentialRK3()), jnp.float64),
        "grid_etd4": (FixedGrid(max_step=5.0, solver=ExponentialRK4()), jnp.float64),
    }
    names = args.variants or (
        "grid,grid_rk35,grid_etd,grid_etd4"
        if args.quick
        else "grid,grid_f32,grid_tsit5,grid_rk35,grid_etd,grid_etd4"
    )
    variants = {k: all_variants[k] for k in names.split(",")}
    figures: dict = {f"machine_{k}": v for k, v in machine().items()}
    for days in days_list:
        for n in sizes:
            tag = f"n{n}_d{days}"
            start = time.perf_counter()
            data = population(n, days)
            figures[f"build_{tag}_s"] = time.perf_counter() - start
            ref = reference(*data)
            for name, (grid, dtype) in variants.items():
                runner = grid_runner(grid)
                if dtype == jnp.float32:
                    with jax.enable_x64(False):
                        data32 = jax.tree.map(
                            lambda x: jnp.asarray(x, jnp.float32), data
                        )
                        first, best, (cgm, ok) = timed(runner, *data32, repeats=2)
                else:
                    first, best, (cgm, ok) = timed(runner, *data, repeats=2)
                figures[f"{name}_{tag}_patient_days_per_s"] = n * days / best
                figures[f"{name}_{tag}_compile_s"] = max(first - best, 0.0)
                figures[f"{name}_{tag}_all_successful"] = bool(jnp.all(ok))
                err = np.max(np.abs(np.asarray(cgm[: ref.shape[0]], np.float64) - ref))
                figures[f"{name}_{tag}_max_cgm_error_mg_dl"] = float(err)
                print(
                    f"{name} {tag}: {n * days / best:,.0f} patient-days/s",
                    file=sys.stderr,
                )
            if n != sizes[0] or args.baseline_n < 1:  # baselines once per length
                continue
            m = min(n, args.baseline_n)
            few = (*jax.tree.map(lambda x, m=m: x[:m], data[:3]), data[3])
            base_grid = m * days / timed(grid_runner(FixedGrid()), *few, repeats=2)[1]
            figures[f"grid_{tag}_baseline_n"] = m
            for name, runner in (
                (
                    "lean",
                    isletfit_runner(
                        save_state=False,
                        stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
                    ),
                ),
                ("naive", naive_runner()),
            ):
                best = timed(runner, *few, repeats=2)[1]
                figures[f"{name}_{tag}_m_patient_days_per_s"] = m * days / best
                figures[f"grid_over_{name}_{tag}_m_ratio"] = base_grid / (
                    m * days / best
                )
                print(
                    f"{name} {tag} (m={m}): {m * days / best:,.0f} patient-days/s",
                    file=sys.stderr,
                )
    report(
        figures, as_json=args.json, title="isletfit fused fixed-step forward simulation"
    )


if __name__ == "__main__":
    main()
