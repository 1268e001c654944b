"""`fit_patient`: maximum a posteriori fit of one patient's record, with a Laplace band."""

from __future__ import annotations

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._custom_types import Array, PRNGKeyArray
from .._errors import InputError
from ..data import PatientData
from ..model import Inputs, Params, param_info
from ._config import FitModel, LatentMeals, Prior, StudentTNoise
from ._distributed import auto_axes
from ._lm import (
    Blocks,
    LevenbergMarquardt,
    LMResult,
    blocks_from_jacobians,
    robust_covariance,
    schur_covariance,
)
from ._problem import (
    Objective,
    PatientWindows,
    WindowInfo,
    prepare_windows,
    soft_bounded,
)

__all__ = ["FitResult", "fit_patient"]

_Z95 = 1.959963984540054
#: Events of each kind (meals, boluses, basal changes) per window are padded to a
#: multiple of this, so that one compilation serves patients with different numbers
#: of events. Every padded event costs the fused loop one (empty) step: with one
#: 5-min step per CGM interval (383 per window) 8 instead of 16 made a Jacobian 1.04×
#: faster (benchmarks/RESULTS.md); a window rarely holds more than 8 of a kind.
_EVENT_BUCKET = 8


def _pad_events(inputs: Inputs, bucket: int = _EVENT_BUCKET) -> Inputs:
    """Pad (stacked) event arrays to a multiple of ``bucket`` with (+inf, 0).

    One compilation then serves patients with different numbers of events. Host
    (numpy) arrays stay on the host.
    """

    def pad(t, v):
        xp = np if isinstance(t, np.ndarray) else jnp
        n = t.shape[-1]
        m = max(bucket, int(np.ceil(n / bucket)) * bucket)
        widths = [(0, 0)] * (t.ndim - 1) + [(0, m - n)]
        return (
            xp.pad(t, widths, constant_values=np.inf),
            xp.pad(v, widths, constant_values=0.0),
        )

    mt, mv = pad(inputs.meal_t, inputs.meal)
    bt, bv = pad(inputs.bolus_t, inputs.bolus)
    st, sv = pad(inputs.basal_t, inputs.basal)
    return eqx.tree_at(
        lambda x: (x.meal_t, x.meal, x.bolus_t, x.bolus, x.basal_t, x.basal),
        inputs,
        (mt, mv, bt, bv, st, sv),
    )


def _over_windows(fn, mesh: jax.sharding.Mesh | None, *args):
    """``jax.vmap(fn)`` over the windows (leading axis of ``args``).

    With a one-axis mesh each device maps its share of the windows (`jax.shard_map`;
    the windows are independent given the unknowns, so the devices do not talk until
    the blocks are summed). What ``fn`` closes over is replicated.
    """
    if mesh is None:
        return jax.vmap(fn)(*args)
    spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
    return jax.shard_map(
        jax.vmap(fn), mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False
    )(*args)


def _window_local(obj: Objective, dtype) -> Objective:
    """``obj`` with each window's clock starting at its own ``t0``, in ``dtype``.

    For the low-precision Jacobians of `_linearise`: minutes since the record's
    reference reach 10⁵–10⁶ over a year, where float32 resolves only 0.01–0.06 min,
    a few percent of a grid step; counted from the window's start (≤ 2,000 min) they
    resolve 10⁻⁴ min. Every time of a window (readings, solve start, input events,
    latent meal slots) is shifted by the same amount, so the simulation is the same
    function of the unknowns. Integer and boolean arrays are kept.
    """
    win = obj.windows
    t0 = win.t0[:, None]
    inputs = eqx.tree_at(
        lambda x: (x.meal_t, x.bolus_t, x.basal_t),
        win.inputs,
        (win.inputs.meal_t - t0, win.inputs.bolus_t - t0, win.inputs.basal_t - t0),
    )
    win = eqx.tree_at(
        lambda w: (w.ts, w.t0, w.slots, w.inputs),
        win,
        (win.ts - t0, jnp.zeros_like(win.t0), win.slots - t0, inputs),
    )
    obj = eqx.tree_at(lambda o: o.windows, obj, win)

    def cast(x):
        if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, dtype)
        return x

    return jax.tree.map(cast, obj)


def _linearise(
    obj: Objective,
    g,
    loc,
    noise,
    weights,
    *,
    with_jac: bool = False,
    mesh: jax.sharding.Mesh | None = None,
):
    """Gauss–Newton blocks at (g, loc); aux: predicted CGM, solver success, scores.

    The scores are each window's data gradient J_g,wᵀ r_w (`robust_covariance`).
    With ``with_jac`` also returns the Jacobians ``(J_u, J_l, J_0)`` for `_evaluate`
    (J_u with respect to each window's own unknowns u_w, `Objective.to_window`).
    With a ``mesh`` the windows are split over its devices (`_over_windows`).
    """
    u = obj.to_window(g)
    du = jax.jacfwd(obj.to_window)(g)  # [W, nu, ng], constant (linear map)
    nw = u.shape[0]

    p = obj.n_params
    low = obj.model.jacobian_dtype
    mixed = low is not None and jnp.dtype(low) != jnp.dtype(u.dtype)
    obj_sim = _window_local(obj, low) if mixed else obj

    def one(u_w, l_w, w, wt):
        u_sim, cal = u_w[: p + 1], u_w[p + 1 :]
        (ju, jl), (r, pred, ok, cgm) = _window_jacobians(
            obj,
            obj_sim,
            lambda c, ok, ll: obj.residual_from_cgm(c, ok, cal, ll, w, noise, wt),
            u_sim,
            l_w,
            w,
        )
        # the sensor calibration acts after the ODE: its columns need no solve
        jc = jax.jacfwd(
            lambda c: obj.residual_from_cgm(cgm, ok, c, l_w, w, noise, wt)[0]
        )(cal)
        return r, jnp.concatenate([ju, jc], axis=1), jl, pred, ok

    rw, ju, jl, pred, ok = _over_windows(one, mesh, u, loc, jnp.arange(nw), weights)
    r0 = obj.global_residual(g)
    j0 = jax.jacfwd(obj.global_residual)(g)
    scores = _scores(ju, du, rw)
    blocks = blocks_from_jacobians(rw, ju, jl, r0, j0, du=du)
    if with_jac:
        return blocks, (pred, ok, scores), (ju, jl, j0)
    return blocks, (pred, ok, scores)


def _scores(ju, du, rw):
    """Each window's data gradient J_g,wᵀ r_w = D_wᵀ J_u,wᵀ r_w ``[W, ng]``."""
    return jnp.einsum("wug,wu->wg", du, jnp.einsum("wmu,wm->wu", ju, rw))


def _window_jacobians(obj: Objective, obj_sim: Objective, residual, u_sim, l_w, w):
    """Residuals of one window and their Jacobians, one tangent per direction group.

    The model CGM's derivatives are taken in forward mode with respect to the
    shifts of `Objective.shifted` (the log-scales of `Objective.field_groups`, log B,
    the initial-glucose factor and any latent meals): 9 tangents with the default
    `Prior` instead of one per unknown (11), mapped to the unknowns' columns by
    `Objective.shift_columns`: the same Jacobian, about 15 % less work. They are then pushed through the cheap residual map (sensor
    calibration, AR(1) whitening, censoring, local priors).

    With ``obj_sim`` a low-precision copy (`_window_local`, ``FitModel.jacobian_dtype``,
    e.g. float32: about twice as fast on a CPU's vector units) only the tangents carry
    the low precision (relative error about 1e-5, far below the statistical
    uncertainty): the residuals come from a full-precision solve, so the cost and the
    optimiser's acceptance tests are exact. A window whose low-precision tangents are
    not finite is reported as not evaluable (NaN residuals).

    Args:
        obj: The objective (full precision).
        obj_sim: ``obj`` itself, or its `_window_local` copy for the tangents.
        residual: ``(cgm, ok, l_w) -> (residuals, predicted CGM)`` of the window.
        u_sim: The window's unknowns of the solve (θ, log B).
        l_w: Its local unknowns.
        w: Its index.

    Returns:
        ``((J_u, J_l), (r, pred, ok, cgm))``: the Jacobians of the residuals with
        respect to ``(u_sim, l_w)``, and the residuals, predictions, solver success
        and model CGM.
    """
    dtype = obj_sim.windows.ts.dtype
    mixed = jnp.dtype(dtype) != jnp.dtype(u_sim.dtype)

    def cgm_of(d):
        cgm, ok = obj_sim.shifted(u_sim.astype(dtype), l_w.astype(dtype), w, d)
        return cgm, (cgm, ok)

    dc, (cgm, ok) = jax.jacfwd(cgm_of, has_aux=True)(jnp.zeros(obj.n_shifts, dtype))
    dc = dc.astype(u_sim.dtype)
    finite = jnp.all(jnp.isfinite(dc))
    if mixed:  # the residuals from a full-precision solve
        cgm, ok = obj.simulate_window(u_sim, l_w, w)
    to_u, to_l = obj.shift_columns(u_sim[: obj.n_params])
    dcu, dcl = dc @ to_u, dc @ to_l
    r, pred = residual(cgm, ok, l_w)

    def push(dcgm, dl):  # the residuals' tangent for tangents of the CGM and l_w
        return jax.jvp(lambda c, ll: residual(c, ok, ll)[0], (cgm, l_w), (dcgm, dl))[1]

    ju = jax.vmap(push, in_axes=(1, None), out_axes=1)(dcu, jnp.zeros_like(l_w))
    jl = jax.vmap(push, in_axes=(1, 0), out_axes=1)(
        dcl, jnp.eye(l_w.shape[0], dtype=l_w.dtype)
    )
    return (ju, jl), (jnp.where(finite, r, jnp.nan), pred, ok, cgm)


def _evaluate(
    obj: Objective,
    g,
    loc,
    noise,
    weights,
    jac,
    held: Blocks,
    mesh: jax.sharding.Mesh | None = None,
):
    """Blocks at (g, loc) from its residuals and held Jacobians (no derivatives).

    One forward solve per window; the gradient is J_heldᵀ r and the Gauss–Newton
    matrix that of ``held`` (the chord step of `LevenbergMarquardt`).
    """
    ju, jl, j0 = jac
    u = obj.to_window(g)
    du = jax.jacfwd(obj.to_window)(g)  # constant (linear map)
    p = obj.n_params

    def one(u_w, l_w, w, wt):
        cgm, ok = obj.simulate_window(u_w[: p + 1], l_w, w)
        r, pred = obj.residual_from_cgm(cgm, ok, u_w[p + 1 :], l_w, w, noise, wt)
        return r, pred, ok

    rw, pred, ok = _over_windows(one, mesh, u, loc, jnp.arange(u.shape[0]), weights)
    r0 = obj.global_residual(g)
    scores = _scores(ju, du, rw)
    blocks = held._replace(
        cost=0.5 * (jnp.sum(rw * rw) + jnp.sum(r0 * r0)),
        bg=jnp.sum(scores, axis=0) + j0.T @ r0,
        bl=jnp.einsum("wmi,wm->wi", jl, rw),
    )
    return blocks, (pred, ok, scores)


@eqx.filter_jit
def band_covariance(obj: Objective, g, blocks: Blocks, scores) -> Array:
    """Covariance of the global unknowns at the optimum (one compiled program).

    Laplace (`schur_covariance`), or widened by the windows' score scatter
    (`robust_covariance`) when ``FitModel.robust_band``.

    Args:
        obj: The patient's objective (its prior is the one the fit used).
        g: The global unknowns at the optimum.
        blocks: The Gauss–Newton blocks there.
        scores: The windows' data scores there (`_linearise`'s ``aux[2]``).
    """
    if not obj.model.robust_band:
        return schur_covariance(blocks)
    j0 = jax.jacfwd(obj.global_residual)(g)
    return robust_covariance(blocks, scores, j0.T @ j0, obj.windows.valid)


@eqx.filter_jit
def _solve(
    obj: Objective,
    optimiser: LevenbergMarquardt,
    g0,
    l0,
    noise,
    weights,
    max_iter,
    mesh: jax.sharding.Mesh | None = None,
) -> LMResult:
    return optimiser(
        lambda g, loc: _linearise(
            obj, g, loc, noise, weights, with_jac=True, mesh=mesh
        ),
        g0,
        l0,
        max_iter=max_iter,
        evaluate=lambda g, loc, jac, held: _evaluate(
            obj, g, loc, noise, weights, jac, held, mesh
        ),
    )


@dataclasses.dataclass(frozen=True)
class FitResult:
    """The fit of one patient (host-side numpy; see `graft_band`, `parameters`).

    Attributes:
        patient_id: The patient's id.
        params: Fitted `Params` (estimated fields at their MAP values).
        estimated: Names of the estimated `Params` fields.
        theta: MAP of log(estimated fields).
        knot_days: Study days of the log-B knots [day].
        log_b: MAP of log B at the knots.
        cov: Covariance of [theta, log_b knots]: Laplace, widened by the windows'
            score scatter unless ``FitModel.robust_band`` is False (`robust_covariance`).
        sigma_mg_dl: Estimated CGM error SD [mg/dL].
        ar1: Estimated AR(1) coefficient of the CGM error between readings [-].
        info: Host-side facts about the windows.
        ts: Reading times per window [min since the reference].
        observed: Observed glucose per window [mg/dL].
        mask: Observed readings.
        censored: -1/0/+1 per reading.
        predicted: Model CGM per window [mg/dL].
        window_b: B per window (MAP).
        rmse_mg_dl: Root-mean-square error of the uncensored readings [mg/dL].
        mard_percent: Mean absolute relative difference model vs CGM [%].
        n_readings: Readings used (uncensored and censored).
        converged: Whether the optimiser met its tolerance.
        iterations: Optimiser iterations (all rounds).
        seconds: Wall time of the fit [s].
        cost: Final negative log posterior (up to a constant).
        message: Empty, or why the fit is not to be trusted.
        sensor: Calibration of each CGM sensor session: ``session, study_day_start,
            study_day_end, gain, offset_mg_dl`` with 95 % intervals (``gain_lower``,
            ``gain_upper``, ``offset_lower``, ``offset_upper``); reading = gain ×
            interstitial glucose + offset.
    """

    patient_id: str
    params: Params
    estimated: tuple[str, ...]
    theta: np.ndarray
    knot_days: np.ndarray
    log_b: np.ndarray
    cov: np.ndarray
    sigma_mg_dl: float
    ar1: float
    info: WindowInfo
    ts: np.ndarray
    observed: np.ndarray
    mask: np.ndarray
    censored: np.ndarray
    predicted: np.ndarray
    window_b: np.ndarray
    rmse_mg_dl: float
    mard_percent: float
    n_readings: int
    converged: bool
    iterations: int
    seconds: float
    cost: float
    message: str = ""
    sensor: pd.DataFrame | None = None

    # ---------------------------------------------------------------- graft function
    def log_b_at(self, study_days) -> tuple[np.ndarray, np.ndarray]:
        """MAP and Laplace SD of log B at study days (linear in the knots)."""
        days = np.atleast_1d(np.asarray(study_days, float))
        k = self.knot_days
        x = np.clip(days, k[0], k[-1])
        j = np.clip(np.searchsorted(k, x, side="right") - 1, 0, k.size - 1)
        a = np.zeros((days.size, k.size))
        nxt = np.minimum(j + 1, k.size - 1)
        span = np.where(nxt > j, k[nxt] - k[j], 1.0)
        f = np.where(nxt > j, (x - k[j]) / span, 0.0)
        a[np.arange(days.size), j] += 1.0 - f
        a[np.arange(days.size), nxt] += f
        p = self.theta.size
        cov_k = self.cov[p:, p:]
        mean = a @ self.log_b
        sd = np.sqrt(np.maximum(np.einsum("dk,kl,dl->d", a, cov_k, a), 0.0))
        return mean, sd

    def graft_band(self, study_days=None, *, level: float = 0.95) -> pd.DataFrame:
        """B with its confidence band on every day.

        Args:
            study_days: Days to report [day]; default every day from the first to the
                last window.
            level: Coverage of the band (Laplace approximation on log B).

        Returns:
            Columns ``study_day, date, estimate, lower, upper``: B as a fraction of a
            healthy adult's functional capacity; 0 with a zero-width band before the
            infusion.
        """
        from scipy.stats import norm

        info = self.info
        if study_days is None:
            first = info.day_index[0] - info.study_day_offset
            last = info.day_index[-1] - info.study_day_offset
            study_days = np.arange(np.floor(first), np.floor(last) + 1.0)
        days = np.atleast_1d(np.asarray(study_days, float))
        mean, sd = self.log_b_at(days + 0.5)
        z = norm.ppf(0.5 + level / 2.0)
        on = (
            (days + 0.5 >= 0.0)
            if info.transplant_day is not None
            else np.ones_like(days, bool)
        )
        est = np.where(on, np.exp(mean), 0.0)
        lower = np.where(on, np.exp(mean - z * sd), 0.0)
        upper = np.where(on, np.exp(mean + z * sd), 0.0)
        ref = pd.Timestamp(info.reference_time)
        dates = [
            (ref + pd.Timedelta(days=float(d + info.study_day_offset))).date()
            for d in days
        ]
        return pd.DataFrame(
            {
                "study_day": days,
                "date": dates,
                "estimate": est,
                "lower": lower,
                "upper": upper,
            }
        )

    def parameters(self) -> pd.DataFrame:
        """Estimated parameters with 95 % intervals (``name, value, unit, lower, upper``).

        The values the model used: exp(θ) held inside the physiological bounds
        (`soft_bounded`, monotone, so the interval of θ maps onto the value's).
        """
        units = {r["name"]: r["unit"] for r in param_info()}
        sd = np.sqrt(np.maximum(np.diag(self.cov)[: self.theta.size], 0.0))
        value = lambda n, t: float(np.exp(soft_bounded(n, float(t))))  # noqa: E731
        rows = [
            {
                "name": n,
                "value": value(n, t),
                "unit": units[n],
                "lower": value(n, t - _Z95 * s),
                "upper": value(n, t + _Z95 * s),
            }
            for n, t, s in zip(self.estimated, self.theta, sd, strict=True)
        ]
        rows.append(
            {
                "name": "cgm_error_sd",
                "value": self.sigma_mg_dl,
                "unit": "mg/dL",
                "lower": np.nan,
                "upper": np.nan,
            }
        )
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """The numbers of ``fit_summary.json``."""
        return {
            "patient_id": self.patient_id,
            "rmse_mg_dl": self.rmse_mg_dl,
            "mard_percent": self.mard_percent,
            "n_readings": self.n_readings,
            "converged": self.converged,
            "iterations": self.iterations,
            "seconds": self.seconds,
            "sigma_mg_dl": self.sigma_mg_dl,
            "ar1": self.ar1,
            "message": self.message,
        }


def _estimate_noise(resid, use, weights, ar1: bool) -> tuple[np.ndarray, np.ndarray]:
    """Marginal SD [mg/dL] and lag-1 autocorrelation of one patient's CGM error."""
    sigma, phi = _estimate_noise_batch(resid[None], use[None], weights[None], ar1)
    return np.asarray(sigma[0]), np.asarray(phi[0])


def _estimate_noise_batch(resid, use, weights, ar1: bool):
    """Each patient's CGM error SD [mg/dL] and AR(1) coefficient (``[N, W, T]``).

    From the readings ``use``d of the residuals ``resid``, scaled by √``weights``
    (None: ones): the root mean square (at least 0.5 mg/dL) and, with ``ar1`` and more
    than 10 pairs of consecutive readings, their lag-1 correlation clipped to
    [0, 0.99] (else 0). A patient whose residuals are not finite gets NaN.
    """
    with np.errstate(all="ignore"):
        e = np.where(use, resid if weights is None else resid * np.sqrt(weights), 0.0)
        n = np.maximum(use.sum(axis=(1, 2)), 1)
        sigma = np.maximum(np.sqrt(np.sum(e**2, axis=(1, 2)) / n), 0.5)
        phi = np.zeros_like(sigma)
        if ar1:
            pair = use[:, :, 1:] & use[:, :, :-1]
            a = np.where(pair, e[:, :, 1:], 0.0)
            b = np.where(pair, e[:, :, :-1], 0.0)
            den = np.sqrt(np.sum(a * a, axis=(1, 2)) * np.sum(b * b, axis=(1, 2)))
            r = np.sum(a * b, axis=(1, 2)) / np.where(den > 0, den, 1.0)
            phi = np.where(pair.sum(axis=(1, 2)) > 10, np.clip(r, 0.0, 0.99), 0.0)
    return sigma, phi


def _transplant_day(patient: PatientData, transplant_date) -> float | None:
    if transplant_date is None or (
        isinstance(transplant_date, float) and np.isnan(transplant_date)
    ):
        return None
    if isinstance(transplant_date, (int, float, np.floating)):
        return float(transplant_date)
    ref = pd.Timestamp(patient.reference_time)
    when = pd.Timestamp(transplant_date)
    if when.tzinfo is None and ref.tzinfo is not None:
        when = when.tz_localize(ref.tzinfo)
    elif when.tzinfo is not None and ref.tzinfo is None:
        when = when.tz_convert(None)
    return (when.normalize() - ref.normalize()) / pd.Timedelta(days=1)


def _checked_mesh(mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh | None:
    """The mesh to split windows over (`auto_axes`); only one-axis meshes."""
    if mesh is None:
        return None
    if len(mesh.axis_names) != 1:
        raise InputError(
            f"fit_patient: the mesh has axes {mesh.axis_names}",
            field="mesh",
            expected="a one-axis mesh, e.g. jax.make_mesh((n,), ('windows',))",
        )
    return auto_axes(mesh)


def _on_devices(tree, mesh: jax.sharding.Mesh | None):
    """``tree``'s arrays on the default device, or replicated over ``mesh``.

    Every call of `_solve` then sees the same input shardings, whether its arguments
    come from the host or from an earlier solve: one compilation serves them all.
    """
    dynamic, static = eqx.partition(tree, eqx.is_array)
    if mesh is None:
        return eqx.combine(jax.device_put(dynamic), static)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return eqx.combine(jax.device_put(dynamic, sharding), static)


def fit_patient(
    data: PatientData,
    *,
    model: FitModel | None = None,
    prior: Prior = Prior(),
    optimiser: LevenbergMarquardt = LevenbergMarquardt(),
    weight_kg: float | None = None,
    transplant_date=None,
    starts: int = 2,
    mesh: jax.sharding.Mesh | None = None,
    key: PRNGKeyArray,
) -> FitResult:
    """Fit one patient's CGM record: parameters and graft function B(t) with a band.

    Maximum a posteriori over all day-windows jointly: the likelihood of the CGM
    readings through the model's sensor lag (Gaussian or Student-t error with an
    estimated SD; 'Low'/'High' readings censored at the device limits; gaps masked),
    log-normal priors on the estimated physiology, a random-walk prior on log B between
    knots, and a prior on each window's initial glucose. Levenberg–Marquardt with
    forward-mode Jacobians evaluated window by window (`LevenbergMarquardt`), from
    ``starts`` starting points; the SD of the CGM error is re-estimated and the fit
    polished once more. The Laplace approximation at the optimum gives intervals for
    the parameters and a band for B on every day.

    Args:
        data: The patient's record (`isletfit.data.read`).
        model: What is fitted (`FitModel`; default ``FitModel()``).
        prior: Priors (`Prior`).
        optimiser: The optimiser (`LevenbergMarquardt`).
        weight_kg: Body weight [kg] (70 kg with a warning if unknown).
        transplant_date: Infusion date (anything `pandas.Timestamp` reads), or a day
            number since the record's reference midnight; None if unknown or no graft.
        starts: Number of starting points (graft at the prior median, then low and
            high); the best posterior wins.
        mesh: A one-axis `jax.sharding.Mesh`: the day-windows are split over its
            devices, e.g. a CPU's cores exposed as devices
            (``jax.config.update("jax_num_cpu_devices", n)`` before JAX's first use,
            then ``jax.make_mesh((n,), ("windows",))``); XLA runs one device's
            program on one core. None: one device. The result does not depend on it
            (to rounding). It pays for long records (6 visits × 14 days on 2 cores:
            1.3–1.85× faster compiled) and not for a few days (4 windows: 0.8×), and
            a cold fit compiles the split programs for a little longer
            (``benchmarks/RESULTS.md``).
        key: PRNG key for the jitter of the starting points.

    Returns:
        A `FitResult`. Numerical trouble is reported in ``converged`` and ``message``;
        bad data raise `isletfit.InputError`.
    """
    start_time = time.perf_counter()
    model = FitModel() if model is None else model
    mesh = _checked_mesh(mesh)
    # host-side (numpy) preparation: no small device programs to compile
    windows, info = prepare_windows(
        data,
        model=model,
        weight_kg=weight_kg,
        transplant_day=_transplant_day(data, transplant_date),
        window_bucket=8 if mesh is None else int(np.lcm(8, mesh.size)),
        host=True,
    )
    windows = eqx.tree_at(lambda w: w.inputs, windows, _pad_events(windows.inputs))
    obj = _on_devices(Objective(windows=windows, model=model, prior=prior), mesh)
    p = obj.n_params
    nw, nl = windows.ts.shape[0], obj.n_local
    levels = [prior.graft_median, 0.05, 1.0][: max(1, starts)]
    # start i's jitter is normal(split(key, starts)[i]) (as in `fit_population`)
    jitter = np.asarray(
        jax.vmap(lambda k: jax.random.normal(k, (p,)))(
            jax.random.split(key, len(levels))
        )
    )
    # `Objective.prior_centre` on the host (it keeps JAX's dtypes for traced use)
    centre = np.log([float(getattr(model.params, n)) for n in prior.estimated])
    l0 = np.zeros((nw, nl))
    if isinstance(model.meals, LatentMeals):
        l0[:, obj.meal_start :] = np.log(model.meals.init_g)
    weights = np.ones(windows.obs.shape)
    noise = (np.asarray(10.0), np.asarray(0.0))

    def solve(*args) -> LMResult:  # (g0, l0, noise, weights, max_iter)
        return _solve(obj, optimiser, *_on_devices(args, mesh), mesh)

    full = np.asarray(optimiser.max_iter)
    screen = np.asarray(optimiser.screen_iter)
    best, best_cost, iterations = None, np.inf, 0
    for level, shift in zip(levels, jitter, strict=True):
        knots0 = np.where(windows.knot_valid, np.log(level), 0.0)
        g0 = np.concatenate(
            [centre + 0.05 * shift, knots0, np.zeros(2 * obj.n_sessions)]
        )
        res = solve(g0, l0, noise, weights, screen)
        iterations += int(res.iterations)
        cost = float(res.blocks.cost)
        if np.isfinite(cost) and cost < best_cost:
            best, best_cost = res, cost
    if best is None:
        return _failed(data, info, prior, windows, start_time, iterations)
    # Re-estimate the CGM error (SD, AR(1) coefficient, Student-t weights) from the
    # best start and continue it to convergence; then once more from the converged
    # residuals (the screened start's residuals overstate the error, which widened the
    # bands by up to 2x); Student-t repeats this (IRLS).
    # A round whose error estimate moved the SD by < 1 % and φ by < 0.01 from the
    # previous one is skipped: it would move the optimum by a small fraction of its
    # standard error.
    rounds = 3 if isinstance(model.noise, StudentTNoise) else 2
    use = (
        np.asarray(windows.mask)
        & (np.asarray(windows.censor) == 0)
        & np.asarray(windows.valid)[:, None]
    )
    for round_ in range(rounds):
        resid = np.asarray(best.aux[0]) - windows.obs
        previous = noise
        noise = _estimate_noise(resid, use, np.asarray(weights), model.noise.ar1)
        settled = (
            abs(float(noise[0]) / float(previous[0]) - 1.0) < 0.01
            and abs(float(noise[1]) - float(previous[1])) < 0.01
        )
        if round_ > 0 and settled and not isinstance(model.noise, StudentTNoise):
            noise = previous
            break
        if isinstance(model.noise, StudentTNoise):
            nu = model.noise.df
            z = resid / float(noise[0])
            weights = (nu + 1.0) / (nu + z**2)
        res = solve(best.g, best.loc, noise, weights, full)
        iterations += int(res.iterations)
        if np.isfinite(float(res.blocks.cost)):
            best = res

    g = np.asarray(best.g)
    pred, ok, _ = best.aux
    cov = np.asarray(band_covariance(obj, best.g, best.blocks, best.aux[2]))
    return assemble_result(
        obj,
        info,
        g,
        cov,
        pred=np.asarray(pred),
        ok=np.asarray(ok),
        noise=(float(noise[0]), float(noise[1])),
        converged=bool(best.converged),
        iterations=iterations,
        seconds=time.perf_counter() - start_time,
        cost=float(best.blocks.cost),
    )


def assemble_result(
    obj: Objective,
    info: WindowInfo,
    g,
    cov: np.ndarray,
    *,
    pred: np.ndarray,
    ok: np.ndarray,
    noise: tuple[float, float],
    converged: bool,
    iterations: int,
    seconds: float,
    cost: float,
) -> FitResult:
    """A patient's `FitResult` from the optimum of its objective (one or stacked fits).

    Args:
        obj: The patient's objective.
        info: Its host-side window facts.
        g: Global unknowns at the optimum.
        cov: Covariance of the global unknowns.
        pred: Predicted CGM per window (padded) [mg/dL].
        ok: Solver success per window (padded).
        noise: CGM error SD [mg/dL] and AR(1) coefficient.
        converged: Whether the optimiser met its tolerance.
        iterations: Optimiser iterations.
        seconds: Wall time [s].
        cost: Final cost.
    """
    windows, p = obj.windows, obj.n_params
    nw, nk = info.n_windows, info.n_knots
    pred = pred[:nw]
    obs = np.asarray(windows.obs)[:nw]
    mask = np.asarray(windows.mask)[:nw]
    cens = np.asarray(windows.censor)[:nw]
    exact = mask & (cens == 0)
    err = pred[exact] - obs[exact]
    rmse = float(np.sqrt(np.mean(err**2))) if err.size else float("nan")
    mard = (
        float(np.mean(np.abs(err) / obs[exact]) * 100.0) if err.size else float("nan")
    )
    u = np.asarray(obj.to_window(g))
    window_b = np.where(np.asarray(windows.graft_on), np.exp(u[:, p]), 0.0)[:nw]
    message = "" if converged else "optimiser stopped before its tolerance"
    if not bool(np.all(ok[:nw])):
        message = "the ODE solve failed in some windows"
    return FitResult(
        patient_id=info.patient_id,
        params=obj.params_from(g[:p]),
        estimated=tuple(obj.prior.estimated),
        theta=np.asarray(g[:p]),
        knot_days=np.asarray(windows.knot_days)[:nk],
        log_b=np.asarray(obj.split(g)[1])[:nk],
        cov=np.asarray(cov)[: p + nk, : p + nk],
        sigma_mg_dl=float(noise[0]),
        ar1=float(noise[1]),
        info=info,
        ts=np.asarray(windows.ts)[:nw],
        observed=obs,
        mask=mask,
        censored=cens,
        predicted=pred,
        window_b=window_b,
        rmse_mg_dl=rmse,
        mard_percent=mard,
        n_readings=int(mask.sum()),
        converged=converged and not message,
        iterations=iterations,
        seconds=seconds,
        cost=cost,
        message=message,
        sensor=_sensor_table(obj, g, cov, info),
    )


def _sensor_table(obj: Objective, g, cov, info: WindowInfo) -> pd.DataFrame:
    """Per-session sensor gain and offset with 95 % intervals (normal on the scores)."""
    _, _, cal = obj.split(g)
    cal = np.asarray(cal)
    start = obj.n_params + obj.n_knots
    sd = np.sqrt(np.maximum(np.diag(cov)[start:], 0.0)).reshape(-1, 2)
    prior = obj.prior
    days = np.asarray(info.day_index) - info.study_day_offset
    rows = []
    for s in range(int(info.session.max()) + 1):
        on = info.session == s
        z, e = cal[s], sd[s]
        rows.append(
            {
                "session": s,
                "study_day_start": float(np.floor(days[on].min())),
                "study_day_end": float(np.floor(days[on].max())),
                "gain": float(np.exp(prior.sensor_gain_log_sd * z[0])),
                "gain_lower": float(
                    np.exp(prior.sensor_gain_log_sd * (z[0] - _Z95 * e[0]))
                ),
                "gain_upper": float(
                    np.exp(prior.sensor_gain_log_sd * (z[0] + _Z95 * e[0]))
                ),
                "offset_mg_dl": float(prior.sensor_offset_sd * z[1]),
                "offset_lower": float(prior.sensor_offset_sd * (z[1] - _Z95 * e[1])),
                "offset_upper": float(prior.sensor_offset_sd * (z[1] + _Z95 * e[1])),
            }
        )
    return pd.DataFrame(rows)


def _failed(
    data, info, prior, windows: PatientWindows, start_time, iterations
) -> FitResult:
    n = info.n_windows
    nan = np.full((n, windows.ts.shape[1]), np.nan)
    return FitResult(
        patient_id=data.patient_id,
        params=Params(),
        estimated=tuple(prior.estimated),
        theta=np.full(len(prior.estimated), np.nan),
        knot_days=np.asarray(windows.knot_days)[: info.n_knots],
        log_b=np.full(info.n_knots, np.nan),
        cov=np.full((len(prior.estimated) + info.n_knots,) * 2, np.nan),
        sigma_mg_dl=float("nan"),
        ar1=float("nan"),
        info=info,
        ts=np.asarray(windows.ts)[:n],
        observed=np.asarray(windows.obs)[:n],
        mask=np.asarray(windows.mask)[:n],
        censored=np.asarray(windows.censor)[:n],
        predicted=nan,
        window_b=np.full(n, np.nan),
        rmse_mg_dl=float("nan"),
        mard_percent=float("nan"),
        n_readings=int(np.asarray(windows.mask)[:n].sum()),
        converged=False,
        iterations=iterations,
        seconds=time.perf_counter() - start_time,
        cost=float("nan"),
        message="the model could not be evaluated at any starting point",
    )
