"""Forward-simulation speed: patient-days per second, one patient and vmapped batches.

For batches of 1, 64 and 1024 virtual patients (each with its own parameters, graft
function and meal/insulin record) and windows of 1 and 14 days, prints compile time and
steady-state throughput of `isletfit.model.simulate` under ``jax.vmap``, for several
ways of running it:

- ``lean``: Tsit5, adaptive steps (rtol = atol = 1e-6, `default_controller`), float64,
  saving only glucose, CGM and insulin (``save_state=False``) — the configuration
  cohorts use (forward simulation, nothing differentiated);
- ``bounded``: lean with the steps bounded by `stable_step`, the `simulate` default,
  which keeps derivatives through the solve sound (what fits use);
- ``full``: the `simulate` default saving all 14 compartments;
- ``fixed2``: lean with fixed 2-minute steps that still land on every event;
- ``f32``: lean in float32;
- ``loose``: lean with rtol = 1e-4, atol = 1e-3;

(the largest CGM difference of each variant from ``lean`` is printed) and, as the
baseline named in the issue, a naive 10-state vmapped diffrax prototype of the same
physiology (flat state vector, meals and boluses smeared over 15 minutes, no jump
times), with the ratio ``lean / baseline`` on the same batches.

Run: ``python benchmarks/simulate.py [--quick] [--json]``.
"""

from __future__ import annotations

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

from common import machine, parse_args, report, timed

jax.config.update("jax_enable_x64", True)

from isletfit.model import (  # noqa: E402
    Inputs,
    Params,
    default_controller,
    fixed_step_controller,
    simulate,
    stack_params,
)

MEALS = ((7.0, 45.0), (12.0, 70.0), (18.0, 80.0))
WEIGHT = 70.0


def cohort(n: int, days: int, seed: int = 0, dtype=jnp.float64):
    """N patients: log-normal parameters, B in [0, 1], jittered meals and boluses."""
    rng = np.random.default_rng(seed)
    base = Params()
    plist = []
    for _ in range(n):
        f = np.exp(0.2 * rng.standard_normal(4))
        plist.append(
            base.replace(
                vmx=float(base.vmx) * f[0],
                kp1=float(base.kp1) * f[1],
                p2u=float(base.p2u) * f[2],
                kabs=float(base.kabs) * f[3],
            )
        )
    params = stack_params(plist)
    b = jnp.asarray(rng.uniform(0.0, 1.0, n))
    inputs = []
    for _ in range(n):
        times = np.array(
            [
                d * 1440.0 + h * 60.0 + rng.uniform(-30, 30)
                for d in range(days)
                for h, _ in MEALS
            ]
        )
        grams = np.array(
            [g * rng.lognormal(0.0, 0.2) for _ in range(days) for _, g in MEALS]
        )
        inputs.append(
            Inputs(
                weight_kg=WEIGHT,
                meal_times=times,
                meal_carbs_g=grams,
                bolus_times=times,
                bolus_u=grams / 12.0,
                basal_times=[0.0],
                basal_u_per_h=[0.9],
            )
        )
    inputs = Inputs.stack(inputs)
    ts = jnp.arange(0.0, days * 1440.0 + 0.5, 5.0)
    cast = lambda x: x.astype(dtype)  # noqa: E731
    return jax.tree.map(cast, params), jax.tree.map(cast, inputs), cast(b), cast(ts)


def isletfit_runner(**kwargs):
    @jax.jit
    def run(params, inputs, b, ts):
        sims = jax.vmap(lambda p, i, b: simulate(p, i, ts, b=b, **kwargs))(
            params, inputs, b
        )
        return sims.cgm, sims.successful

    return run


# ---------------------------------------------------------------- naive baseline
def naive_runner():
    """A 10-state prototype: flat state, smeared inputs, no jump times."""

    def field(t, y, args):
        p, inputs, b = args
        qsto1, qsto2, qgut, isc1, isc2, ip, x, gp, gt, gs = y
        smear = 15.0  # meals and boluses spread over 15 minutes
        on = lambda times: ((t >= times) & (t < times + smear)) / smear  # noqa: E731
        meal_rate = jnp.sum(on(inputs.meal_t) * inputs.meal)
        bolus_rate = jnp.sum(on(inputs.bolus_t) * inputs.bolus)
        u = inputs.basal_rate(t) + bolus_rate
        g = gp / p.vg
        insulin = ip / p.vi
        clearance = (
            p.m2 + p.m4 - p.m1 * p.m2 / (p.m1 + p.m3)
        )  # one-compartment equivalent
        secretion = b * p.s_max * g**4 / (p.g_half**4 + g**4)
        egp = jnp.maximum(p.kp1 - p.kp2 * gp - p.kp3 * x, 0.0)
        uid = (p.vm0 + p.vmx * x) * gt / (p.km0 + gt)
        renal = p.ke1 * jnp.maximum(gp - p.ke2, 0.0)
        return jnp.stack(
            [
                meal_rate - p.kmax * qsto1,
                p.kmax * qsto1 - 0.03 * qsto2,
                0.03 * qsto2 - p.kabs * qgut,
                u - (p.kd + p.ka1) * isc1,
                p.kd * isc1 - p.ka2 * isc2,
                p.ka1 * isc1 + p.ka2 * isc2 + 0.4 * secretion - clearance * ip,
                p.p2u * (insulin - x),
                egp + p.f * p.kabs * qgut - p.fsnc - renal - p.k1 * gp + p.k2 * gt,
                -uid + p.k1 * gp - p.k2 * gt,
                (g - gs) / p.tau_sensor,
            ]
        )

    @jax.jit
    def run(params, inputs, b, ts):
        def one(p, i, b):
            y0 = jnp.array(
                [0, 0, 0, 0, 0, 2.5, 50.0, 150 * p.vg, 200.0, 150.0], ts.dtype
            )
            sol = dfx.diffeqsolve(
                dfx.ODETerm(field),
                dfx.Tsit5(),
                ts[0],
                ts[-1],
                None,
                y0,
                args=(p, i, b),
                saveat=dfx.SaveAt(ts=ts),
                stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
                max_steps=2**17,
                throw=False,
            )
            return sol.ys[:, -1], sol.result == dfx.RESULTS.successful

        return jax.vmap(one)(params, inputs, b)

    return run


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes = [1, 64] if args.quick else [1, 64, 1024]
    windows = [1, 14]
    lean_kw = dict(save_state=False)
    lean = dict(lean_kw, stepsize_controller=default_controller())
    variants = {"lean": (isletfit_runner(**lean), jnp.float64)}
    if not args.quick:
        variants.update(
            {
                "bounded": (isletfit_runner(**lean_kw), jnp.float64),
                "full": (isletfit_runner(), jnp.float64),
                "fixed2": (
                    isletfit_runner(
                        stepsize_controller=fixed_step_controller(2.0),
                        dt0=2.0,
                        **lean_kw,
                    ),
                    jnp.float64,
                ),
                "f32": (isletfit_runner(**lean), jnp.float32),
                "loose": (
                    isletfit_runner(
                        stepsize_controller=dfx.PIDController(rtol=1e-4, atol=1e-3),
                        **lean_kw,
                    ),
                    jnp.float64,
                ),
            }
        )
    baseline = naive_runner()
    figures: dict = {f"machine_{k}": v for k, v in machine().items()}
    for days in windows:
        for n in sizes:
            if n == 1024 and days == 14 and args.quick:
                continue
            tag = f"n{n}_d{days}"
            data64 = cohort(n, days)
            reference = None
            for name, (runner, dtype) in variants.items():
                if dtype == jnp.float32:
                    with jax.enable_x64(False):
                        data = cohort(n, days, dtype=jnp.float32)
                        first, best, (cgm, ok) = timed(runner, *data, repeats=2)
                else:
                    first, best, (cgm, ok) = timed(runner, *data64, repeats=2)
                figures[f"{name}_{tag}_patient_days_per_s"] = n * days / best
                figures[f"{name}_{tag}_compile_s"] = max(first - best, 0.0)
                figures[f"{name}_{tag}_all_successful"] = bool(jnp.all(ok))
                if name == "lean":
                    reference = np.asarray(cgm, dtype=np.float64)
                elif reference is not None:
                    err = np.nanmax(
                        np.abs(np.asarray(cgm, dtype=np.float64) - reference)
                    )
                    figures[f"{name}_{tag}_max_cgm_error_mg_dl"] = float(err)
            if days == 1 or n <= 64:
                first, best, _ = timed(baseline, *data64, repeats=2)
                figures[f"baseline_{tag}_patient_days_per_s"] = n * days / best
                figures[f"lean_over_baseline_{tag}_ratio"] = figures[
                    f"lean_{tag}_patient_days_per_s"
                ] / (n * days / best)
    report(figures, as_json=args.json, title="isletfit forward simulation")


if __name__ == "__main__":
    main()
