r"""Population fits: every patient at once, with population-level parameters.

The estimated parameters θ_i (log scale) of patient i are drawn from the population,
θ_i ~ N(μ, diag ω²); μ (typical values) and ω (between-patient SDs) are estimated from
all patients by empirical Bayes, with a Laplace approximation of each patient's
posterior (Laplace-EM, as in the first-order conditional estimation methods of
population pharmacokinetics):

- **E-step.** Every patient's maximum a posteriori (empirical Bayes estimate, EBE)
  under the prior N(μ, ω²) on θ_i, with the usual priors on the graft trajectory,
  sensor calibration and day-window effects — the single-patient objective of
  `fit_patient` with the prior on θ recentred. All patients run in one jit-compiled,
  vmapped Levenberg–Marquardt program (`HierarchicalObjective` holds μ and ω as
  arrays, so one compilation serves every round); the Laplace covariance Σ_i comes
  from the same Gauss–Newton blocks.
- **M-step.** μ = mean_i θ̂_i and ω² = mean_i [(θ̂_i − μ)² + diag Σ_i] (floored), over
  the patients whose fit could be evaluated.

The rounds stop when μ and ω change by less than ``tol``; a last E-step under the final
(μ, ω) gives the reported per-patient estimates. The CGM error SD and AR(1)
coefficient of each patient are re-estimated after every E-step, as `fit_patient` does
after its screening.

A patient whose record cannot be prepared, or whose model cannot be evaluated (a
non-finite cost), is reported in `PopulationResult.failures` and left out of the
M-step; the others go on. With a device ``mesh`` the patient axis is sharded across
devices. With a ``checkpoint`` the state after each round is saved (``.npz``, written
atomically) and ``resume=True`` continues from it; the result equals an uninterrupted
run.

References:
    - Lindstrom MJ, Bates DM. Nonlinear mixed effects models for repeated measures
      data. Biometrics 46:673–687, 1990.
    - Walker S. An EM algorithm for nonlinear random effects models. Biometrics
      52:934–944, 1996.
    - Savic RM, Karlsson MO. Importance of shrinkage in empirical Bayes estimates for
      diagnostics. AAPS J 11:558–569, 2009 (η-shrinkage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._custom_types import Array, Float, PRNGKeyArray
from .._errors import InputError, IsletfitError
from .._io import atomic_write_with
from ..data import PatientData
from ..model import param_info
from ._config import FitModel, LatentMeals, Prior, StudentTNoise
from ._fit import _Z95, FitResult, _linearise, assemble_result
from ._lm import Blocks, LevenbergMarquardt, schur_covariance
from ._problem import Objective, PatientWindows, WindowInfo
from ._stacking import (
    PopulationProblem,
    pad_patients,
    prepare_patient,
    stack_windows,
)
from ._visits import visit_blocks

__all__ = [
    "HierarchicalObjective",
    "PopulationResult",
    "RoundInfo",
    "fit_population",
]

_CHECKPOINT_VERSION = 1


class HierarchicalObjective(Objective):
    """`Objective` with the population prior N(μ, ω²) on θ, μ and ω as arrays.

    Everything else (windows, residuals, graft and calibration priors) is the
    single-patient objective's. Because μ and ω are array fields, not the Python
    floats of `Prior`, a jit-compiled fit traces them, and one compilation serves every
    round of `fit_population`.

    Attributes:
        mu: Prior centre of θ (log of the estimated `Params` fields) [-].
        omega: Prior SD of θ [-].
    """

    mu: Float[Array, " p"]
    omega: Float[Array, " p"]

    def prior_centre(self) -> Float[Array, " p"]:
        """The population's typical values μ (log scale)."""
        return self.mu

    def global_residual(self, g):
        """Prior residuals of the global unknowns, with (θ − μ)/ω on θ."""
        r = super().global_residual(g)
        p = self.n_params
        # the first p residuals are the prior on theta (see `Objective.global_residual`)
        return r.at[:p].set((g[:p] - self.mu) / self.omega)


class _Solved(eqx.Module):
    """What one vmapped E-step returns per patient (leading patient axis)."""

    g: Array
    loc: Array
    cost: Array
    pred: Array
    ok: Array
    blocks: Blocks
    iterations: Array
    converged: Array


def _solve_block(
    windows, model, prior, mu, omega, optimiser, g0, l0, sigma, phi, weights, max_iter
) -> _Solved:
    """Levenberg–Marquardt for a block of patients (vmapped over the patient axis)."""

    def one(win, g, loc, s, f, wt):
        obj = HierarchicalObjective(
            windows=win, model=model, prior=prior, mu=mu, omega=omega
        )
        res = optimiser(
            lambda gg, ll: _linearise(obj, gg, ll, (s, f), wt),
            g,
            loc,
            max_iter=max_iter,
        )
        pred, ok = res.aux[0], res.aux[1]  # predicted CGM, solver success
        return _Solved(
            g=res.g,
            loc=res.loc,
            cost=res.blocks.cost,
            pred=pred,
            ok=ok,
            blocks=res.blocks,
            iterations=res.iterations,
            converged=res.converged,
        )

    return eqx.filter_vmap(one)(windows, g0, l0, sigma, phi, weights)


@eqx.filter_jit
def _solve_all(
    windows,
    model,
    prior,
    mu,
    omega,
    optimiser,
    g0,
    l0,
    sigma,
    phi,
    weights,
    max_iter,
    mesh: jax.sharding.Mesh | None,
) -> _Solved:
    """All patients' E-step in one program; with a mesh, each device fits its shard.

    With a mesh the vmapped solver runs under `jax.shard_map`: every device iterates
    on its own patients until they have all converged, with no communication between
    devices (patients are independent given μ and ω), where compiler-partitioned
    vmapping would synchronise every iteration of every solver loop across devices.
    """
    if mesh is None:
        return _solve_block(
            windows,
            model,
            prior,
            mu,
            omega,
            optimiser,
            g0,
            l0,
            sigma,
            phi,
            weights,
            max_iter,
        )
    model_dyn, model_static = eqx.partition(model, eqx.is_array)

    def block(windows, g0, l0, sigma, phi, weights, mu, omega, max_iter, model_dyn):
        return _solve_block(
            windows,
            eqx.combine(model_dyn, model_static),
            prior,
            mu,
            omega,
            optimiser,
            g0,
            l0,
            sigma,
            phi,
            weights,
            max_iter,
        )

    spec, rep = jax.sharding.PartitionSpec("patients"), jax.sharding.PartitionSpec()
    return jax.shard_map(
        block,
        mesh=mesh,
        in_specs=(spec,) * 6 + (rep,) * 4,
        out_specs=spec,
        check_vma=False,
    )(windows, g0, l0, sigma, phi, weights, mu, omega, max_iter, model_dyn)


@jax.jit
def _covariances(blocks: Blocks) -> Array:
    """Laplace covariance of every patient's g from its Gauss–Newton blocks.

    Computed apart from the (possibly sharded) solve: with the covariance inside the
    `jax.shard_map`, the program deadlocked on two or more CPU host devices with two
    patients per device (jax 0.10.2; the batched eigen-solver of `pinv` after the
    solver loop), and it is cheap.
    """
    return jax.vmap(schur_covariance)(blocks)


def _estimate_noise_batch(resid, use, weights, ar1: bool):
    """`_estimate_noise` for every patient at once (host-side, ``[N, W, T]``).

    A patient whose residuals are not finite gets NaN (the caller keeps its old noise).
    """
    with np.errstate(all="ignore"):
        return _estimate_noise_np(resid, use, weights, ar1)


def _estimate_noise_np(resid, use, weights, ar1: bool):
    e = np.where(use, resid * np.sqrt(weights), 0.0)
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


def _m_step(theta, var, use, floor: float):
    """μ and ω from the EBEs and their Laplace variances of the patients in ``use``."""
    th, v = theta[use], var[use]
    mu = th.mean(axis=0)
    omega = np.sqrt(np.maximum(np.mean((th - mu) ** 2 + v, axis=0), floor**2))
    return mu, omega


# ------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class RoundInfo:
    """Progress of `fit_population`, passed to ``on_round`` after each round.

    Attributes:
        round: Rounds done (1 after the first).
        mu: Typical values μ after the round's M-step (log scale).
        omega: Between-patient SDs ω after the round's M-step (log scale).
        change: Largest change of μ or ω in the round.
        n_failed: Patients left out of the M-step (model not evaluable).
        seconds: Wall time of the round [s].
    """

    round: int
    mu: np.ndarray
    omega: np.ndarray
    change: float
    n_failed: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class PopulationResult:
    """The population fit (host-side numpy; see `parameters`, `graft_trajectory`).

    Attributes:
        estimated: Names of the estimated `Params` fields.
        mu: Typical values μ: mean of log(field) over the population.
        omega: Between-patient SDs ω of log(field).
        mu_se: Standard error of μ, approximated as ω/√n (n patients in the M-step;
            ignores the uncertainty of each patient's estimate beyond ω).
        omega_se: Standard error of ω, approximated as ω/√(2n) (normal theory).
        shrinkage: η-shrinkage of each parameter, 1 − var_i(θ̂_i)/ω² (0: the data
            determine each patient's value; 1: every patient sits at μ).
        patient_id: Patients whose record could be prepared (fitted or failed in the
            fit), in input order.
        theta: EBEs of log(field) per patient ``[n, p]`` (NaN where the fit failed).
        theta_sd: Laplace posterior SD of theta ``[n, p]``.
        results: Patient id -> `FitResult` (MAP under the population prior) of each
            patient fitted.
        failures: Patient id -> why it is not fitted (bad record, model not
            evaluable).
        rounds: EM rounds done.
        converged: Whether μ and ω changed by less than the tolerance.
        history_mu: μ after each round ``[rounds, p]``.
        history_omega: ω after each round ``[rounds, p]``.
        n_devices: Devices the patients were sharded over.
        seconds: Wall time of the fit [s].
    """

    estimated: tuple[str, ...]
    mu: np.ndarray
    omega: np.ndarray
    mu_se: np.ndarray
    omega_se: np.ndarray
    shrinkage: np.ndarray
    patient_id: tuple[str, ...]
    theta: np.ndarray
    theta_sd: np.ndarray
    results: dict[str, FitResult]
    failures: dict[str, str]
    rounds: int
    converged: bool
    history_mu: np.ndarray
    history_omega: np.ndarray
    n_devices: int
    seconds: float

    def parameters(self) -> pd.DataFrame:
        """Population parameter table, one row per estimated field.

        Returns:
            Columns ``name, unit, typical_value, lower, upper`` (typical value
            exp(μ) with its 95 % interval from ``mu_se``), ``mu, mu_se, omega,
            omega_se, cv_percent`` (between-patient coefficient of variation
            √(exp(ω²) − 1)), ``shrinkage, n_patients``.
        """
        units = {r["name"]: r["unit"] for r in param_info()}
        n = len(self.results)
        rows = []
        for k, name in enumerate(self.estimated):
            mu, se, om = self.mu[k], self.mu_se[k], self.omega[k]
            rows.append(
                {
                    "name": name,
                    "unit": units[name],
                    "typical_value": float(np.exp(mu)),
                    "lower": float(np.exp(mu - _Z95 * se)),
                    "upper": float(np.exp(mu + _Z95 * se)),
                    "mu": float(mu),
                    "mu_se": float(se),
                    "omega": float(om),
                    "omega_se": float(self.omega_se[k]),
                    "cv_percent": float(100.0 * np.sqrt(np.expm1(om**2))),
                    "shrinkage": float(self.shrinkage[k]),
                    "n_patients": n,
                }
            )
        return pd.DataFrame(rows)

    def estimates(self) -> pd.DataFrame:
        """Each patient's EBEs with 95 % Laplace intervals.

        Returns:
            Columns ``patient_id, name, value, lower, upper`` (NaN for a failed
            patient).
        """
        rows = []
        for i, pid in enumerate(self.patient_id):
            for k, name in enumerate(self.estimated):
                t, s = self.theta[i, k], self.theta_sd[i, k]
                rows.append(
                    {
                        "patient_id": pid,
                        "name": name,
                        "value": float(np.exp(t)),
                        "lower": float(np.exp(t - _Z95 * s)),
                        "upper": float(np.exp(t + _Z95 * s)),
                    }
                )
        return pd.DataFrame(rows)

    def graft_trajectory(self) -> pd.DataFrame:
        """Typical graft trajectory: log B across patients at each knot's study day.

        Knots are aligned on study days 0, 7, 14, ... after the infusion (for patients
        with a transplant date), so patients are pooled knot by knot.

        Returns:
            Columns ``study_day, n_patients, mean_log_b, sd_log_b`` (between-patient
            SD), ``se_mean_log_b`` (sd/√n), ``b_typical`` (exp of the mean), and
            ``b_lower, b_upper`` (exp(mean ∓ 1.96 sd): where 95 % of patients' B lie).
        """
        values: dict[float, list[float]] = {}
        for res in self.results.values():
            for d, lb in zip(res.knot_days, res.log_b, strict=True):
                values.setdefault(round(float(d), 6), []).append(float(lb))
        rows = []
        for d in sorted(values):
            v = np.asarray(values[d])
            mean = float(v.mean())
            sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
            rows.append(
                {
                    "study_day": d,
                    "n_patients": int(v.size),
                    "mean_log_b": mean,
                    "sd_log_b": sd,
                    "se_mean_log_b": sd / np.sqrt(v.size),
                    "b_typical": float(np.exp(mean)),
                    "b_lower": float(np.exp(mean - _Z95 * sd)),
                    "b_upper": float(np.exp(mean + _Z95 * sd)),
                }
            )
        return pd.DataFrame(rows)

    def visits(self, *, level: float = 0.95, gap_days: int = 3) -> pd.DataFrame:
        """B at each patient's visit blocks with the Laplace band.

        Args:
            level: Coverage of the band.
            gap_days: Days without CGM that separate two visits [day].

        Returns:
            Columns ``patient_id, visit, study_day_start, study_day_end, graft_b,
            graft_b_lower, graft_b_upper`` (0 before the infusion).
        """
        from scipy.stats import norm

        z = norm.ppf(0.5 + level / 2.0)
        rows = []
        for pid, res in self.results.items():
            info = res.info
            for k, days in enumerate(visit_blocks(info.day_index, gap_days=gap_days)):
                mid = 0.5 * (days[0] + days[-1] + 1) - info.study_day_offset
                mean, sd = (float(x[0]) for x in res.log_b_at(np.array([mid])))
                pre = info.transplant_day is not None and mid < 0
                b, lo, hi = (
                    (0.0, 0.0, 0.0)
                    if pre
                    else (np.exp(mean), np.exp(mean - z * sd), np.exp(mean + z * sd))
                )
                rows.append(
                    {
                        "patient_id": pid,
                        "visit": k,
                        "study_day_start": float(days[0] - info.study_day_offset),
                        "study_day_end": float(days[-1] - info.study_day_offset),
                        "graft_b": float(b),
                        "graft_b_lower": float(lo),
                        "graft_b_upper": float(hi),
                    }
                )
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """Headline numbers (JSON-serialisable)."""
        return {
            "n_patients": len(self.patient_id),
            "n_fitted": len(self.results),
            "n_failed": len(self.failures),
            "rounds": self.rounds,
            "converged": self.converged,
            "n_devices": self.n_devices,
            "seconds": self.seconds,
            "typical_value": {
                n: float(np.exp(m))
                for n, m in zip(self.estimated, self.mu, strict=True)
            },
            "omega": {
                n: float(o) for n, o in zip(self.estimated, self.omega, strict=True)
            },
            "shrinkage": {
                n: float(s) for n, s in zip(self.estimated, self.shrinkage, strict=True)
            },
        }


# ---------------------------------------------------------------------- checkpoints
@dataclasses.dataclass
class _State:
    """Host-side state between rounds (what a checkpoint holds), real patients only."""

    round: int
    done: bool
    mu: np.ndarray
    omega: np.ndarray
    g: np.ndarray
    loc: np.ndarray
    sigma: np.ndarray
    phi: np.ndarray
    weights: np.ndarray
    iterations: np.ndarray
    history_mu: np.ndarray
    history_omega: np.ndarray


def _fingerprint(engine: _Engine) -> str:
    """A digest of the model, prior and optimiser (every value), to match a checkpoint."""
    problem = engine.problem
    leaves, treedef = jax.tree.flatten((problem.model, problem.prior, engine.optimiser))
    text = str(treedef) + repr([np.asarray(x).tolist() for x in leaves])
    return hashlib.sha256(text.encode()).hexdigest()


def _save_checkpoint(path, state: _State, engine: _Engine, patient_id) -> None:
    """Write ``state`` to ``path`` atomically (``.npz``, no pickled objects)."""
    estimated = engine.problem.prior.estimated
    arrays = {
        "version": np.asarray(_CHECKPOINT_VERSION),
        "settings": np.asarray(_fingerprint(engine)),
        "patient_id": np.asarray(patient_id, dtype=str),
        "estimated": np.asarray(estimated, dtype=str),
        **{
            f.name: np.asarray(getattr(state, f.name))
            for f in dataclasses.fields(_State)
        },
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write_with(path, write)


def _load_checkpoint(path, engine: _Engine, patient_id) -> _State:
    """The state saved at ``path``, checked against this fit's patients and shapes."""
    estimated = engine.problem.prior.estimated

    def bad(what):
        return InputError(
            f"checkpoint does not match this population fit: {what}",
            file=path,
            expected="a checkpoint written by fit_population for the same patients, "
            "model and prior (delete it to start afresh)",
        )

    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if int(data.get("version", -1)) != _CHECKPOINT_VERSION:
        raise bad("unknown version")
    if list(data["patient_id"]) != list(patient_id):
        raise bad("different patients")
    if list(data["estimated"]) != list(estimated):
        raise bad("different estimated parameters")
    if str(data.get("settings", "")) != _fingerprint(engine):
        raise bad("a different model, prior or optimiser")
    m = engine.n_real
    expected = {k: (m, *v.shape[1:]) for k, v in engine.init.items()}
    expected.update(mu=(len(estimated),), omega=(len(estimated),), iterations=(m,))
    for name, shape in expected.items():
        if data[name].shape != shape:
            raise bad(f"{name} has shape {data[name].shape}, expected {shape}")
    values = {f.name: data[f.name] for f in dataclasses.fields(_State)}
    values["round"] = int(values["round"])
    values["done"] = bool(values["done"])
    return _State(**values)


# -------------------------------------------------------------------------- the fit
def _place(tree, sharding):
    return tree if sharding is None else jax.device_put(tree, sharding)


_SOLVE_FAILED = (
    "the model could not be evaluated (non-finite cost); left out of the population "
    "estimates"
)


@dataclasses.dataclass(frozen=True, eq=False)
class _Engine:
    """What stays fixed over the rounds of one population fit (host side).

    Per-patient state lives in `_State` (real patients only); `rows` pads it with the
    dummies' fixed starting rows for the devices.
    """

    problem: PopulationProblem
    windows: PatientWindows  # placed on the devices
    optimiser: LevenbergMarquardt
    n_real: int
    mesh: jax.sharding.Mesh | None  # automatic axis types, or None
    use: np.ndarray  # exact readings that count [N, W, T]
    obs: np.ndarray
    init: dict  # starting rows of every stacked patient: g, loc, sigma, phi, weights

    @classmethod
    def build(cls, problem: PopulationProblem, optimiser, mesh) -> _Engine:
        auto = None
        if mesh is not None:
            # shardings on a copy of the mesh with automatic axis types: with explicit
            # axes (`jax.make_mesh`'s default) the traced arrays carry sharding types
            # and diffrax's in-place buffer updates are rejected
            auto = jax.sharding.Mesh(
                mesh.devices,
                mesh.axis_names,
                axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names),
            )
        win = problem.windows
        obj0 = problem.objective(0)
        n, p = problem.n_patients, problem.n_params
        mu0 = np.asarray(obj0.prior_centre())
        loc = np.zeros((n, win.ts.shape[1], obj0.n_local), mu0.dtype)
        if isinstance(problem.model.meals, LatentMeals):
            loc[:, :, obj0.meal_start :] = np.log(problem.model.meals.init_g)
        knots = np.where(
            np.asarray(win.knot_valid), np.log(problem.prior.graft_median), 0.0
        )
        g = np.concatenate(
            [
                np.broadcast_to(mu0, (n, p)),
                knots,
                np.zeros((n, 2 * problem.n_sessions)),
            ],
            axis=1,
        )
        patients = (
            None
            if auto is None
            else jax.sharding.NamedSharding(
                auto, jax.sharding.PartitionSpec("patients")
            )
        )
        return cls(
            problem=problem,
            windows=_place(win, patients),
            optimiser=optimiser,
            n_real=int(np.asarray(problem.real).sum()),
            mesh=auto,
            use=np.asarray(win.mask & (win.censor == 0) & win.valid[:, :, None]),
            obs=np.asarray(win.obs),
            init={
                "g": g,
                "loc": loc,
                "sigma": np.full(n, 10.0),
                "phi": np.zeros(n),
                "weights": np.ones(win.obs.shape, mu0.dtype),
            },
        )

    def _sharding(self, *axes: str):
        """Sharding of the patient axis (``"patients"``) or replication (no axis)."""
        if self.mesh is None:
            return None
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*axes))

    def rows(self, state: _State) -> dict:
        """The state's per-patient arrays for all stacked patients (dummies appended)."""
        m = self.n_real
        return {
            name: np.concatenate([np.asarray(getattr(state, name)), fill[m:]])
            for name, fill in self.init.items()
        }

    def solve(self, mu, omega, rows: dict, max_iter: int, *, cov: bool):
        """One E-step on the devices -> (host-side `_Solved`, covariances or None)."""
        shard, rep = self._sharding("patients"), self._sharding()
        args = tuple(
            jnp.asarray(rows[k]) for k in ("g", "loc", "sigma", "phi", "weights")
        )
        res = _solve_all(
            self.windows,
            self.problem.model,
            self.problem.prior,
            _place(jnp.asarray(mu), rep),
            _place(jnp.asarray(omega), rep),
            self.optimiser,
            *_place(args, shard),
            jnp.asarray(max_iter),
            self.mesh,
        )
        covariance = np.asarray(_covariances(res.blocks)) if cov else None
        return jax.tree.map(np.asarray, res), covariance

    def noise(self, pred, ok, rows: dict) -> dict:
        """``rows`` with each evaluable patient's CGM error re-estimated."""
        sigma, phi, weights = _update_noise(
            self.problem.model,
            pred,
            self.obs,
            self.use,
            ok,
            rows["sigma"],
            rows["phi"],
            rows["weights"],
        )
        return {**rows, "sigma": sigma, "phi": phi, "weights": weights}

    def start(self, *, key, starts: int) -> _State:
        """Screen the starting points of every patient (single-patient prior)."""
        prior, p, n = self.problem.prior, self.problem.n_params, self.problem.n_patients
        mu0, omega0 = self.init["g"][0, :p], np.asarray(prior.log_sd)
        levels = [prior.graft_median, 0.05, 1.0][: max(1, starts)]
        # patient i's jitter is `fit_patient`'s with key split(key, n)[i]
        keys = [
            jax.random.split(k, len(levels)) for k in jax.random.split(key, self.n_real)
        ]
        knot_valid = np.asarray(self.problem.windows.knot_valid)
        best, best_cost = None, np.full(n, np.inf)
        iterations = np.zeros(n, int)
        for j, level in enumerate(levels):
            jitter = np.zeros((n, p))
            jitter[: self.n_real] = [
                np.asarray(jax.random.normal(k[j], (p,))) for k in keys
            ]
            rows = dict(self.init)
            rows["g"] = self.init["g"].copy()
            rows["g"][:, :p] += 0.05 * jitter
            rows["g"][:, p : p + knot_valid.shape[1]] = np.where(
                knot_valid, np.log(level), 0.0
            )
            res, _ = self.solve(
                mu0, omega0, rows, self.optimiser.screen_iter, cov=False
            )
            iterations += res.iterations
            better = np.isfinite(res.cost) & (res.cost < best_cost)
            best_cost = np.where(better, res.cost, best_cost)
            best = res if best is None else _select(better, res, best)
        ok = np.isfinite(best_cost)
        rows = dict(self.init)
        rows["g"] = np.where(ok[:, None], best.g, self.init["g"])
        rows["loc"] = np.where(ok[:, None, None], best.loc, self.init["loc"])
        rows = self.noise(best.pred, ok, rows)
        m = self.n_real
        return _State(
            round=0,
            done=False,
            mu=mu0,
            omega=omega0,
            **{k: v[:m] for k, v in rows.items()},
            iterations=iterations[:m],
            history_mu=np.zeros((0, p)),
            history_omega=np.zeros((0, p)),
        )

    def em_round(self, state: _State, *, tol: float, floor: float):
        """One E-step and M-step -> (new state, change of μ and ω, patients failed)."""
        p, m = self.problem.n_params, self.n_real
        rows = self.rows(state)
        res, cov = self.solve(
            state.mu, state.omega, rows, self.optimiser.max_iter, cov=True
        )
        ok = np.isfinite(res.cost) & np.asarray(self.problem.real)
        rows["g"] = np.where(ok[:, None], res.g, rows["g"])
        rows["loc"] = np.where(ok[:, None, None], res.loc, rows["loc"])
        rows = self.noise(res.pred, ok, rows)
        if ok.any():
            var = np.diagonal(cov, axis1=1, axis2=2)[:, :p]
            mu, omega = _m_step(res.g[:, :p], var, ok, floor)
        else:
            mu, omega = state.mu, state.omega
        change = float(
            max(np.max(np.abs(mu - state.mu)), np.max(np.abs(omega - state.omega)))
        )
        new = _State(
            round=state.round + 1,
            done=bool(ok.any()) and change < tol,
            mu=mu,
            omega=omega,
            **{k: v[:m] for k, v in rows.items()},
            iterations=state.iterations + res.iterations[:m],
            history_mu=np.concatenate([state.history_mu, mu[None]]),
            history_omega=np.concatenate([state.history_omega, omega[None]]),
        )
        return new, change, int(m - ok[:m].sum())

    def finish(
        self, state: _State, infos, failures: dict, start_time: float, n_devices: int
    ) -> PopulationResult:
        """The reported fit: every patient's MAP under the final population prior."""
        p, m = self.problem.n_params, self.n_real
        rows = self.rows(state)
        res, cov = self.solve(
            state.mu, state.omega, rows, self.optimiser.max_iter, cov=True
        )
        ok = (np.isfinite(res.cost) & np.asarray(self.problem.real))[:m]
        iterations = state.iterations + res.iterations[:m]
        seconds = time.perf_counter() - start_time
        theta = np.where(ok[:, None], res.g[:m, :p], np.nan)
        var = np.diagonal(cov, axis1=1, axis2=2)[:m, :p]
        theta_sd = np.where(ok[:, None], np.sqrt(np.maximum(var, 0.0)), np.nan)
        failures = dict(failures)
        results = {}
        for i, info in enumerate(infos):
            if not ok[i]:
                failures[info.patient_id] = _SOLVE_FAILED
                continue
            results[info.patient_id] = _fit_result(
                self.problem,
                i,
                info,
                res,
                cov,
                (float(rows["sigma"][i]), float(rows["phi"][i])),
                int(iterations[i]),
                seconds / m,
                mu=state.mu,
                omega=state.omega,
            )
        n_ok = max(int(ok.sum()), 1)
        omega = np.asarray(state.omega)
        ebe_var = np.var(theta[ok], axis=0) if ok.any() else np.full(p, np.nan)
        return PopulationResult(
            estimated=tuple(self.problem.prior.estimated),
            mu=np.asarray(state.mu),
            omega=omega,
            mu_se=omega / np.sqrt(n_ok),
            omega_se=omega / np.sqrt(2.0 * n_ok),
            shrinkage=1.0 - ebe_var / omega**2,
            patient_id=tuple(info.patient_id for info in infos),
            theta=theta,
            theta_sd=theta_sd,
            results=results,
            failures=failures,
            rounds=state.round,
            converged=state.done and state.round > 0,
            history_mu=state.history_mu,
            history_omega=state.history_omega,
            n_devices=n_devices,
            seconds=seconds,
        )


def _warn_cpu_mesh(mesh: jax.sharding.Mesh) -> None:
    """Warn about CPU host-device meshes as large as the machine's core count.

    Seen with jax 0.10.2 on a 2-core machine: with 2 host devices and 4 patients each,
    both threads of XLA's CPU intra-op pool ran a batched LU decomposition (the
    optimiser's step) whose kernel waited for batch partitions queued on the same pool,
    and the program never finished (with 3 devices and 2 patients each it did).
    """
    devices = list(mesh.devices.flat)
    cores = os.cpu_count() or 1
    if all(d.platform == "cpu" for d in devices) and len(devices) >= cores:
        warnings.warn(
            f"fit_population: sharding over {len(devices)} CPU host devices on a "
            f"{cores}-core machine can deadlock in XLA's CPU runtime (batched LAPACK "
            "kernels wait on the shared intra-op thread pool); use fewer devices than "
            "cores",
            RuntimeWarning,
            stacklevel=3,
        )


def _select(mask, a, b):
    """Per patient (leading axis): ``a`` where ``mask``, else ``b``."""
    return jax.tree.map(
        lambda x, y: np.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), a, b
    )


def fit_population(
    patients: Sequence[PatientData],
    *,
    model: FitModel | None = None,
    prior: Prior = Prior(),
    sheet: pd.DataFrame | None = None,
    optimiser: LevenbergMarquardt = LevenbergMarquardt(),
    starts: int = 2,
    key: PRNGKeyArray,
    max_rounds: int = 30,
    tol: float = 1e-3,
    omega_floor: float = 0.02,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    on_round: Callable[[RoundInfo], None] | None = None,
) -> PopulationResult:
    """Fit all patients together: population typical values, variability, and EBEs.

    Empirical Bayes by Laplace-EM (see the module docstring): each round fits every
    patient under the current population prior N(μ, ω²) on the estimated parameters
    (all patients in one vmapped, jit-compiled Levenberg–Marquardt program), then
    updates μ and ω. The first round starts from the single-patient prior
    (``prior.log_sd`` around the model's values): with ``max_rounds=0`` every patient
    gets its independent MAP, as from `fit_patient` (with the CGM error estimated once,
    from the screened starts' residuals).

    Args:
        patients: The patients' records (`isletfit.data.read`).
        model: What is fitted (`FitModel`; default ``FitModel()``).
        prior: Priors (`Prior`): the estimated fields, the starting ω
            (``log_sd``) and the graft, calibration and day-window priors.
        sheet: Patient sheet (`isletfit.data.read_patients`): weight and transplant
            date of each patient.
        optimiser: The optimiser (`LevenbergMarquardt`) of each E-step.
        starts: Starting points per patient in the first round (graft at the prior
            median, then low and high), as in `fit_patient`.
        key: PRNG key (one sub-key per patient for the jitter of its starting points).
        max_rounds: Most EM rounds.
        tol: Stop when no μ or ω changes by more than this in a round [log units].
        omega_floor: Smallest ω [log units] (keeps the prior proper when the data do
            not tell patients apart).
        checkpoint: ``.npz`` file of the state after each ``checkpoint_every`` rounds
            (written atomically), or None.
        checkpoint_every: Rounds between checkpoints.
        resume: Continue from ``checkpoint`` if it exists (it must come from the same
            patients, model and prior); the result equals an uninterrupted run.
        mesh: A `jax.sharding.Mesh` with an axis ``"patients"``: the patients are
            sharded over it (padded with dummy patients to a multiple of its size).
        on_round: Called with a `RoundInfo` after each round (after its checkpoint).

    Returns:
        A `PopulationResult`.

    Raises:
        InputError: No patient's record can be fitted, a bad argument, or a
            checkpoint that does not match.
    """
    start_time = time.perf_counter()
    model = FitModel() if model is None else model
    if max_rounds < 0 or checkpoint_every < 1 or tol < 0 or omega_floor <= 0:
        raise InputError(
            "fit_population: max_rounds >= 0, checkpoint_every >= 1, tol >= 0 and "
            "omega_floor > 0 are required"
        )
    if resume and checkpoint is None:
        raise InputError("fit_population: resume=True needs a checkpoint path")
    if mesh is not None and "patients" not in mesh.shape:
        raise InputError("fit_population: the mesh needs an axis named 'patients'")
    if mesh is not None:
        _warn_cpu_mesh(mesh)

    # prepare every patient on its own: a bad record is reported, the others go on
    failures: dict[str, str] = {}
    prepared, infos = [], []
    for patient in patients:
        try:
            windows, info = prepare_patient(patient, model=model, sheet=sheet)
        except IsletfitError as err:
            failures[patient.patient_id] = str(err)
            continue
        prepared.append(windows)
        infos.append(info)
    if not prepared:
        raise InputError(
            "fit_population: no patient's record can be fitted: "
            + "; ".join(f"{k}: {v}" for k, v in failures.items())
        )
    problem = stack_windows(prepared, model=model, prior=prior)
    n_devices = 1 if mesh is None else int(mesh.shape["patients"])
    engine = _Engine.build(pad_patients(problem, n_devices), optimiser, mesh)
    patient_id = tuple(info.patient_id for info in infos)

    ckpt = None if checkpoint is None else Path(checkpoint)
    if resume and ckpt.exists():
        state = _load_checkpoint(ckpt, engine, patient_id)
    else:
        state = engine.start(key=key, starts=starts)
    while not state.done and state.round < max_rounds:
        t_round = time.perf_counter()
        state, change, n_failed = engine.em_round(state, tol=tol, floor=omega_floor)
        if ckpt is not None and (state.round % checkpoint_every == 0 or state.done):
            _save_checkpoint(ckpt, state, engine, patient_id)
        if on_round is not None:
            on_round(
                RoundInfo(
                    round=state.round,
                    mu=state.mu,
                    omega=state.omega,
                    change=change,
                    n_failed=n_failed,
                    seconds=time.perf_counter() - t_round,
                )
            )
    return engine.finish(state, infos, failures, start_time, n_devices)


def _update_noise(model, pred, obs, use, ok, sigma, phi, weights):
    """Re-estimate each evaluable patient's CGM error (and Student-t weights)."""
    resid = np.asarray(pred) - obs
    s_new, f_new = _estimate_noise_batch(resid, use, weights, model.noise.ar1)
    sigma = np.where(ok, s_new, sigma)
    phi = np.where(ok, f_new, phi)
    if isinstance(model.noise, StudentTNoise):
        nu = model.noise.df
        with np.errstate(all="ignore"):
            z = resid / sigma[:, None, None]
            w_new = (nu + 1.0) / (nu + z**2)
        weights = np.where(ok[:, None, None], w_new, weights)
    return sigma, phi, weights


def _fit_result(
    problem: PopulationProblem,
    i: int,
    info: WindowInfo,
    res: _Solved,
    cov: np.ndarray,
    noise: tuple[float, float],
    iterations: int,
    seconds: float,
    *,
    mu,
    omega,
) -> FitResult:
    """Patient ``i``'s `FitResult` from the stacked solve (as `fit_patient` builds it)."""
    base = problem.objective(i)
    obj = HierarchicalObjective(
        windows=base.windows,
        model=base.model,
        prior=base.prior,
        mu=jnp.asarray(mu),
        omega=jnp.asarray(omega),
    )
    return assemble_result(
        obj,
        info,
        jnp.asarray(res.g[i]),
        cov[i],
        pred=np.asarray(res.pred[i]),
        ok=np.asarray(res.ok[i]),
        noise=(float(noise[0]), float(noise[1])),
        converged=bool(res.converged[i]),
        iterations=iterations,
        seconds=seconds,
        cost=float(res.cost[i]),
    )
