"""Population fits at scale: forward simulation, memory, the fit and its baseline.

Issue #7 asks for 64, 1,000 and 10,000 patients × 6 visits × 14 days. One run of this
script measures on the machine it runs on (keys with units; ``--json``: one object):

1. **Forward simulation** (``forward_<n>_*``, n in ``--sizes``): every stacked
   patient's day-windows simulated at the population's typical values with the fit's
   own model (`Objective.simulate_window`: warm-up from the fasting state, the step
   bound), ``--chunk-size`` patients per device call: ``patient_days_per_s``
   (compilation excluded), ``s``, ``compile_s``; with ``--forward-budget-s`` (default
   150 s) the chunks stop after that long and ``s_extrapolated`` gives the time for
   all n at the measured rate (labelled: not measured). The patients are the
   ``--base-patients`` records of a simulated zimislecel-like cohort (6 visits × 14
   days), each prepared once (`prepare_patient`) and replicated with perturbed glucose
   to n patients (preparing 10,000 records one by one costs about 0.06 s each, 10
   minutes). Each size runs in a fresh process, so that its memory figures are its
   own: ``stack_peak_rss_gib`` (peak resident memory once the n patients are prepared
   and stacked), ``stacked_gib`` (the stacked host arrays), ``peak_rss_gib`` (after
   the chunked simulation).
2. **One E-step chunk** (``estep_*``): the compiled E-step program
   (`_population._solve_all`) of one chunk of ``--chunk-size`` patients × 6 × 14 days:
   XLA's buffer assignment (``temp_gib``: peak of its temporaries, ``argument_gib``,
   ``output_gib``), the process's peak resident memory over one Levenberg–Marquardt
   iteration of it (``peak_rss_gib``) and that iteration's time (``iteration_s``).
3. **A 10,000-patient fit's memory** (``fit10k_*``): the measured stacking peak at
   10,000 (or the largest size run) plus the E-step chunk's measured peak plus the
   host-side fit state and `FitResult`s of 10,000 patients (array sizes, from one
   measured `FitResult`), against 24 GiB.
4. **Population fit** (``population_*``): `fit_population` with `SquaremEM` on
   ``--fit-patients`` of the simulated patients with ``--fit-days`` CGM days of each
   visit (the first days of each 14-day block; the full blocks do not fit in the
   time on 2 cores), at most ``--max-rounds`` rounds, tolerance 1e-3, default
   optimiser, ``--e-step-iterations`` per patient per round (default 3, the
   library's; 0: complete E-steps); with ``--plain`` also the plain EM on the same
   patients (``plain_*``).
5. **Baseline** (``independent_*``): `fit_patient` on ``--baseline-patients`` of the
   same patients one after another; ``independent_fits_s_scaled`` is the first
   (compiling) fit plus n − 1 times the mean warm one — *scaled*, not measured.
6. **Extrapolations** (``extrapolated_*``, not measured): fit times at the issue's
   sizes (6 × 14 days) from the measured ones, scaled by patient-windows: the
   population fit from its compiled rounds (same E-steps and LM iterations per
   E-step as measured), the independent fits from the warm fit time.

``--quick``: synthetic records written by a few lines of numpy (no cohort
simulation), 2 visits × 1 day, forward simulation at 4 and 32 patients, no fits and no
E-step probe (their compilation alone takes over a minute): under a minute.

``--fit-replicate N``: fit N copies of the simulated records (cycling through them,
each copy with N(0, 1) mg/dL of its own added to its readings; truth from the original)
instead of ``--fit-patients`` distinct ones — population fits at sizes whose cohort
simulation would take longer than the fit.

Every window (forward, E-steps, fits, baseline) is solved the library's default way,
with the fused fixed-step loop (``FitModel(grid=FixedGrid())``, `simulate_grid`;
``--grid`` says so explicitly); ``--adaptive`` uses the adaptive solver
(``FitModel(grid=None)``, the default before 2026-11-27) instead. ``fixed_grid`` in the
figures says which.

``--float32-jacobians``: the ODE's tangents in float32 (``FitModel(jacobian_dtype=
np.dtype("float32"))``; residuals and cost stay float64), in every fit and probe.

``--rk35``: every window on ``FixedGrid(max_step=5.0, solver=StabilisedRK35())`` (one
third-order step of 5 stages per 5-min CGM interval, within 0.35 mg/dL of a tight
solve) instead of the default grid, in every fit and probe.

``--bosh3``: every window on ``FixedGrid()`` (four Bosh3 steps per 5-min CGM interval,
within 0.02 mg/dL of a tight solve; the fits' default before 2026-11-29) instead of
the default ``EXPONENTIAL_GRID`` (one `ExponentialRK4` step per interval, within about
0.1 mg/dL), in every fit and probe.

``--no-line-search``: the optimiser of every E-step and baseline fit without its line
search after rejected steps (`LevenbergMarquardt.line_search`), for comparison.
``--atol A``: the optimiser's absolute cost tolerance (``LevenbergMarquardt(atol=A)``,
default 1e-2) in every E-step and baseline fit (``optimiser_atol``).

``--patient-devices N``: the CPU's cores as N host devices and the population fits'
patients sharded over them (``mesh=jax.make_mesh((N,), ("patients",))``; 4 lanes per
device); ``population_devices`` says how many were used. The baseline's fits then
split their day-windows over the same devices (``fit_patient(mesh=...)``,
``independent_devices``), so that both sides use every core.

Run: ``python benchmarks/population.py [--quick] [--json] [--plain] [--adaptive]
[--patient-devices N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from common import machine, report

GIB = 2.0**30
#: Visits of the issue's schedule [day after infusion] (`VisitPlan` default).
VISITS = (-14, 30, 90, 180, 270, 365)


def _rss_gib() -> float:
    """Peak resident memory of this process so far [GiB].

    Linux's ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this program's
    memory), else ``ru_maxrss``. Not ``ru_maxrss`` on Linux: it survives ``exec`` and
    so holds the parent's peak in a fresh subprocess.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _now_gib() -> float:
    """Resident memory of this process now [GiB] (``VmRSS``; NaN if unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> bool:
    """Reset the high-water mark to the current memory (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _x64() -> None:
    jax.config.update("jax_enable_x64", True)


# ------------------------------------------------------------------------- records
def _write_cohort(folder: Path, n: int, *, quick: bool, days: int) -> dict:
    """Simulate ``n`` patients (or write numpy records with ``quick``) into ``folder``.

    Returns ``{"cgm": folder of CSVs, "patients": sheet, "seconds": ...}`` and, for a
    simulated cohort, the cohort itself under ``"cohort"``.
    """
    start = time.perf_counter()
    if quick:
        import pandas as pd

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fit_fixtures import write_meal_day_records

        rows = [
            {
                "patient_id": f"q{i + 1:03d}",
                "weight_kg": 70.0,
                "transplant_date": "2024-01-31",
            }
            for i in range(n)
        ]
        days = [pd.Timestamp("2024-01-10"), pd.Timestamp("2024-03-01")]
        write_meal_day_records(folder, rows, days)
        return {
            "cgm": folder / "cgm",
            "patients": folder / "patients.csv",
            "seconds": time.perf_counter() - start,
        }
    from isletfit.cohort import (
        VisitPlan,
        simulate_cohort,
        write_cohort,
        zimislecel_like,
    )

    plan = VisitPlan(visit_days=VISITS, block_days=days, checkin_every_days=0)
    # the records are made on the CPU also where a GPU is present (they are the
    # benchmark's input, not what it measures; adaptive cohort solves are slow there)
    with jax.default_device(jax.devices("cpu")[0]):
        cohort = simulate_cohort(
            zimislecel_like(), n, key=jax.random.key(2024), visits=plan, chunk_size=n
        )
    paths = write_cohort(cohort, folder)
    return {
        "cgm": paths["cgm"],
        "patients": paths["patients"],
        "cohort": cohort,
        "seconds": time.perf_counter() - start,
    }


def _read(cgm: Path, sheet_path: Path):
    from isletfit.data import read, read_patients

    patients = [read(f) for f in sorted(Path(cgm).glob("*.csv"))]
    return patients, read_patients(sheet_path)


def _first_days(patient, days: int):
    """The record with CGM only on the first ``days`` days of each visit block."""
    day = np.floor(patient.cgm.time_min / 1440.0)
    kept = np.unique(day)
    # a visit block starts after a gap of more than one day
    starts = kept[np.r_[True, np.diff(kept) > 1]]
    keep = np.zeros(day.shape, bool)
    for s in starts:
        keep |= (day >= s) & (day < s + days)
    return dataclasses.replace(patient, cgm=patient.cgm.take(keep))


# ---------------------------------------------------------------------- the probes
def _model():
    """The fits' `FitModel` (the probes inherit it).

    The adaptive solver with ``--adaptive``, float32 tangents with
    ``--float32-jacobians``, one `StabilisedRK35` step per 5-min CGM interval with
    ``--rk35``, four Bosh3 steps per interval with ``--bosh3``.
    """
    from isletfit.fitting import FitModel

    kw = {}
    if os.environ.get("ISLETFIT_BENCH_ADAPTIVE") == "1":
        kw["grid"] = None
    if os.environ.get("ISLETFIT_BENCH_F32_JACOBIANS") == "1":
        kw["jacobian_dtype"] = np.dtype("float32")
    if os.environ.get("ISLETFIT_BENCH_RK35") == "1":
        from isletfit.model import FixedGrid, StabilisedRK35

        kw["grid"] = FixedGrid(max_step=5.0, solver=StabilisedRK35())
    if os.environ.get("ISLETFIT_BENCH_BOSH3") == "1":
        from isletfit.model import FixedGrid

        kw["grid"] = FixedGrid()
    return FitModel(**kw)


def _replicated(cgm, sheet_path, n: int):
    """``n`` prepared patients: the records' windows, replicated with perturbed glucose.

    Every copy owns its arrays (as `n` independently prepared patients would).
    """
    from isletfit.fitting._stacking import prepare_patient

    patients, sheet = _read(cgm, sheet_path)
    model = _model()
    base = [prepare_patient(p, model=model, sheet=sheet)[0] for p in patients]
    base = [jax.tree.map(np.asarray, w) for w in base]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w = jax.tree.map(np.copy, base[i % len(base)])
        w.obs[...] += rng.normal(0.0, 1.0, w.obs.shape)  # a copy's own readings
        out.append(w)
    return out, model


def _forward_program():
    import equinox as eqx
    import jax.numpy as jnp

    from isletfit.fitting._problem import Objective

    @eqx.filter_jit
    def forward(windows, model, prior, g):
        """CGM of every window of every patient at ``g`` (no derivatives)."""

        def one(win, gi):
            obj = Objective(windows=win, model=model, prior=prior)
            u = obj.to_window(gi)
            loc = jnp.zeros((u.shape[0], obj.n_local), u.dtype)
            p = obj.n_params
            return jax.vmap(
                lambda uw, lw, w: obj.simulate_window(
                    uw[: p + 1], lw, w, forward_mode=False
                )
            )(u, loc, jnp.arange(u.shape[0]))

        return jax.vmap(one)(windows, g)

    return forward


def probe_forward(cgm, sheet_path, n: int, chunk: int, budget_s: float) -> dict:
    """Stack ``n`` replicated patients and simulate them chunk by chunk (own process).

    With ``budget_s > 0`` the chunks stop once that much time has passed; the figures
    are then over the chunks done and ``s_extrapolated`` is the time for all.
    """
    import jax.numpy as jnp

    from isletfit.fitting import Prior
    from isletfit.fitting._population import _chunk_size
    from isletfit.fitting._stacking import stack_windows_host

    out = {"baseline_rss_gib": _rss_gib()}
    windows, model = _replicated(cgm, sheet_path, n)
    c = _chunk_size(n, chunk, 1)
    n_total = -(-n // c) * c
    start = time.perf_counter()
    problem = stack_windows_host(
        windows, model=model, prior=Prior(), n_total=n_total, consume=True
    )
    out["stack_s"] = time.perf_counter() - start
    del windows
    out["stack_peak_rss_gib"] = _rss_gib()
    out["stacked_gib"] = sum(x.nbytes for x in jax.tree.leaves(problem.windows)) / GIB
    win = problem.windows
    obj0 = problem.objective(0)
    p = problem.n_params
    g = np.concatenate(
        [
            np.broadcast_to(np.asarray(obj0.prior_centre()), (n_total, p)),
            np.where(win.knot_valid, np.log(problem.prior.graft_median), 0.0),
            np.zeros((n_total, 2 * problem.n_sessions)),
        ],
        axis=1,
    )
    forward = _forward_program()

    def run(a):
        part = jax.tree.map(lambda x: jnp.asarray(x[a : a + c]), win)
        cgm_out, ok = forward(part, model, problem.prior, jnp.asarray(g[a : a + c]))
        return np.asarray(cgm_out), np.asarray(ok)

    start = time.perf_counter()
    run(0)
    out["compile_s"] = time.perf_counter() - start  # compilation and one chunk
    start = time.perf_counter()
    failed, done = 0, 0
    for a in range(0, n_total, c):
        _, ok = run(a)
        failed += int((~ok & win.valid[a : a + c]).sum())
        done = min(a + c, n)
        if budget_s > 0 and time.perf_counter() - start > budget_s:
            break
    out["s"] = time.perf_counter() - start
    days = int(win.valid[:done].sum())
    out["patients_simulated"] = done
    out["patient_days"] = days
    out["patient_days_per_s"] = days / out["s"]
    if done < n:  # not measured: the rest at the measured rate
        out["s_extrapolated"] = int(win.valid[:n].sum()) / out["patient_days_per_s"]
    out["failed_windows"] = failed
    out["chunk"] = c
    out["peak_rss_gib"] = _rss_gib()
    return out


def probe_estep(cgm, sheet_path, chunk: int) -> dict:
    """One E-step chunk at the records' shape: XLA's buffers, peak memory, time."""
    import jax.numpy as jnp

    from isletfit.fitting import LevenbergMarquardt, Prior
    from isletfit.fitting._population import _Engine, _solve_all
    from isletfit.fitting._stacking import stack_windows_host

    windows, model = _replicated(cgm, sheet_path, chunk)
    problem = stack_windows_host(windows, model=model, prior=Prior(), consume=True)
    del windows
    optimiser = LevenbergMarquardt()
    engine = _Engine.build(problem, optimiser, None, chunk)
    rows = engine.initial_rows()
    p = problem.n_params
    mu, omega = engine.g0[0, :p], np.asarray(problem.prior.log_sd)
    weights = np.ones((chunk, *problem.windows.obs.shape[1:]))
    args = (
        jax.tree.map(jnp.asarray, problem.windows),
        model,
        problem.prior,
        jnp.broadcast_to(jnp.asarray(mu), (chunk, p)),  # each lane's prior centre
        jnp.asarray(omega),
        optimiser,
        *(jnp.asarray(x) for x in (rows["g"], rows["loc"], rows["sigma"], rows["phi"])),
        jnp.asarray(weights),
        (jnp.ones(chunk, int), jnp.full(chunk, optimiser.lambda0)),
        None,
    )
    out = {"rss_before_gib": _rss_gib(), "chunk": chunk}
    start = time.perf_counter()
    compiled = _solve_all.lower(*args).compile()
    out["compile_s"] = time.perf_counter() - start
    stats = compiled.compiled.memory_analysis()
    out["temp_gib"] = stats.temp_size_in_bytes / GIB
    out["argument_gib"] = stats.argument_size_in_bytes / GIB
    out["output_gib"] = stats.output_size_in_bytes / GIB
    out["rss_after_compile_gib"] = _rss_gib()  # peak so far (compilation included)
    out["rss_before_run_gib"] = _now_gib()
    out["peak_reset"] = _reset_peak()
    start = time.perf_counter()
    res = jax.block_until_ready(compiled(*args))
    out["iteration_s"] = time.perf_counter() - start  # one LM iteration (max_iter=1)
    out["peak_rss_gib"] = _rss_gib()  # peak of the run (since the reset)
    out["windows_per_patient"] = int(problem.windows.valid[0].sum())
    out["n_global"] = int(res.g.shape[1])
    out["finite"] = bool(np.all(np.isfinite(np.asarray(res.cost))))
    return out


def _in_process(kind: str, *args) -> dict:
    """Run a probe in a fresh Python process (its own peak memory) -> its figures."""
    env = dict(os.environ, JAX_ENABLE_X64="1")
    cmd = [sys.executable, __file__, "--probe", kind, *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ the fits
def _accuracy(results: dict, cohort, index: dict) -> dict:
    """log-B RMS error and band coverage at post-infusion visit days; log vmx error."""
    err, covered, vmx_err = [], [], []
    for pid, res in results.items():
        i = index[pid]
        info = res.info
        days = np.asarray(info.day_index) - info.study_day_offset
        for d in np.unique(np.floor(days)):
            if d < 0:
                continue
            mean, sd = (float(x[0]) for x in res.log_b_at(np.array([d + 0.5])))
            truth = float(np.interp(d + 0.5, cohort.truth_day, cohort.b_true[i]))
            err.append(mean - np.log(truth))
            covered.append(abs(mean - np.log(truth)) <= 1.959964 * sd)
        k = res.estimated.index("vmx")
        vmx_err.append(res.theta[k] - np.log(cohort.patients.params.vmx[i]))
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    return {
        "log_b_rmse": rms(err),
        "band_coverage": float(np.mean(covered)),
        "log_vmx_rmse": rms(vmx_err),
    }


def _progress(info, k: int, start: float) -> None:
    seconds = time.perf_counter() - start
    print(f"round {k}: change {info.change:.4g} at {seconds:.1f} s", file=sys.stderr)


@contextlib.contextmanager
def _logged_calls(start: float):
    """Log every call of the E-steps' compiled solver to stderr (``--log-calls``).

    One line per call: seconds into the fit, its lanes, how many were busy, their
    most and mean iterations in the call, how many solves ended, and its seconds —
    where an E-step's time goes (wide calls, the last solves, covariances, bands).
    """
    from isletfit.fitting import _population

    call = _population._Engine._call

    def logged(self, centre, omega, ids, start_rows, budget, *args, **kwargs):
        t = time.perf_counter()
        out = call(self, centre, omega, ids, start_rows, budget, *args, **kwargs)
        res, busy = out[0], np.asarray(budget) > 0
        used = res.iterations[busy]
        print(
            f"call at {t - start:.1f} s: lanes {len(busy)}, busy {busy.sum()}, "
            f"iterations max {used.max(initial=0)} mean {used.mean():.1f}, "
            f"ended {res.stopped[busy].sum()}, {time.perf_counter() - t:.2f} s",
            file=sys.stderr,
            flush=True,
        )
        return out

    _population._Engine._call = logged
    try:
        yield
    finally:
        _population._Engine._call = call


def _population_fit(
    patients,
    sheet,
    em,
    *,
    chunk: int,
    rounds: int,
    e_step_iterations=None,
    optimiser,
    log_calls: bool = False,
    devices: int = 0,
) -> tuple:
    from isletfit.fitting import fit_population

    mesh = jax.make_mesh((devices,), ("patients",)) if devices else None

    infos = []
    start = time.perf_counter()
    with _logged_calls(start) if log_calls else contextlib.nullcontext():
        res = fit_population(
            patients,
            sheet=sheet,
            key=jax.random.key(0),
            starts=1,
            max_rounds=rounds,
            chunk_size=chunk,
            em=em,
            model=_model(),
            e_step_iterations=e_step_iterations or None,
            optimiser=optimiser,
            mesh=mesh,
            on_round=lambda info: (
                infos.append(info),
                _progress(info, len(infos), start),
            ),
        )
    return res, infos, time.perf_counter() - start


def _fit_figures(prefix: str, res, infos, seconds: float, patient_days: int) -> dict:
    round_s = [r.seconds for r in infos]
    return {
        f"{prefix}_fit_s": seconds,
        f"{prefix}_rounds": res.rounds,
        f"{prefix}_e_steps": res.e_steps,
        f"{prefix}_converged": res.converged,
        f"{prefix}_extrapolations": res.extrapolations,
        f"{prefix}_round_s_mean": float(np.mean(round_s)) if round_s else float("nan"),
        f"{prefix}_rounds_s_total": float(np.sum(round_s)),
        f"{prefix}_last_change": infos[-1].change if infos else float("nan"),
        f"{prefix}_failed": len(res.failures),
        f"{prefix}_patient_days_per_s": patient_days / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small version, < 1 min")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plain", action="store_true", help="also fit with PlainEM")
    parser.add_argument(
        "--linearised", action="store_true", help="also fit with LinearisedEM"
    )
    parser.add_argument(
        "--lanes",
        type=int,
        default=None,
        help="lanes of the population fits (default: fit_population's choice)",
    )
    parser.add_argument(
        "--e-step-iterations",
        type=int,
        default=3,
        help="iterations per patient per round of the population fits (0: complete "
        "E-steps)",
    )
    parser.add_argument(
        "--skip-forward", action="store_true", help="only the fits (no forward/memory)"
    )
    parser.add_argument("--sizes", default=None, help="forward sizes, e.g. 64,1000")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--base-patients", type=int, default=None)
    parser.add_argument("--fit-patients", type=int, default=64)
    parser.add_argument("--fit-days", type=int, default=1)
    parser.add_argument(
        "--fit-replicate",
        type=int,
        default=0,
        help="fit this many patients: copies of the records with their own noise",
    )
    parser.add_argument("--max-rounds", type=int, default=60)
    parser.add_argument("--baseline-patients", type=int, default=4)
    parser.add_argument(
        "--forward-budget-s",
        type=float,
        default=150.0,
        help="seconds of forward simulation per size (0: all chunks)",
    )
    parser.add_argument(
        "--forward-only",
        action="store_true",
        help="only the forward simulation (no E-step probe, no fits)",
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="the fixed-grid windows (FixedGrid; the default, kept for old commands)",
    )
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="solve the windows with the adaptive solver (FitModel(grid=None))",
    )
    parser.add_argument(
        "--no-line-search",
        action="store_true",
        help="the optimiser without its line search after rejected steps "
        "(LevenbergMarquardt(line_search=False)), for comparison",
    )
    parser.add_argument(
        "--patient-devices",
        type=int,
        default=0,
        help="split the population fits' patients over this many CPU host devices "
        "(a 'patients' mesh; 0: one device)",
    )
    parser.add_argument(
        "--atol",
        type=float,
        default=None,
        help="the optimiser's absolute cost tolerance (LevenbergMarquardt(atol=...))",
    )
    parser.add_argument(
        "--float32-jacobians",
        action="store_true",
        help="the ODE's tangents in float32 (FitModel(jacobian_dtype=float32))",
    )
    parser.add_argument(
        "--rk35",
        action="store_true",
        help="the windows on FixedGrid(max_step=5.0, solver=StabilisedRK35()): one "
        "5-stage step per CGM interval",
    )
    parser.add_argument(
        "--bosh3",
        action="store_true",
        help="the windows on FixedGrid(): four Bosh3 steps per CGM interval instead "
        "of one ExponentialRK4 step (the default before 2026-11-29)",
    )
    parser.add_argument(
        "--log-calls",
        action="store_true",
        help="log every call of the E-steps' solver to stderr (lanes, busy, seconds)",
    )
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.adaptive and args.grid:
        parser.error("--grid and --adaptive exclude each other")
    if sum((args.adaptive, args.rk35, args.bosh3)) > 1:
        parser.error("--adaptive, --rk35 and --bosh3 exclude each other")
    if args.adaptive:
        os.environ["ISLETFIT_BENCH_ADAPTIVE"] = "1"
    if args.float32_jacobians:
        os.environ["ISLETFIT_BENCH_F32_JACOBIANS"] = "1"
    if args.rk35:
        os.environ["ISLETFIT_BENCH_RK35"] = "1"
    if args.bosh3:
        os.environ["ISLETFIT_BENCH_BOSH3"] = "1"
    if args.patient_devices:
        jax.config.update("jax_num_cpu_devices", args.patient_devices)
    _x64()
    if args.probe:
        kind, *rest = args.probe
        if kind == "forward":
            cgm, sheet, n, chunk, budget = rest
            out = probe_forward(
                Path(cgm), Path(sheet), int(n), int(chunk), float(budget)
            )
        else:
            cgm, sheet, chunk = rest
            out = probe_estep(Path(cgm), Path(sheet), int(chunk))
        print(json.dumps(out))
        return

    quick = args.quick
    sizes = [
        int(s)
        for s in (args.sizes or ("4,32" if quick else "64,1000,10000")).split(",")
    ]
    n_base = args.base_patients or (4 if quick else args.fit_patients)
    figures: dict = {f"machine_{k}": v for k, v in machine().items()}
    figures.update(
        fixed_grid=not args.adaptive,
        float32_jacobians=args.float32_jacobians,
        rk35=args.rk35,
        bosh3=args.bosh3,
        visits=2 if quick else len(VISITS),
        days_per_visit=1 if quick else 14,
        chunk_size=args.chunk_size,
        base_patients=n_base,
    )
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_cohort(Path(tmp), n_base, quick=quick, days=14)
        figures["records_s"] = files["seconds"]
        # ---- forward simulation and stacking memory, each size in its own process
        for n in [] if args.skip_forward else sizes:
            out = _in_process(
                "forward",
                files["cgm"],
                files["patients"],
                n,
                args.chunk_size,
                args.forward_budget_s,
            )
            figures.update({f"forward_{n}_{k}": v for k, v in out.items()})
        if args.forward_only:
            pass
        elif not quick and args.skip_forward:
            _fits(figures, files, args)
        elif not quick:
            out = _in_process("estep", files["cgm"], files["patients"], args.chunk_size)
            figures.update({f"estep_{k}": v for k, v in out.items()})
            _fits(figures, files, args)
            _memory_10k(figures, sizes)
    figures["benchmark_s"] = time.perf_counter() - t_all
    report(figures, as_json=args.json, title="isletfit population fit at scale")


def _replicated_patients(patients, sheet, index: dict, n: int):
    """``n`` records cycling through ``patients``, each copy with its own readings.

    Exact readings get N(0, 1) mg/dL added, so that no two copies are identical; a
    copy's truth (``index``) is its original's.
    """
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = sheet.set_index("patient_id")
    out, sheet_rows = [], []
    for k in range(n):
        p = patients[k % len(patients)]
        pid = f"{p.patient_id}_r{k}"
        cgm = p.cgm
        noise = rng.normal(0.0, 1.0, cgm.glucose_mg_dl.shape)
        glucose = cgm.glucose_mg_dl + np.where(cgm.censored == 0, noise, 0.0)
        cgm = dataclasses.replace(cgm, glucose_mg_dl=glucose)
        out.append(dataclasses.replace(p, patient_id=pid, cgm=cgm))
        sheet_rows.append({**rows.loc[p.patient_id].to_dict(), "patient_id": pid})
        index[pid] = index[p.patient_id]
    return out, pd.DataFrame(sheet_rows), index


def _fits(figures: dict, files: dict, args) -> None:
    """The population fit (SQUAREM, and plain EM), the baseline, extrapolations."""
    from isletfit.fitting import (
        LevenbergMarquardt,
        LinearisedEM,
        PlainEM,
        SquaremEM,
        fit_patient,
    )

    patients, sheet = _read(files["cgm"], files["patients"])
    cohort = files["cohort"]
    index = {pid: i for i, pid in enumerate(cohort.patient_id)}
    if args.fit_replicate:
        patients, sheet, index = _replicated_patients(
            patients, sheet, index, args.fit_replicate
        )
    n = args.fit_replicate or min(args.fit_patients, len(patients))
    patients = [_first_days(p, args.fit_days) for p in patients[:n]]
    windows = len(VISITS) * args.fit_days
    patient_days = n * windows
    figures.update(fit_patients=n, fit_days_per_visit=args.fit_days)
    atol = {} if args.atol is None else {"atol": args.atol}
    optimiser = LevenbergMarquardt(line_search=not args.no_line_search, **atol)
    figures["line_search"] = optimiser.line_search
    figures["optimiser_atol"] = optimiser.atol

    def fit(em):
        return _population_fit(
            patients,
            sheet,
            em,
            chunk=args.lanes,
            devices=args.patient_devices,
            rounds=args.max_rounds,
            e_step_iterations=args.e_step_iterations,
            optimiser=optimiser,
            log_calls=args.log_calls,
        )

    res, infos, seconds = fit(SquaremEM())
    figures["population_lanes"] = res.chunk_size
    figures["population_devices"] = res.n_devices
    figures["population_e_step_iterations"] = args.e_step_iterations
    figures.update(_fit_figures("population", res, infos, seconds, patient_days))
    figures["population_changes"] = [round(r.change, 5) for r in infos]
    figures["population_cut"] = [r.cut for r in infos]
    figures["population_complete_rounds"] = [r.round for r in infos if r.complete]
    figures["population_changes_in_se"] = [round(r.change_se, 4) for r in infos]
    for name, value in _accuracy(res.results, cohort, index).items():
        figures[f"population_{name}"] = value
    fit_memory = _rss_gib()
    one = next(iter(res.results.values()))
    figures["fit_result_mib_per_patient_at_fit_size"] = (
        sum(
            np.asarray(x).nbytes
            for x in (one.cov, one.ts, one.predicted, one.window_b, one.theta)
        )
        / 2**20
    )
    figures["population_fit_peak_rss_gib"] = fit_memory
    if args.plain:
        plain, p_infos, p_seconds = fit(PlainEM())
        figures.update(_fit_figures("plain", plain, p_infos, p_seconds, patient_days))
        figures["squarem_minus_plain_max_abs_mu"] = float(
            np.max(np.abs(res.mu - plain.mu))
        )
        figures["squarem_minus_plain_max_abs_omega"] = float(
            np.max(np.abs(res.omega - plain.omega))
        )

    if args.linearised:
        lin, l_infos, l_seconds = fit(LinearisedEM())
        figures.update(
            _fit_figures("linearised", lin, l_infos, l_seconds, patient_days)
        )
        for name, value in _accuracy(lin.results, cohort, index).items():
            figures[f"linearised_{name}"] = value
        figures["linearised_changes"] = [round(r.change, 5) for r in l_infos]
        figures["linearised_minus_squarem_max_abs_mu"] = float(
            np.max(np.abs(lin.mu - res.mu))
        )
        figures["linearised_minus_squarem_max_abs_omega"] = float(
            np.max(np.abs(lin.omega - res.omega))
        )

    # ---- the baseline: one patient after another (a subset, scaled); with
    # --patient-devices each fit splits its day-windows over the same devices
    devices = args.patient_devices
    window_mesh = jax.make_mesh((devices,), ("windows",)) if devices > 1 else None
    figures["independent_devices"] = max(devices, 1)
    rows = sheet.set_index("patient_id")
    keys = jax.random.split(jax.random.key(0), n)
    k_base = min(n, args.baseline_patients)
    times, results = [], {}
    for patient, key in zip(patients[:k_base], keys[:k_base], strict=True):
        row = rows.loc[patient.patient_id]
        start = time.perf_counter()
        results[patient.patient_id] = fit_patient(
            patient,
            weight_kg=float(row["weight_kg"]),
            transplant_date=row["transplant_date"],
            starts=1,
            key=key,
            model=_model(),
            optimiser=optimiser,
            mesh=window_mesh,
        )
        times.append(time.perf_counter() - start)
    warm = float(np.mean(times[1:] or times))
    figures["independent_patients_fitted"] = k_base
    figures["independent_first_fit_s"] = times[0]
    figures["independent_fit_warm_s"] = warm
    figures["independent_fits_s_scaled"] = times[0] + (n - 1) * warm
    for name, value in _accuracy(results, cohort, index).items():
        figures[f"independent_{name}"] = value
    figures["population_over_independent_time_ratio"] = (
        figures["population_fit_s"] / figures["independent_fits_s_scaled"]
    )

    # ---- extrapolated (not measured): 6 visits x 14 days
    compiled_rounds = (
        figures["population_rounds_s_total"] + 2.0 * figures["population_round_s_mean"]
    )  # the rounds, the screening and the final E-step, compiled
    per_patient_window = compiled_rounds / (n * windows)
    per_window_independent = warm / windows
    for size in (64, 1000, 10000):
        pw = size * len(VISITS) * 14
        pop = per_patient_window * pw
        ind = per_window_independent * pw
        figures[f"extrapolated_population_fit_{size}x6x14_s"] = pop
        figures[f"extrapolated_independent_fits_{size}x6x14_s"] = ind
        figures[f"extrapolated_population_over_independent_{size}x6x14"] = pop / ind


def _memory_10k(figures: dict, sizes) -> None:
    """A 10,000-patient fit's memory from the measured parts (see the docstring)."""
    n_meas = max(sizes)
    scale = 10000 / n_meas
    stack = figures[f"forward_{n_meas}_stack_peak_rss_gib"] * (
        1 if n_meas == 10000 else scale
    )
    windows = len(VISITS) * 14
    n_global = figures["estep_n_global"]
    # per patient: predicted CGM [W, T] and covariance [ng, ng] of its FitResult, the
    # state (g, loc), the per-round theta/var/cov_theta
    result = (windows * 288 * 8 + n_global**2 * 8 + windows * 8 * 4) / GIB
    state = (n_global * 8 + windows * 8 * 4 + 6 * 8 * 4) / GIB
    # the run's peak above what the process held before it (data, compiled program)
    estep = figures["estep_peak_rss_gib"] - figures["estep_rss_before_gib"]
    total = stack + estep + 10000 * (result + state)
    figures["fit10k_stack_gib"] = stack
    figures["fit10k_estep_chunk_gib"] = estep
    figures["estep_run_gib"] = (
        figures["estep_peak_rss_gib"] - figures["estep_rss_before_run_gib"]
    )
    figures["fit10k_results_and_state_gib"] = 10000 * (result + state)
    figures["fit10k_total_gib"] = total
    figures["fit10k_fits_in_24_gib"] = bool(total < 24.0)


if __name__ == "__main__":
    main()
