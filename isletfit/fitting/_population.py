r"""Population fits: every patient at once, with population-level parameters.

The estimated parameters θ_i (log scale) of patient i are drawn from the population,
θ_i ~ N(μ, diag ω²); μ (typical values) and ω (between-patient SDs) are estimated from
all patients by empirical Bayes, with a Laplace approximation of each patient's
posterior (Laplace-EM, as in the first-order conditional estimation methods of
population pharmacokinetics):

- **E-step.** Every patient's maximum a posteriori (empirical Bayes estimate, EBE)
  under the prior N(μ, ω²) on θ_i, with the usual priors on the graft trajectory,
  sensor calibration and day-window effects — the single-patient objective of
  `fit_patient` with the prior on θ recentred. The patients stream through the lanes
  of one jit-compiled, vmapped Levenberg–Marquardt program (`HierarchicalObjective`
  holds μ and ω as arrays, so one compilation serves every call and round); a lane
  whose patient has converged takes the next waiting one, so a call does not wait
  for its slowest patient. The Laplace covariance Σ_i comes from the same
  Gauss–Newton blocks.
- **M-step.** μ = mean_i θ̂_i and ω² = mean_i [(θ̂_i − μ)² + diag Σ_i] (floored), over
  the patients whose fit could be evaluated.

The rounds stop when every μ, β and ω changes by less than ``tol`` or than ``tol_se``
of its standard error (the E-steps' numerical noise sets a floor under the change per
round, so an absolute tolerance alone is met by chance); a last E-step under the final
(μ, ω) gives the reported per-patient estimates. The CGM error SD and AR(1)
coefficient of each patient are re-estimated after every E-step in which its solve
settled, as `fit_patient` does after its screening; from its second re-estimate on,
the update is a secant step towards the fixed point of the re-estimate
(`_secant_noise`), which the plain re-estimate approaches only linearly. A solve cut
short keeps its CGM error unless its residuals re-estimate it far off
(`_Engine.renoise_cut`). Where each round runs is the ``em`` strategy's choice:
`PlainEM` (at the last M-step's result), `SquaremEM` (SQUAREM extrapolation) or
`LinearisedEM` (the EM's fixed point on the patients' quadratic models; see
``isletfit/fitting/_em.py``). With ``e_step_iterations`` the E-steps are incomplete
(each solve runs a few iterations per round and goes on in the next, from the
Gauss–Newton blocks where it stopped, `_Carried`; Neal and Hinton 1998) until the
population has settled; then the solves run to their end. With
``covariates`` each patient's prior centre is μ + β·log(x_i/x̃) and the M-step
regresses the EBEs on the covariates (``isletfit/fitting/_covariates.py``).

**Memory.** The patients' arrays are stacked on the host (numpy); an E-step moves
``chunk_size`` patients (lanes) at a time to the devices and brings back only what
the M-step, the noise update and the warm starts need, so the devices never hold the
Jacobians or predictions of the whole population, and the host only the blocks of
cut solves, when they fit in `_CARRY_BYTES`.

A patient whose record cannot be prepared, or whose model cannot be evaluated (a
non-finite cost), is reported in `PopulationResult.failures` and left out of the
M-step; the others go on. With a device ``mesh`` the lanes are sharded across
devices. With a ``checkpoint`` the state after each round is saved
(``.npz``, written atomically; the EM strategy's state included) and ``resume=True``
continues from it; the result equals an uninterrupted run.

References:
    - Lindstrom MJ, Bates DM. Nonlinear mixed effects models for repeated measures
      data. Biometrics 46:673–687, 1990.
    - Walker S. An EM algorithm for nonlinear random effects models. Biometrics
      52:934–944, 1996.
    - Savic RM, Karlsson MO. Importance of shrinkage in empirical Bayes estimates for
      diagnostics. AAPS J 11:558–569, 2009 (η-shrinkage).
    - Varadhan R, Roland C. Simple and globally convergent methods for accelerating
      the convergence of any EM algorithm. Scand J Stat 35:335–353, 2008 (SQUAREM).
    - Neal RM, Hinton GE. A view of the EM algorithm that justifies incremental,
      sparse, and other variants. In: Jordan MI (ed.), Learning in Graphical Models,
      Kluwer, 1998, pp. 355–368 (partial E-steps).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
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
from ._covariates import (
    Covariate,
    coefficient_standard_errors,
    covariate_values,
    free_coefficients,
    regression_m_step,
)
from ._distributed import (
    auto_axes,
    gather_to_host,
    is_main_process,
    place_on,
    same_in_every_process,
    spans_processes,
)
from ._em import (
    LinearisedEM,
    LinearisedEMState,
    PlainEM,
    PlainEMState,
    SquaremEM,
    SquaremState,
)
from ._fit import (
    _Z95,
    FitResult,
    _estimate_noise_batch,
    _linearise,
    assemble_result,
    band_covariance,
)
from ._lm import Blocks, LevenbergMarquardt, schur_covariance
from ._problem import Objective, WindowInfo
from ._stacking import (
    PopulationProblem,
    prepare_patient,
    stack_windows_host,
)
from ._standard_errors import population_standard_errors
from ._surrogate import Surrogate, quadratic_e_step, rest_step, surrogates
from ._visits import visit_blocks

__all__ = [
    "HierarchicalObjective",
    "PopulationResult",
    "RoundInfo",
    "fit_population",
]

_CHECKPOINT_VERSION = 4


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
    scores: Array  # the windows' data scores (for the robust band)
    iterations: Array
    converged: Array
    stopped: Array
    damping: Array


def _solve_block(
    windows, model, prior, centre, omega, optimiser, g0, l0, sigma, phi, weights, lanes
) -> _Solved:
    """Levenberg–Marquardt for a block of patients (vmapped over the patient axis).

    ``centre`` is each patient's prior centre of θ (μ, moved by its covariates);
    ``lanes`` is ``(max_iter, damping, carried, blocks, pred, ok)`` of each patient:
    its iteration budget in this call (0 for an idle lane), its starting λ, and
    whether it continues a solve, with the blocks and predictions of the point it
    stopped at (`LevenbergMarquardt`'s ``start``: that point is not linearised again).
    ``(max_iter, damping)`` alone starts every solve afresh.
    """

    def one(win, mu, g, loc, s, f, wt, lane):
        obj = HierarchicalObjective(
            windows=win, model=model, prior=prior, mu=mu, omega=omega
        )
        start, carried = None, False  # a fresh solve
        if len(lane) > 2:  # may continue a cut solve
            carried, blocks, pred, ok = lane[2:]
            scores = jnp.zeros((win.ts.shape[0], g.shape[0]), g.dtype)  # not used
            start = (blocks, (pred, ok, scores))
        res = optimiser(
            lambda gg, ll: _linearise(obj, gg, ll, (s, f), wt),
            g,
            loc,
            max_iter=lane[0],
            damping=lane[1],
            start=start,
            carried=carried,
        )
        pred, ok = res.aux[0], res.aux[1]  # predicted CGM, solver success
        return _Solved(
            g=res.g,
            loc=res.loc,
            cost=res.blocks.cost,
            pred=pred,
            ok=ok,
            blocks=res.blocks,
            scores=res.aux[2],
            iterations=res.iterations,
            converged=res.converged,
            stopped=res.stopped,
            damping=res.damping,
        )

    return eqx.filter_vmap(one)(windows, centre, g0, l0, sigma, phi, weights, lanes)


@eqx.filter_jit
def _solve_all(
    windows,
    model,
    prior,
    centre,
    omega,
    optimiser,
    g0,
    l0,
    sigma,
    phi,
    weights,
    lanes,
    mesh: jax.sharding.Mesh | None,
) -> _Solved:
    """All lanes' E-step in one program; with a mesh, each device fits its shard.

    With a mesh the vmapped solver runs under `jax.shard_map`: every device iterates
    on its own patients until they have all converged, with no communication between
    devices (patients are independent given μ and ω), where compiler-partitioned
    vmapping would synchronise every iteration of every solver loop across devices.
    """
    args = (windows, centre, g0, l0, sigma, phi, weights, lanes)
    if mesh is None:
        return _solve_block(args[0], model, prior, centre, omega, optimiser, *args[2:])
    model_dyn, model_static = eqx.partition(model, eqx.is_array)

    def block(windows, centre, g0, l0, sigma, phi, weights, lanes, omega, model_dyn):
        return _solve_block(
            windows,
            eqx.combine(model_dyn, model_static),
            prior,
            centre,
            omega,
            optimiser,
            g0,
            l0,
            sigma,
            phi,
            weights,
            lanes,
        )

    spec, rep = jax.sharding.PartitionSpec("patients"), jax.sharding.PartitionSpec()
    return jax.shard_map(
        block,
        mesh=mesh,
        in_specs=(spec,) * 8 + (rep,) * 2,
        out_specs=spec,
        check_vma=False,
    )(*args, omega, model_dyn)


@eqx.filter_jit
def _bands(
    windows, model, prior, centre, omega, g, blocks: Blocks, scores, want
) -> Array:
    """Each lane's band covariance under its population prior, where ``want``ed.

    `band_covariance` for the lanes ``want`` (bool), zeros for the others.

    One program for all lanes instead of one call per patient, which on a GPU took
    longer than the final E-step itself for 1,000 patients. The lanes are mapped in a
    loop (`jax.lax.map`), not vmapped: the vmapped eigen-decompositions deadlocked
    XLA's CPU runtime with 32 lanes on 2 cores (jax 0.11); in the loop a lane not
    wanted (its solve goes on in the next call) is skipped by a real branch.
    """

    def one(args):
        win, mu, gg, b, sc, w = args
        obj = HierarchicalObjective(
            windows=win, model=model, prior=prior, mu=mu, omega=omega
        )
        band = lambda: band_covariance(obj, gg, b, sc)  # noqa: E731
        out = jax.eval_shape(band)
        return jax.lax.cond(w, band, lambda: jnp.zeros(out.shape, out.dtype))

    return jax.lax.map(one, (windows, centre, g, blocks, scores, want))


@jax.jit
def _covariances(blocks: Blocks) -> Array:
    """Laplace covariance of every patient's g from its Gauss–Newton blocks.

    Computed apart from the (possibly sharded) solve, on one device where the mesh
    splits a CPU (`_Engine._one_device`): with the covariance inside the
    `jax.shard_map`, the program deadlocked on two or more CPU host devices with two
    patients per device (jax 0.10.2; the batched eigen-solver of `pinv` after the
    solver loop), and it is cheap.
    """
    return jax.vmap(schur_covariance)(blocks)


# ------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class RoundInfo:
    """Progress of `fit_population`, passed to ``on_round`` after each round.

    Attributes:
        round: Rounds done (1 after the first).
        mu: Typical values μ after the round's M-step (log scale).
        omega: Between-patient SDs ω after the round's M-step (log scale).
        change: Largest change of μ, β or ω in the round [log units].
        n_failed: Patients left out of the M-step (model not evaluable).
        seconds: Wall time of the round [s].
        e_steps: E-steps (vmapped solves of every patient) so far, the screening of
            starting points included.
        extrapolated: Whether the round ran at an extrapolated point (`SquaremEM`).
        cut: Patients whose solve ran out of the round's iterations
            (``e_step_iterations``, else the optimiser's ``max_iter``); with
            ``e_step_iterations`` they go on in the next round, and the fit does not
            stop while any was cut.
        change_se: Largest change of μ, β or ω in units of its standard error (NaN
            where the round computes none).
        complete: Whether the round's E-step ran every solve to its end (complete
            E-steps, or incomplete ones after the population had settled).
    """

    round: int
    mu: np.ndarray
    omega: np.ndarray
    change: float
    n_failed: int
    seconds: float
    e_steps: int = 0
    extrapolated: bool = False
    cut: int = 0
    change_se: float = float("nan")
    complete: bool = False


@dataclasses.dataclass(frozen=True)
class PopulationResult:
    """The population fit (host-side numpy; see `parameters`, `graft_trajectory`).

    Attributes:
        estimated: Names of the estimated `Params` fields.
        mu: Typical values μ: mean of log(field) over the population (with
            covariates: of a patient at the cohort's median covariates).
        omega: Between-patient SDs ω of log(field) (with covariates: around each
            patient's centre, `centres`).
        mu_se: Standard error of μ from the Fisher information of the linearised
            (first-order conditional) model: each patient's data precision
            C_i⁻¹ − Ω⁻¹ from its Laplace covariance C_i (`population_standard_errors`).
        omega_se: Standard error of ω from the same model's Fisher information
            (delta method from ω²).
        shrinkage: η-shrinkage of each parameter, 1 − var_i(η̂_i)/ω², η̂_i = θ̂_i −
            centre_i (0: the data
            determine each patient's value; 1: every patient sits at μ).
        patient_id: Patients whose record could be prepared (fitted or failed in the
            fit), in input order.
        theta: EBEs of log(field) per patient ``[n, p]`` (NaN where the fit failed).
        theta_sd: Laplace posterior SD of theta ``[n, p]``.
        theta_cov: Laplace posterior covariance of theta ``[n, p, p]`` (NaN where
            the fit failed): what the standard errors and the M-step use. The
            `results`' covariances (bands) are `fit_patient`'s, widened where the
            day-windows scatter more than the noise model says
            (``FitModel.robust_band``).
        results: Patient id -> `FitResult` (MAP under the population prior) of each
            patient fitted.
        failures: Patient id -> why it is not fitted (bad record, model not
            evaluable).
        rounds: EM rounds done.
        converged: Whether μ, β and ω settled (``tol``, ``tol_se``) in a round in
            which every patient's solve ended by its own stopping rule.
        history_mu: μ after each round ``[rounds, p]``.
        history_omega: ω after each round ``[rounds, p]``.
        n_devices: Devices the patients were sharded over.
        seconds: Wall time of the fit [s].
        model: The fit's model configuration (for simulations such as
            `visual_predictive_check`), or None.
        prior: The fit's priors, or None.
        e_steps: E-steps (vmapped solves of every patient): screening, rounds and
            the final one.
        extrapolations: Extrapolated EM steps accepted (`SquaremEM`; 0 for
            `PlainEM`).
        chunk_size: Lanes of the E-steps' solver (patients per device call).
        covariates: The `Covariate` s on the typical values (empty: none).
        covariate_reference: Each covariate's cohort median x̃ ``[q]``.
        covariate_values: Each patient's centred log covariates log(x/x̃) ``[n, q]``.
        beta: Covariate coefficients ``[p, q]``: log(field) moves by
            β·log(x/x̃) (0 where a covariate does not act).
        beta_se: Their standard errors ``[p, q]`` (NaN where not estimated).
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
    model: FitModel | None = None
    prior: Prior | None = None
    e_steps: int = 0
    extrapolations: int = 0
    chunk_size: int = 0
    covariates: tuple[Covariate, ...] = ()
    covariate_reference: np.ndarray | None = None
    covariate_values: np.ndarray | None = None
    beta: np.ndarray | None = None
    beta_se: np.ndarray | None = None
    theta_cov: np.ndarray | None = None

    def centres(self) -> np.ndarray:
        """Each patient's typical log(field), μ + β·log(x_i/x̃) ``[n, p]``."""
        n, p = len(self.patient_id), len(self.estimated)
        if not self.covariates:
            return np.broadcast_to(np.asarray(self.mu), (n, p)).copy()
        return self.mu + self.covariate_values @ self.beta.T

    def covariate_effects(self) -> pd.DataFrame:
        """The estimated covariate effects, one row per (parameter, covariate).

        Returns:
            Columns ``name, covariate, reference`` (the cohort median x̃), ``beta,
            beta_se, lower, upper`` (95 % interval of β), ``factor_per_doubling``
            (2^β: how the field changes when the covariate doubles), ``z`` (β/SE);
            empty without covariates.
        """
        rows = []
        for k, cov in enumerate(self.covariates):
            for j, name in enumerate(self.estimated):
                se = self.beta_se[j, k]
                if np.isnan(se):  # not estimated (or no patient fitted)
                    continue
                b = float(self.beta[j, k])
                rows.append(
                    {
                        "name": name,
                        "covariate": cov.column,
                        "reference": float(self.covariate_reference[k]),
                        "beta": b,
                        "beta_se": float(se),
                        "lower": b - _Z95 * float(se),
                        "upper": b + _Z95 * float(se),
                        "factor_per_doubling": float(2.0**b),
                        "z": b / float(se),
                    }
                )
        columns = [
            "name",
            "covariate",
            "reference",
            "beta",
            "beta_se",
            "lower",
            "upper",
            "factor_per_doubling",
            "z",
        ]
        return pd.DataFrame(rows, columns=columns)

    def parameters(self) -> pd.DataFrame:
        """Population parameter table, one row per estimated field.

        Standard errors come from the Fisher information of the linearised
        (first-order conditional) normal-normal model built from each patient's Laplace
        covariance (`population_standard_errors`; Lavielle 2014, ch. 9). η-shrinkage
        is given both on the variance scale, 1 − var(θ̂_i)/ω² (Lavielle 2014; Monolix),
        and on the SD scale, 1 − SD(θ̂_i)/ω (Savic & Karlsson 2009; NONMEM).

        Returns:
            Columns ``name, unit, typical_value, lower, upper`` (typical value
            exp(μ) with its 95 % interval from ``mu_se``), ``rse_percent`` (relative SE
            of the typical value, 100·SE(μ) by the delta method), ``mu, mu_se, omega,
            omega_se, omega_rse_percent`` (100·SE(ω)/ω), ``cv_percent``
            (between-patient coefficient of variation √(exp(ω²) − 1)), ``shrinkage``
            (variance scale, fraction), ``shrinkage_percent``,
            ``shrinkage_sd_percent`` (SD scale), ``n_patients``.
        """
        units = {r["name"]: r["unit"] for r in param_info()}
        n = len(self.results)
        eta = self.theta - self.centres()  # the random effects
        fitted = eta[np.all(np.isfinite(eta), axis=1)]
        ebe_sd = (
            fitted.std(axis=0) if len(fitted) else np.full(len(self.estimated), np.nan)
        )
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
                    "rse_percent": float(100.0 * se),
                    "mu": float(mu),
                    "mu_se": float(se),
                    "omega": float(om),
                    "omega_se": float(self.omega_se[k]),
                    "omega_rse_percent": float(100.0 * self.omega_se[k] / om),
                    "cv_percent": float(100.0 * np.sqrt(np.expm1(om**2))),
                    "shrinkage": float(self.shrinkage[k]),
                    "shrinkage_percent": float(100.0 * self.shrinkage[k]),
                    "shrinkage_sd_percent": float(100.0 * (1.0 - ebe_sd[k] / om)),
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
            "e_steps": self.e_steps,
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
            "covariate_effects": self.covariate_effects().to_dict(orient="records"),
        }


# ---------------------------------------------------------------------- checkpoints
@dataclasses.dataclass
class _State:
    """Host-side state between rounds (what a checkpoint holds), real patients only."""

    round: int
    done: bool
    mu: np.ndarray  # the last M-step's result (the estimate)
    omega: np.ndarray
    em: (
        PlainEMState | SquaremState | LinearisedEMState
    )  # where the next round runs (the strategy's)
    e_steps: int
    g: np.ndarray
    loc: np.ndarray
    sigma: np.ndarray
    phi: np.ndarray
    weights: np.ndarray | None  # Student-t reading weights; None (ones) otherwise
    # the last re-estimate of each patient's CGM error: (log σ, φ) it was made at and
    # its result [m, 2, 2]; NaN before the first (`_secant_noise`)
    noise_last: np.ndarray
    beta: np.ndarray  # covariate coefficients [p, q] of the last M-step
    iterations: np.ndarray
    damping: np.ndarray  # each patient's LM damping where its last solve stopped
    history_mu: np.ndarray
    history_omega: np.ndarray
    # incomplete E-steps: the population has settled, so each solve runs to its end
    complete: bool = False
    # the blocks where the cut solves stopped (not in the checkpoint: a resumed solve
    # linearises its starting point again, which gives the same blocks)
    carried: _Carried | None = None


@dataclasses.dataclass(frozen=True)
class _Carried:
    """The Gauss–Newton blocks at which each cut solve stopped, to continue it.

    Attributes:
        on: Which real patients' solves are carried ``[m]``.
        blocks: Their blocks ``[m, ...]`` (rows not ``on`` hold nothing of use).
        pred: Their predicted CGM ``[m, W, T]``.
        ok: Their windows' solver success ``[m, W]``.
        centre: The prior centres of θ the blocks were formed under ``[m, p]``.
        omega: The prior SD of θ they were formed under ``[p]``.
    """

    on: np.ndarray
    blocks: Blocks
    pred: np.ndarray
    ok: np.ndarray
    centre: np.ndarray
    omega: np.ndarray

    def under(self, theta, centre, omega) -> _Carried:
        r"""The blocks under another prior N(centre, ω²) on θ (exact).

        The prior on θ is quadratic with residuals r = (θ − c)/ω and Jacobian
        diag(1/ω), so only its terms change: ½‖r‖² in the cost, (θ − c)/ω² in the
        gradient and 1/ω² on the diagonal of H_θθ; the data blocks are the same.

        Args:
            theta: Each patient's θ at its carried point ``[m, p]``.
            centre: The new prior centres ``[m, p]``.
            omega: The new prior SD ``[p]``.
        """
        p = theta.shape[1]
        r_old = (theta - self.centre) / self.omega
        r_new = (theta - centre) / omega
        b = self.blocks
        hgg, bg = b.hgg.copy(), b.bg.copy()
        diag = np.arange(p)
        hgg[:, diag, diag] += 1.0 / omega**2 - 1.0 / self.omega**2
        bg[:, :p] += r_new / omega - r_old / self.omega
        cost = b.cost + 0.5 * np.sum(r_new**2 - r_old**2, axis=1)
        return dataclasses.replace(
            self,
            blocks=b._replace(cost=cost, hgg=hgg, bg=bg),
            centre=np.asarray(centre, float),
            omega=np.asarray(omega, float),
        )


def _state_arrays(state: _State) -> dict[str, np.ndarray]:
    """The state as named arrays (the checkpoint's entries): ``em_*`` for the EM's."""
    out = {}
    for f in dataclasses.fields(_State):
        value = getattr(state, f.name)
        if f.name == "carried":
            continue
        if f.name == "em":
            out.update({f"em_{k}": np.asarray(v) for k, v in value._asdict().items()})
        elif value is not None:
            out[f.name] = np.asarray(value)
    return out


def _fingerprint(engine: _Engine, em) -> str:
    """A digest of the model, prior, optimiser and EM settings, to match a checkpoint."""
    problem = engine.problem
    leaves, treedef = jax.tree.flatten(
        (
            problem.model,
            problem.prior,
            engine.optimiser,
            em,
            engine.e_step_iterations,
            engine.design,
            engine.free,
        )
    )
    text = str(treedef) + repr([np.asarray(x).tolist() for x in leaves])
    return hashlib.sha256(text.encode()).hexdigest()


def _save_checkpoint(path, state: _State, engine: _Engine, patient_id, em) -> None:
    """Write ``state`` to ``path`` atomically (``.npz``, no pickled objects)."""
    estimated = engine.problem.prior.estimated
    arrays = {
        "version": np.asarray(_CHECKPOINT_VERSION),
        "settings": np.asarray(_fingerprint(engine, em)),
        "patient_id": np.asarray(patient_id, dtype=str),
        "estimated": np.asarray(estimated, dtype=str),
        **_state_arrays(state),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write_with(path, write)


def _state_bytes(state: _State) -> bytes:
    """The state's values as bytes (to compare the states of several processes)."""
    return b"".join(
        name.encode() + value.tobytes() for name, value in _state_arrays(state).items()
    )


def _resume(path, engine: _Engine, patient_id, em, *, resume: bool, several: bool):
    """The checkpoint's state to resume from, or None to start afresh.

    With a mesh over several processes every process must find the same state (the
    checkpoint on a file system they share); otherwise all of them stop with an
    `InputError`, decided together so that none is left waiting for the others.
    """
    state, error = None, None
    if resume and path.exists():
        try:
            state = _load_checkpoint(path, engine, patient_id, em)
        except InputError as err:
            if not several:
                raise
            error = err
    if several:
        mine = b"error" if error else b"" if state is None else _state_bytes(state)
        if not same_in_every_process(mine):
            raise error or InputError(
                "fit_population: the processes of a distributed run found different "
                "checkpoints",
                file=path,
                expected="the checkpoint on a file system shared by every process",
            )
    if error is not None:
        raise error
    return state


def _load_checkpoint(path, engine: _Engine, patient_id, em) -> _State:
    """The state saved at ``path``, checked against this fit's patients and shapes."""
    estimated = engine.problem.prior.estimated

    def bad(what):
        return InputError(
            f"checkpoint does not match this population fit: {what}",
            file=path,
            expected="a checkpoint written by fit_population for the same patients, "
            "model, prior, optimiser, EM strategy, e_step_iterations and covariates "
            "(delete it to start afresh)",
        )

    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if int(data.get("version", -1)) != _CHECKPOINT_VERSION:
        raise bad("unknown version")
    if list(data["patient_id"]) != list(patient_id):
        raise bad("different patients")
    if list(data["estimated"]) != list(estimated):
        raise bad("different estimated parameters")
    if str(data.get("settings", "")) != _fingerprint(engine, em):
        raise bad(
            "a different model, prior, optimiser, EM strategy, e_step_iterations "
            "or covariates"
        )
    m, p = engine.n_real, len(estimated)
    rows = engine.initial_rows()
    template = em.init(np.zeros(engine.free.size), np.ones(p))
    expected = {k: (m, *v.shape[1:]) for k, v in rows.items() if v is not None}
    expected.update(mu=(p,), omega=(p,), iterations=(m,), damping=(m,))
    expected.update(beta=(p, engine.free.shape[1] - 1))
    expected.update({f"em_{k}": np.shape(v) for k, v in template._asdict().items()})
    for name, shape in expected.items():
        if name not in data:
            raise bad(f"no {name}")
        if data[name].shape != shape:
            raise bad(f"{name} has shape {data[name].shape}, expected {shape}")
    values = {
        f.name: data.get(f.name)
        for f in dataclasses.fields(_State)
        if f.name not in ("em", "weights", "carried")
    }
    values["round"] = int(values["round"])
    values["complete"] = bool(data.get("complete", False))
    values["done"] = bool(values["done"])
    values["e_steps"] = int(values["e_steps"])
    values["em"] = type(template)(**{k: data[f"em_{k}"] for k in template._fields})
    values["weights"] = data["weights"] if rows["weights"] is not None else None
    return _State(**values)


# -------------------------------------------------------------------------- the fit
def _place(tree, sharding):
    # host data, identical in every process: each places its own devices' shards
    return place_on(tree, sharding)


_SOLVE_FAILED = (
    "the model could not be evaluated (non-finite cost); left out of the population "
    "estimates"
)


#: Lanes per device when ``chunk_size`` is None. On a CPU a lane costs the same in a
#: batch of 4 as of 16 (measured: 64 ms per patient-iteration of 6 day-windows, both),
#: so few lanes waste least while the last patients finish; an accelerator needs
#: wide batches to be busy.
_LANES_PER_DEVICE = {"cpu": 4}
_LANES_PER_ACCELERATOR = 64


def _chunk_size(
    n: int, chunk_size: int | None, n_devices: int, platform: str = "cpu"
) -> int:
    """Lanes (patients per device call).

    ``chunk_size`` (None: `_LANES_PER_DEVICE` per device of the ``platform``) rounded
    up to a multiple of the devices, and at most the patients rounded up likewise.
    """
    whole = -(-n // n_devices) * n_devices
    if chunk_size is None:
        per = _LANES_PER_DEVICE.get(platform, _LANES_PER_ACCELERATOR)
        chunk_size = per * n_devices
    return min(-(-chunk_size // n_devices) * n_devices, whole)


#: Iterations of a patient's solve per call, by platform; an unfinished solve
#: continues in the next call from where it stopped (with its damping and blocks), in
#: whichever lane. A call lasts as long as its busiest lane, so a lane whose solve ends
#: early idles for the rest of the call: on a CPU, where an idle lane costs as much as
#: a busy one and a call's own cost is small, short segments waste less; on an
#: accelerator a call's fixed cost weighs more.
_SEGMENT = {"cpu": 3}
_SEGMENT_ACCELERATOR = 10
#: An E-step's last solves, once no patient waits and at most 1/`_NARROW_RATIO` of
#: the lanes are busy, go on in a program `_NARROW_RATIO` times narrower, where the
#: lanes are at least `_NARROW_FROM` (by platform): a vmapped iteration costs every
#: lane it computes, busy or idle (1,000 patients × 84 day-windows on an H200: 1.6 s
#: per iteration at 1,000 lanes, 0.21 s at 125; 64 patients × 88 on the 2-core CPU:
#: 1.3 s at 8 lanes, all busy or 2), and the narrower program compiles once per fit
#: (≈ 15 s on the H200, ≈ 13 s on the CPU; benchmarks/RESULTS.md).
_NARROW_FROM = {"cpu": 8}
_NARROW_FROM_ACCELERATOR = 32
_NARROW_RATIO = 8
# host memory for the blocks of cut solves carried from one round to the next; above
# it (e.g. 10,000 patients × 84 windows) each round linearises the solves' starts again
_CARRY_BYTES = 2 * 2**30


def _finite(res: _Solved) -> np.ndarray:
    """The lanes of a host-side `_Solved` whose cost and unknowns are finite."""
    return np.isfinite(res.cost) & np.all(np.isfinite(res.g), axis=1)


def _ended(res: _Solved, remaining) -> np.ndarray:
    """The lanes whose solve ended in the call that gave ``res`` (host-side).

    Stopped by its own rule, out of iterations (``remaining`` before the call) or not
    finite; the others go on in the next call.
    """
    return res.stopped | (res.iterations >= remaining) | ~_finite(res)


def _rows_at(rows: dict, ids) -> dict:
    """The rows ``ids`` of each per-patient array (None stays None)."""
    return {k: None if v is None else v[ids] for k, v in rows.items()}


def _set_rows(target, at, source) -> None:
    """Write ``source`` into the rows ``at`` of ``target`` (same pytree; in place)."""
    leaves = zip(jax.tree.leaves(target), jax.tree.leaves(source), strict=True)
    for mine, theirs in leaves:
        mine[at] = theirs


def _lanes_at(tree, lanes):
    """Rows ``lanes`` of every array of a host-side pytree."""
    return jax.tree.map(lambda x: x[lanes], tree)


@dataclasses.dataclass(frozen=True, eq=False)
class _Engine:
    """What stays fixed over the rounds of one population fit (host side).

    The stacked windows stay on the host (numpy). An E-step streams the patients
    through ``chunk`` *lanes* of one compiled, vmapped solver (sharded over the mesh):
    each call runs every busy lane for at most `_SEGMENT` iterations, and a lane whose
    patient is done is given the next waiting patient (continuous batching). A vmapped
    loop computes every lane until its slowest one is done, so without the hand-over a
    whole chunk would wait for its slowest patient; with it the E-step costs about the
    patients' *mean* iterations, not their maximum. When no patient waits any more,
    the few solves still running move to a narrower program (`narrow`), so that the
    E-step's slowest patients do not keep every lane of a wide one busy. Device memory
    holds one call's lanes (their Jacobians), whatever the population size.
    Per-patient state lives in `_State` (real patients only).
    """

    problem: PopulationProblem  # host-side, the real patients
    optimiser: LevenbergMarquardt
    n_real: int
    chunk: int
    mesh: jax.sharding.Mesh | None  # automatic axis types, or None
    e_step_iterations: int | None  # a round's iterations per patient (None: all)
    platform: str  # the devices' ("cpu", "gpu", …): `_SEGMENT`, `_NARROW_FROM`
    design: np.ndarray  # [n_real, 1 + q]: ones, then the centred log covariates
    free: np.ndarray  # [p, 1 + q]: the estimated coefficients (μ, then each β)
    g0: np.ndarray  # starting global unknowns of every stacked patient [N, ng]
    loc0: np.ndarray  # starting local unknowns of a patient [W, nl]
    placed: dict  # the windows of the last call's lanes, on the devices

    @classmethod
    def build(
        cls,
        problem: PopulationProblem,
        optimiser,
        mesh,
        chunk: int,
        e_step_iterations: int | None = None,
        covariates: np.ndarray | None = None,
        free: np.ndarray | None = None,
        platform: str = "cpu",
    ) -> _Engine:
        auto = None if mesh is None else auto_axes(mesh)
        win = problem.windows
        obj0 = problem.objective(0)
        n, p = problem.n_patients, problem.n_params
        n_real = int(np.asarray(problem.real).sum())
        if covariates is None:
            covariates = np.zeros((n_real, 0))
        if free is None:
            free = np.ones((p, 1), bool)
        mu0 = np.asarray(obj0.prior_centre())
        loc0 = np.zeros((win.ts.shape[1], obj0.n_local), mu0.dtype)
        if isinstance(problem.model.meals, LatentMeals):
            loc0[:, obj0.meal_start :] = np.log(problem.model.meals.init_g)
        knots = np.where(
            np.asarray(win.knot_valid), np.log(problem.prior.graft_median), 0.0
        )
        g0 = np.concatenate(
            [
                np.broadcast_to(mu0, (n, p)),
                knots,
                np.zeros((n, 2 * problem.n_sessions)),
            ],
            axis=1,
        ).astype(mu0.dtype)
        return cls(
            problem=problem,
            optimiser=optimiser,
            n_real=n_real,
            chunk=chunk,
            mesh=auto,
            e_step_iterations=e_step_iterations,
            platform=platform,
            design=np.concatenate([np.ones((n_real, 1)), covariates], axis=1),
            free=np.asarray(free, bool),
            g0=g0,
            loc0=loc0,
            placed={},
        )

    def _sharding(self, *axes: str):
        """Sharding of the patient axis (``"patients"``) or replication (no axis)."""
        if self.mesh is None:
            return None
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*axes))

    @staticmethod
    def _put(tree, sharding):
        """Host arrays onto the devices: ``sharding``, or the default device."""
        if sharding is None:
            return jax.tree.map(jnp.asarray, tree)
        return _place(tree, sharding)

    def _one_device(self, tree):
        """``tree`` on one device where the mesh splits this process's CPU.

        The Laplace covariances, band covariances and quadratic models end in
        batched LAPACK kernels (eigen-decompositions). With several host devices in
        one process, such kernels of the devices' programs have deadlocked XLA's
        shared CPU thread pool (jax 0.10.2 on 2 cores); on one device they run
        alone. The solver loop itself has no LAPACK call (`_lm._spd_solve`).
        Elsewhere (no mesh, accelerators, one CPU device per process) ``tree`` is
        returned as it is.
        """
        if self.mesh is None or spans_processes(self.mesh):
            return tree
        devices = list(self.mesh.devices.flat)
        if len(devices) < 2 or any(d.platform != "cpu" for d in devices):
            return tree
        return jax.device_put(tree, devices[0])

    def split(self, point) -> tuple[np.ndarray, np.ndarray]:
        """``(coef [p, 1 + q], omega [p])`` of an EM point (μ is ``coef[:, 0]``)."""
        point = np.asarray(point, float)
        p = self.free.shape[0]
        return point[:-p].reshape(self.free.shape), point[-p:]

    def centres(self, mu, beta) -> np.ndarray:
        """Each real patient's prior centre of θ, μ + β·c_i ``[n_real, p]``."""
        coef = np.concatenate([np.asarray(mu)[:, None], np.asarray(beta)], axis=1)
        return self.design @ coef.T

    @property
    def student_t(self) -> bool:
        """Whether the CGM error is Student-t (per-reading weights are state)."""
        return isinstance(self.problem.model.noise, StudentTNoise)

    def use(self, ids) -> np.ndarray:
        """Exact readings that count, of the stacked patients ``ids`` [n, W, T]."""
        win = self.problem.windows
        return win.mask[ids] & (win.censor[ids] == 0) & win.valid[ids][:, :, None]

    def initial_rows(self) -> dict:
        """Starting per-patient arrays of the real patients (fresh copies)."""
        m, win = self.n_real, self.problem.windows
        return {
            "g": self.g0[:m].copy(),
            "loc": np.broadcast_to(self.loc0, (m, *self.loc0.shape)).copy(),
            "sigma": np.full(m, 10.0),
            "phi": np.zeros(m),
            "weights": np.ones((m, *win.obs.shape[1:]), win.obs.dtype)
            if self.student_t
            else None,
            "noise_last": np.full((m, 2, 2), np.nan),
        }

    def _call(
        self,
        centre,
        omega,
        ids,
        start: dict,
        budget,
        damping,
        carry,
        *,
        cov,
        surrogate,
        band=False,
        remaining=None,
    ):
        """One call of the compiled solver on the lanes' patients ``ids``.

        ``centre`` holds the lanes' prior centres of θ ``[lanes, p]``; ``carry`` is
        ``(carried, blocks, pred, ok)``: which lanes continue their patient's solve,
        with the blocks and predictions where it stopped. With ``band``, the band
        covariances are formed only for the busy lanes whose solve ends in this call
        (`_ended`, with each lane's ``remaining`` iterations; zeros for the others).

        Returns:
            Host-side `_Solved`, Laplace covariances (or None), the arrays of the
            quadratic models (`surrogates`, or None) and the band covariances
            (`band_covariance`, or None), one row per lane.
        """
        shard, rep = self._sharding("patients"), self._sharding()
        key = tuple(int(i) for i in ids)
        if self.placed.get("ids") != key:  # new patients in the lanes
            windows = jax.tree.map(lambda x: x[ids], self.problem.windows)
            self.placed.clear()
            self.placed.update(ids=key, windows=self._put(windows, shard))
        weights = start["weights"]
        if weights is None:
            weights = np.ones((len(ids), *self.problem.windows.obs.shape[1:]))
        dtype = start["g"].dtype
        args = (
            np.asarray(centre, dtype),
            start["g"],
            start["loc"],
            start["sigma"],
            start["phi"],
            weights,
            (np.asarray(budget), np.asarray(damping, dtype), *carry),
        )
        centre, *args = self._put(args, shard)
        omega = _place(jnp.asarray(omega), rep)
        res = _solve_all(
            self.placed["windows"],
            self.problem.model,
            self.problem.prior,
            centre,
            omega,
            self.optimiser,
            *args,
            self.mesh,
        )
        # with a mesh over several processes, every process gathers all patients
        # the blocks go to one device only for the calls that use them after the loop
        blocks = self._one_device(res.blocks) if cov or surrogate or band else None
        covariance = gather_to_host(_covariances(blocks)) if cov else None
        quadratic = None
        if surrogate:
            quadratic = gather_to_host(
                surrogates(blocks, *self._one_device((res.g, centre, omega)))
            )
        bands = None
        if band and not self.problem.model.robust_band:
            bands = covariance  # the band is the Laplace covariance
        host = gather_to_host(res)
        if band and self.problem.model.robust_band:
            ending = _ended(host, remaining) & (np.asarray(budget) > 0)
            windows, centre, omega, g, scores = self._one_device(
                (self.placed["windows"], centre, omega, res.g, res.scores)
            )
            bands = _bands(
                windows,
                self.problem.model,
                self.problem.prior,
                centre,
                omega,
                g,
                blocks,
                scores,
                self._one_device(jnp.asarray(ending)),
            )
            bands = gather_to_host(bands)
        return host, covariance, quadratic, bands

    def e_step(
        self,
        mu,
        omega,
        rows: dict,
        max_iter: int,
        on_done: Callable,
        *,
        damping: np.ndarray | None = None,
        carried: _Carried | None = None,
        cov: bool = False,
        surrogate: bool = False,
        band: bool = False,
        order: np.ndarray | None = None,
    ) -> None:
        """Every real patient's MAP under N(``mu``, ``omega``²), lanes handed over.

        A solve runs in segments of at most `_SEGMENT` iterations; a lane that goes on
        with its patient in the next call brings the Gauss–Newton blocks of the point
        it stopped at, so that point is not linearised again (`LevenbergMarquardt`'s
        ``start``). A patient ``on`` in ``carried`` starts that way too.

        Args:
            mu: Prior centre of θ ``[p]``, or each real patient's ``[n_real, p]``.
            omega: Prior SD of θ.
            rows: Starting rows of the real patients (``g, loc, sigma, phi,
                weights``; weights None for ones); read, never written.
            max_iter: Optimiser iterations per patient.
            on_done: Called as ``on_done(ids, res, cov, quadratic, iterations)`` for
                the patients ``ids`` whose solve ended in a call, with their rows of
                the host-side `_Solved`, covariances and quadratic models (or None)
                and their iterations in this E-step.
            damping: Each real patient's starting LM damping (default the
                optimiser's ``lambda0``), e.g. where its last solve stopped.
            carried: The blocks at the starting points of the patients whose solves
                go on (formed under ``mu`` and ``omega``), or None.
            cov: Also compute the Laplace covariances.
            surrogate: Also compute the quadratic models in θ (`surrogates`).
            band: Also compute the band covariances (`band_covariance`), passed to
                ``on_done`` as ``band=``.
            order: The real patients in the order their solves start (default
                0, 1, …); a patient's result does not depend on it.
        """
        m, c = self.n_real, self.chunk
        centre = np.broadcast_to(np.asarray(mu, float), (m, self.problem.n_params))
        g, loc = rows["g"].copy(), rows["loc"].copy()
        used = np.zeros(m, int)
        if damping is None:
            damping = np.full(m, self.optimiser.lambda0)
        else:
            damping = np.array(damping, dtype=float)
        segment = _SEGMENT.get(self.platform, _SEGMENT_ACCELERATOR)
        if order is None:
            order = np.arange(m)
        waiting = [int(i) for i in np.asarray(order)[::-1]]  # order[0] first
        lane = np.full(c, -1)  # each lane's patient, -1 when idle
        ids = np.zeros(c, int)  # the patient whose data each lane holds
        # a lane that continues a solve brings the blocks and predictions of its point
        carry = self.no_carry(c)
        while True:
            for k in np.flatnonzero(lane < 0):
                if not waiting:
                    break
                i = lane[k] = ids[k] = waiting.pop()
                carry[0][k] = carried is not None and carried.on[i]
                if carry[0][k]:
                    _set_rows(
                        carry[1:],
                        k,
                        _lanes_at((carried.blocks, carried.pred, carried.ok), i),
                    )
            busy = np.flatnonzero(lane >= 0)
            if busy.size == 0:
                return
            if not waiting and c == self.chunk and busy.size <= self.narrow(c) < c:
                # the last solves: the busy lanes, with what they carry, move to a
                # narrower program (idle lanes pad it; their data are not used) —
                # once: a program of yet another width would cost its compilation
                # (15 s on a GPU) for calls that take about 2 s there
                c = self.narrow(c)
                kept = np.concatenate([busy, np.flatnonzero(lane < 0)])[:c]
                lane, ids = lane[kept], ids[kept]
                carry = _lanes_at(carry, kept)
                busy = np.flatnonzero(lane >= 0)
            # every solve runs in segments, lanes handed over or not, so that a
            # patient's result does not depend on the lanes and the other patients
            budget = np.where(lane >= 0, np.minimum(max_iter - used[ids], segment), 0)
            start = _rows_at(rows, ids)
            res, cv, quad, bands = self._call(
                centre[ids],
                omega,
                ids,
                {**start, "g": g[ids], "loc": loc[ids]},
                budget,
                damping[ids],
                carry,
                cov=cov,
                surrogate=surrogate,
                band=band,
                remaining=max_iter - used[ids],
            )
            # writable copies: lanes given new patients are overwritten
            carry = (lane >= 0, *jax.tree.map(np.array, (res.blocks, res.pred, res.ok)))
            who = lane[busy]
            ended = _ended(res, max_iter - used[ids])[busy]
            fine = _finite(res)[busy]
            g[who] = np.where(fine[:, None], res.g[busy], g[who])
            loc[who] = np.where(fine[:, None, None], res.loc[busy], loc[who])
            used[who] += res.iterations[busy]
            damping[who] = res.damping[busy]
            lanes = busy[ended]
            if lanes.size:
                on_done(
                    lane[lanes],
                    _lanes_at(res, lanes),
                    None if cv is None else cv[lanes],
                    None if quad is None else _lanes_at(quad, lanes),
                    used[lane[lanes]],
                    **({} if bands is None else {"band": bands[lanes]}),
                )
                lane[lanes] = -1
                carry[0][lanes] = False

    def narrow(self, lanes: int) -> int:
        """Width of the program an E-step's last solves move to (``lanes``: none).

        `_NARROW_RATIO` times fewer lanes, rounded up to a multiple of the devices
        as the lanes themselves are (`_chunk_size`), from `_NARROW_FROM` lanes on.
        """
        if lanes < _NARROW_FROM.get(self.platform, _NARROW_FROM_ACCELERATOR):
            return lanes
        n_dev = 1 if self.mesh is None else int(self.mesh.shape["patients"])
        return _chunk_size(lanes, -(-lanes // _NARROW_RATIO), n_dev)

    def no_carry(self, n: int) -> tuple:
        """``(on, blocks, pred, ok)`` of ``n`` solves that carry nothing (zeros)."""
        ng = self.g0.shape[1]
        n_windows, n_times = self.problem.windows.obs.shape[1:]
        nl = self.loc0.shape[1]
        dtype = self.g0.dtype
        blocks = Blocks(
            cost=np.zeros(n, dtype),
            hgg=np.zeros((n, ng, ng), dtype),
            bg=np.zeros((n, ng), dtype),
            hll=np.zeros((n, n_windows, nl, nl), dtype),
            hgl=np.zeros((n, n_windows, ng, nl), dtype),
            bl=np.zeros((n, n_windows, nl), dtype),
        )
        pred = np.zeros((n, n_windows, n_times), dtype)
        return np.zeros(n, bool), blocks, pred, np.zeros((n, n_windows), bool)

    def carry_fits(self) -> bool:
        """Whether every real patient's carried blocks fit in `_CARRY_BYTES`."""
        one = sum(x.nbytes for x in jax.tree.leaves(self.no_carry(1)))
        return self.n_real * one <= _CARRY_BYTES

    def noise(self, pred, ok, rows: dict, ids, *, secant: bool = True) -> dict:
        """``rows`` (of the patients ``ids``) with the CGM error re-estimated.

        With ``secant`` the re-estimate is remembered and, from a patient's second
        on, accelerated (`_secant_noise`); without, it is the plain re-estimate and
        nothing is remembered (for estimates from solves cut short).
        """
        sigma, phi, weights, last = _update_noise(
            self.problem.model,
            pred,
            self.problem.windows.obs[ids],
            self.use(ids),
            ok,
            rows["sigma"],
            rows["phi"],
            rows["weights"],
            rows["noise_last"] if secant else None,
        )
        new = {**rows, "sigma": sigma, "phi": phi, "weights": weights}
        if secant:
            new["noise_last"] = last
        return new

    @staticmethod
    def _store(rows: dict, new_rows: dict, ids) -> None:
        """Write the patients ``ids``'s rows into the population's rows (in place)."""
        for name, value in new_rows.items():
            if value is not None:
                rows[name][ids] = value

    def _keep(
        self, rows: dict, ids, res: _Solved, ok, renoise=None, secant: bool = True
    ) -> None:
        """Store the solved patients' estimates (where ``ok``) and their new noise.

        ``renoise`` (default ``ok``) says whose CGM error is re-estimated;
        ``secant`` as in `noise`.
        """
        new = _rows_at(rows, ids)
        new["g"] = np.where(ok[:, None], res.g, new["g"])
        new["loc"] = np.where(ok[:, None, None], res.loc, new["loc"])
        renoise = ok if renoise is None else renoise
        self._store(rows, self.noise(res.pred, renoise, new, ids, secant=secant), ids)

    def renoise_cut(self, rows: dict, ids, res: _Solved, cut) -> np.ndarray:
        """Re-estimate the CGM error of the ``cut`` solves where it is far off.

        A solve cut short keeps its CGM error, so that its blocks stay valid, until
        it settles. But the first error comes from the screened starts' residuals,
        far from any MAP (on 6 × 14-day records σ 14–26 mg/dL and φ 0.97–0.99,
        against 11–13 and 0.94–0.96 at the fixed point): the cut rounds would
        solve, and the population settle, under the wrong weights, and the complete
        rounds redo that work. Where the plain re-estimate from a cut solve's
        residuals moves log σ or the log innovation SD log σ√(1 − φ²) by more than
        `_RENOISE_CUT`, it is taken (no secant step: the point is not a MAP), and
        the solve goes on from a fresh linearisation.

        Returns:
            Which of ``ids`` were re-estimated (bool).
        """
        out = np.zeros(len(ids), bool)
        if not cut.any():
            return out
        at = ids[cut]
        here = _rows_at(rows, at)
        new = self.noise(
            _lanes_at(res, cut).pred, np.ones(at.size, bool), here, at, secant=False
        )
        with np.errstate(all="ignore"):
            d_sigma = np.log(new["sigma"] / here["sigma"])
            d_innov = (
                d_sigma
                + 0.5 * np.log1p(-(new["phi"] ** 2))
                - 0.5 * np.log1p(-(here["phi"] ** 2))
            )
        far = (np.abs(d_sigma) > _RENOISE_CUT) | (np.abs(d_innov) > _RENOISE_CUT)
        far &= np.isfinite(d_sigma) & np.isfinite(d_innov)
        if far.any():
            noise = {k: new[k] for k in ("sigma", "phi", "weights")}
            self._store(rows, _rows_at(noise, far), at[far])
        out[np.flatnonzero(cut)[far]] = True
        return out

    def start(self, *, key, starts: int, em) -> _State:
        """Screen the starting points of every patient (single-patient prior)."""
        prior, p, m = self.problem.prior, self.problem.n_params, self.n_real
        mu0, omega0 = self.g0[0, :p], np.asarray(prior.log_sd)
        levels = [prior.graft_median, 0.05, 1.0][: max(1, starts)]
        # patient i's jitter is `fit_patient`'s with key split(key, n)[i]
        subkeys = jax.vmap(lambda k: jax.random.split(k, len(levels)))(
            jax.random.split(key, m)
        )
        jitter = np.asarray(
            jax.vmap(jax.vmap(lambda k: jax.random.normal(k, (p,))))(subkeys)
        )  # [m, levels, p]
        knot_valid = np.asarray(self.problem.windows.knot_valid)[:m]
        nk = knot_valid.shape[1]
        initial = self.initial_rows()  # every level starts from these
        rows = self.initial_rows()  # the best level's, with its noise
        best_cost = np.full(m, np.inf)
        iterations = np.zeros(m, int)

        def done(ids, res, _cov, _quad, used):
            iterations[ids] += used
            better = np.isfinite(res.cost) & (res.cost < best_cost[ids])
            best_cost[ids] = np.where(better, res.cost, best_cost[ids])
            if better.any():
                # the screened solves were cut short: their error is no sample of
                # the re-estimate's map at a solved point, so it starts no secant
                self._keep(
                    rows,
                    ids[better],
                    _lanes_at(res, better),
                    better[better],
                    secant=False,
                )

        for j, level in enumerate(levels):
            g = self.g0[:m].copy()
            g[:, :p] += 0.05 * jitter[:, j]
            g[:, p : p + nk] = np.where(knot_valid, np.log(level), 0.0)
            self.e_step(
                mu0, omega0, {**initial, "g": g}, self.optimiser.screen_iter, done
            )
        beta0 = np.zeros((p, self.design.shape[1] - 1))
        coef0 = np.concatenate([mu0[:, None], beta0], axis=1)
        return _State(
            round=0,
            done=False,
            mu=mu0,
            omega=omega0,
            em=em.init(coef0.reshape(-1), omega0),
            e_steps=len(levels),
            **rows,
            beta=beta0,
            iterations=iterations,
            damping=np.full(m, self.optimiser.lambda0),
            history_mu=np.zeros((0, p)),
            history_omega=np.zeros((0, p)),
        )

    @staticmethod
    def longest_first(state: _State) -> np.ndarray:
        """The patients by their iterations so far, most first (ties by index).

        An E-step's lanes take the patients in this order, so that the solves likely
        to run longest start first and the E-step does not end with a few of them
        running alone in an otherwise idle program (longest processing time first;
        Graham RL, SIAM J Appl Math 17:416–429, 1969).
        """
        return np.argsort(-state.iterations, kind="stable")

    def cuts_solves(self, state: _State) -> bool:
        """Whether the next round cuts the solves at ``e_step_iterations``."""
        return self.e_step_iterations is not None and not state.complete

    def standard_errors(self, omega, cov: np.ndarray, ok: np.ndarray):
        """Standard errors ``(coef_se [p, 1 + q], omega_se [p])`` of the population.

        From the ``ok`` patients' Laplace covariances ``cov`` of θ ``[m, p, p]``
        under the prior SDs ``omega`` (`population_standard_errors`, and
        `coefficient_standard_errors` with covariates).
        """
        mu_se, omega_se = population_standard_errors(omega, cov[ok])
        if self.design.shape[1] == 1:
            return mu_se[:, None], omega_se
        coef_se = coefficient_standard_errors(
            omega, cov[ok], self.design[ok], self.free
        )
        return coef_se, omega_se

    def em_round(self, state: _State, *, em, tol: float, tol_se: float, floor: float):
        """One E-step and M-step at the strategy's point.

        With ``e_step_iterations`` set, each patient's solve runs at most that many
        iterations in the round and goes on in the next one from where it stopped
        (its point and damping), under the updated prior; the fit is done only when
        the population has settled *and* every solve of the round ended by its own
        stopping rule. Once the population has settled in a round with cut solves,
        the following rounds run every solve to its end (``state.complete``), and
        the fit is done at the first of them in which the population settles. A μ,
        β or ω has settled when it moved by less than ``tol`` or than ``tol_se``
        times its standard error (from this round's Laplace covariances;
        `LinearisedEM` computes none, so ``tol`` alone there).

        Returns:
            ``(new state, change of μ, β and ω, the largest change in units of its
            standard error (NaN without them), patients failed, solves cut)``.
        """
        p, m = self.problem.n_params, self.n_real
        point = np.asarray(state.em.point)
        coef_x, omega_x = self.split(point)
        before = {
            "g": state.g,
            "loc": state.loc,
            "sigma": state.sigma,
            "phi": state.phi,
            "weights": state.weights,
            "noise_last": state.noise_last,
        }
        rows = {k: None if v is None else v.copy() for k, v in before.items()}
        linearised = isinstance(em, LinearisedEM)
        theta, cov_theta = np.zeros((m, p)), np.zeros((m, p, p))
        quadratic = [None] * 6  # (A, a, K, k, F, e) of every patient, for LinearisedEM
        ok_all = np.zeros(m, bool)
        settled = np.ones(m, bool)  # solves that ended by their own stopping rule
        iterations = state.iterations.copy()
        incomplete = self.e_step_iterations is not None  # solves may go on
        partial = self.cuts_solves(state)  # this round's are cut
        damping = state.damping.copy()

        # a cut solve goes on in the next round from the blocks where it stopped: its
        # CGM error stays as it is until the solve settles (the blocks depend on it),
        # and the next round's prior is put into the blocks exactly (`_Carried.under`)
        centre_x = self.centres(coef_x[:, 0], coef_x[:, 1:])
        carried = state.carried
        if carried is not None:
            carried = carried.under(state.g[:, :p], centre_x, omega_x)
        keep = None
        carrying = incomplete and not linearised and self.carry_fits()
        if carrying and carried is None:
            keep = self.no_carry(m)
        elif carrying:
            # written over last round's rows (a patient's row is read when its solve
            # starts, before its end writes it): one copy in host memory, not two
            keep = (np.zeros(m, bool), carried.blocks, carried.pred, carried.ok)

        def done(ids, res, cov, quad, used):
            ok = _finite(res)
            settled[ids] = res.stopped | ~ok
            damping[ids] = np.where(ok, res.damping, self.optimiser.lambda0)
            # a solve cut short is no MAP: its CGM error starts no secant step, and
            # is re-estimated (plainly) only where its residuals put it far off; a
            # carried solve then goes on from a fresh linearisation
            cut = ok & ~res.stopped if incomplete else np.zeros(len(ids), bool)
            renoised = self.renoise_cut(rows, ids, res, cut)
            if carrying:
                keep[0][ids] = cut & ~renoised
                _set_rows(keep[1:], ids, (res.blocks, res.pred, res.ok))
            if linearised:
                for j, part in enumerate(quad):
                    if quadratic[j] is None:
                        quadratic[j] = np.zeros((m, *part.shape[1:]), part.dtype)
                    quadratic[j][ids] = part
                    ok = ok & np.all(np.isfinite(part.reshape(len(ids), -1)), axis=1)
            else:
                cov_theta[ids] = cov[:, :p, :p]
            self._keep(rows, ids, res, ok, renoise=ok & ~cut)
            theta[ids] = res.g[:, :p]
            ok_all[ids] = ok
            iterations[ids] += used

        cap = self.optimiser.max_iter
        if partial:
            cap = min(cap, self.e_step_iterations)
        self.e_step(
            centre_x,
            omega_x,
            before,
            cap,
            done,
            damping=state.damping if incomplete else None,
            carried=carried,
            cov=not linearised,
            surrogate=linearised,
            order=self.longest_first(state),
        )
        if keep is not None:
            keep = _Carried(*keep, centre=centre_x, omega=np.asarray(omega_x, float))
        if ok_all.any() and linearised:
            model = Surrogate(theta, *quadratic)
            model = Surrogate(*(x[ok_all] for x in model))
            mapped, inner = em.fixed_point(model, point, floor=floor)
            mu, omega = mapped[:p], mapped[p:]
            # each patient's next E-step starts at its quadratic model's MAP there
            delta, _ = quadratic_e_step(model, mu, omega)
            rest, local = rest_step(model, delta)
            step = np.concatenate([delta, rest], axis=1)
            fine = np.all(np.isfinite(step), axis=1)
            fine &= np.all(np.isfinite(local.reshape(len(fine), -1)), axis=1)
            rows["g"][ok_all] += np.where(fine[:, None], step, 0.0)
            rows["loc"][ok_all] += np.where(fine[:, None, None], local, 0.0)
            em_state = em.update(state.em, mapped, floor=floor, inner_rounds=inner)
            coef = mu[:, None]
        elif ok_all.any():
            # least squares on the design (the mean when there are no covariates)
            var = np.diagonal(cov_theta, axis1=1, axis2=2)
            coef, omega = regression_m_step(
                theta[ok_all], var[ok_all], self.design[ok_all], self.free, floor
            )
            mapped = np.concatenate([coef.reshape(-1), omega])
            em_state = em.update(state.em, mapped, floor=floor, n_omega=p)
        else:
            coef, omega, em_state = coef_x, omega_x, state.em
        mu = coef[:, 0]
        moved = np.concatenate([np.abs(coef - coef_x).ravel(), np.abs(omega - omega_x)])
        change = float(np.max(moved))
        scale = np.full(moved.shape, np.nan)
        if ok_all.any() and not linearised:
            coef_se, omega_se = self.standard_errors(omega_x, cov_theta, ok_all)
            scale = np.concatenate([coef_se.ravel(), omega_se])
        known = np.isfinite(scale) & (scale > 0)  # not for uninformed parameters
        limit = np.where(
            known, np.maximum(tol, tol_se * np.where(known, scale, 0)), tol
        )
        change_se = (
            float(np.max(moved[known] / scale[known])) if known.any() else np.nan
        )
        converged = bool(ok_all.any()) and bool(np.all(moved < limit))
        new = _State(
            round=state.round + 1,
            done=converged and (bool(settled.all()) or not partial),
            # once the population has settled, solve the cut E-steps to their end
            complete=state.complete or (partial and converged),
            mu=mu,
            omega=omega,
            em=em_state,
            e_steps=state.e_steps + 1,
            **rows,
            beta=coef[:, 1:],
            iterations=iterations,
            damping=damping if incomplete else state.damping,
            history_mu=np.concatenate([state.history_mu, mu[None]]),
            history_omega=np.concatenate([state.history_omega, omega[None]]),
            carried=keep,
        )
        return new, change, change_se, int(m - ok_all.sum()), int(m - settled.sum())

    def finish(
        self,
        state: _State,
        infos,
        failures: dict,
        start_time: float,
        n_devices: int,
        covariates: tuple[Covariate, ...] = (),
        reference: np.ndarray | None = None,
    ) -> PopulationResult:
        """The reported fit: every patient's MAP under the final population prior."""
        p, m = self.problem.n_params, self.n_real
        rows = {
            "g": state.g,
            "loc": state.loc,
            "sigma": state.sigma,
            "phi": state.phi,
            "weights": state.weights,
        }
        theta = np.full((m, p), np.nan)
        theta_sd = np.full((m, p), np.nan)
        cov_theta = np.zeros((m, p, p))
        ok_all = np.zeros(m, bool)
        iterations = state.iterations.copy()
        results = {}

        def done(ids, res, cov, _quad, used, band):
            ok = np.isfinite(res.cost)
            ok_all[ids] = ok
            iterations[ids] += used
            var = np.diagonal(cov, axis1=1, axis2=2)[:, :p]
            theta[ids] = np.where(ok[:, None], res.g[:, :p], np.nan)
            theta_sd[ids] = np.where(ok[:, None], np.sqrt(np.maximum(var, 0.0)), np.nan)
            cov_theta[ids] = cov[:, :p, :p]
            # host-side bookkeeping: its small operations run on the host's CPU, not
            # as one device call each on an accelerator
            with jax.default_device(jax.local_devices(backend="cpu")[0]):
                for j in np.flatnonzero(ok):
                    i = int(ids[j])
                    results[infos[i].patient_id] = _fit_result(
                        self.problem,
                        i,
                        int(j),
                        infos[i],
                        res,
                        band[j],
                        (float(state.sigma[i]), float(state.phi[i])),
                        int(iterations[i]),
                        0.0,
                        mu=centre[i],
                        omega=state.omega,
                    )

        centre = self.centres(state.mu, state.beta)
        self.e_step(
            centre,
            state.omega,
            rows,
            self.optimiser.max_iter,
            done,
            cov=True,
            band=True,
            order=self.longest_first(state),
        )
        seconds = time.perf_counter() - start_time
        failures = dict(failures)
        for i, info in enumerate(infos):
            if not ok_all[i]:
                failures[info.patient_id] = _SOLVE_FAILED
        # in input order, each with its share of the wall time
        results = {
            info.patient_id: dataclasses.replace(
                results[info.patient_id], seconds=seconds / m
            )
            for info in infos
            if info.patient_id in results
        }
        omega = np.asarray(state.omega)
        # shrinkage of the random effects θ̂_i − centre_i
        eta = (theta - centre)[ok_all]
        ebe_var = np.var(eta, axis=0) if ok_all.any() else np.full(p, np.nan)
        coef_se, omega_se = self.standard_errors(omega, cov_theta, ok_all)
        mu_se, beta_se = coef_se[:, 0], coef_se[:, 1:]
        extrapolated = getattr(state.em, "extrapolated", 0)
        return PopulationResult(
            estimated=tuple(self.problem.prior.estimated),
            mu=np.asarray(state.mu),
            omega=omega,
            mu_se=mu_se,
            omega_se=omega_se,
            shrinkage=1.0 - ebe_var / omega**2,
            patient_id=tuple(info.patient_id for info in infos),
            theta=theta,
            theta_sd=theta_sd,
            theta_cov=np.where(ok_all[:, None, None], cov_theta, np.nan),
            results=results,
            failures=failures,
            rounds=state.round,
            converged=state.done and state.round > 0,
            history_mu=state.history_mu,
            history_omega=state.history_omega,
            n_devices=n_devices,
            seconds=seconds,
            model=self.problem.model,
            prior=self.problem.prior,
            e_steps=state.e_steps + 1,
            extrapolations=int(extrapolated),
            chunk_size=self.chunk,
            covariates=covariates,
            covariate_reference=reference,
            covariate_values=self.design[:, 1:],
            beta=state.beta,  # 0 where not free (the M-step's)
            beta_se=beta_se,
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
    max_rounds: int = 60,
    tol: float = 1e-3,
    tol_se: float = 0.05,
    omega_floor: float = 0.02,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    chunk_size: int | None = None,
    em: PlainEM | SquaremEM | LinearisedEM = PlainEM(),
    e_step_iterations: int | None = 3,
    covariates: Sequence[Covariate] = (),
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
        tol: A μ, β or ω has settled when it changes by less than this in a round
            [log units].
        tol_se: ... or by less than this fraction of its standard error (computed
            each round from the patients' Laplace covariances, as ``mu_se`` and
            ``omega_se``). The fit stops when all have settled. The EM's change
            carries the E-steps' numerical noise: about 1e-3 on the 64-patient
            benchmark, where an absolute ``tol`` of 1e-3 alone stopped after 21 to
            40 rounds by chance; 0.05 SE stops once the noise is statistically
            irrelevant (docs/population.md). 0 leaves ``tol`` alone.
        omega_floor: Smallest ω [log units] (keeps the prior proper when the data do
            not tell patients apart).
        checkpoint: ``.npz`` file of the state after each ``checkpoint_every`` rounds
            (written atomically), or None.
        checkpoint_every: Rounds between checkpoints.
        resume: Continue from ``checkpoint`` if it exists (it must come from the same
            patients, model and prior); the result equals an uninterrupted run.
        mesh: A `jax.sharding.Mesh` with an axis ``"patients"``: the lanes of each
            call are sharded over it (``jax.make_mesh((n,), ("patients",))``), e.g.
            GPUs, or a CPU's cores exposed as devices
            (``jax.config.update("jax_num_cpu_devices", n)`` before JAX's first
            use): XLA runs one device's program on one core, so
            one device leaves the other cores idle (6 visits × 14 days, 8 patients
            on 2 cores: 1.5× faster with 2 devices, the same fit;
            ``benchmarks/RESULTS.md``). None: one device.
        chunk_size: Lanes (patients per device call) of an E-step, rounded up to a
            multiple of the mesh size and at most the patients; None: 4 per CPU
            device, 64 per accelerator. One compiled program serves every call; a patient runs at most
            10 iterations per call and continues in a later call, and a lane whose
            patient is done takes a waiting one (see `_Engine`), so device memory
            holds one call's Jacobians — about
            3·W·T·n_g·8 bytes per patient (W day-windows of T readings, n_g global
            unknowns; XLA's temporaries were 4.0 GiB for 64 patients × 84 windows ×
            288 readings, n_g = 110) — and the patients' data stay on the host. The
            result does not depend on it (to rounding).
        em: How μ and ω move from round to round: `PlainEM` (the EM iteration),
            `SquaremEM` (SQUAREM extrapolation, fewer rounds when the EM is slow) or
            `LinearisedEM` (the EM run to its fixed point on each round's quadratic
            models of the patients' posteriors).
        e_step_iterations: Most optimiser iterations of a patient in one round, or
            None to solve every E-step to convergence. With a number the E-steps are
            incomplete: a solve that is cut goes on in the next round from where it
            stopped, under the updated μ and ω (a generalised EM; the fixed point is
            the same). Once the population has settled (``tol``, ``tol_se``) in a
            round in which some solve was cut, the next rounds solve every patient
            to its end, and the fit stops at the first of them in which the
            population settles again: long records (6 visits × 14 days) need more
            iterations after each change of the prior than a round gives, and their
            solves were still being cut after 30 rounds. The default 3 needs about
            twice the rounds of complete E-steps, each much cheaper: 311 s against
            524 s on the 64-patient CPU benchmark at 1 day per visit, same result
            (docs/population.md); 1 or 2 left the change wandering.
        covariates: `Covariate` s from the patient ``sheet`` (e.g.
            ``Covariate("weight_kg")``): patient i's prior centre of log(field) is
            μ + β·log(x_i/x̃), x̃ the cohort median, with β estimated in the M-step
            (least squares of the EBEs on the covariates; ``_covariates.py``).
            Not with `LinearisedEM`.
        on_round: Called with a `RoundInfo` after each round (after its checkpoint).

    Returns:
        A `PopulationResult`.

    Raises:
        InputError: No patient's record can be fitted, a bad argument, or a
            checkpoint that does not match.
    """
    start_time = time.perf_counter()
    model = FitModel() if model is None else model
    if (
        max_rounds < 0
        or checkpoint_every < 1
        or not (tol >= 0 and tol_se >= 0)
        or omega_floor <= 0
    ):
        raise InputError(
            "fit_population: max_rounds >= 0, checkpoint_every >= 1, tol >= 0, "
            "tol_se >= 0 and omega_floor > 0 are required"
        )
    for name, value in (
        ("chunk_size", chunk_size),
        ("e_step_iterations", e_step_iterations),
    ):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | np.integer)
            or value < 1
        ):
            raise InputError(
                f"fit_population: {name} must be a whole number >= 1 or None, got "
                f"{value!r}",
                field=name,
            )
    if not isinstance(em, PlainEM | SquaremEM | LinearisedEM):
        raise InputError(
            "fit_population: em must be PlainEM(), SquaremEM() or LinearisedEM(), "
            f"got {em!r}",
            field="em",
        )
    covariates = tuple(covariates)
    if not all(isinstance(c, Covariate) for c in covariates):
        raise InputError(
            f"fit_population: covariates must be Covariate(...) s, got {covariates!r}",
            field="covariates",
        )
    if covariates and isinstance(em, LinearisedEM):
        raise InputError(
            "fit_population: LinearisedEM does not support covariates",
            field="em",
            expected="PlainEM() or SquaremEM() with covariates",
        )
    free = free_coefficients(covariates, prior.estimated)
    if resume and checkpoint is None:
        raise InputError("fit_population: resume=True needs a checkpoint path")
    if mesh is not None and "patients" not in mesh.shape:
        raise InputError("fit_population: the mesh needs an axis named 'patients'")
    several = spans_processes(mesh)  # multi-controller: one writer, shared checkpoint

    # prepare every patient on its own: a bad record is reported, the others go on
    failures: dict[str, str] = {}
    prepared, infos = [], []
    for patient in patients:
        try:
            windows, info = prepare_patient(
                patient, model=model, sheet=sheet, host=True
            )
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
    n_devices = 1 if mesh is None else int(mesh.shape["patients"])
    n = len(prepared)
    platform = (jax.devices()[0] if mesh is None else mesh.devices.flat[0]).platform
    chunk = _chunk_size(n, chunk_size, n_devices, platform)
    # host-side stack; each patient's own arrays are freed as they are copied
    problem = stack_windows_host(
        prepared, model=model, prior=prior, n_total=n, consume=True
    )
    del prepared
    patient_id = tuple(info.patient_id for info in infos)
    values, reference = covariate_values(covariates, sheet, patient_id)
    engine = _Engine.build(
        problem,
        optimiser,
        mesh,
        chunk,
        None if e_step_iterations is None else int(e_step_iterations),
        values,
        free,
        platform,
    )

    ckpt = None if checkpoint is None else Path(checkpoint)
    state = _resume(ckpt, engine, patient_id, em, resume=resume, several=several)
    if state is None:
        state = engine.start(key=key, starts=starts, em=em)
    while not state.done and state.round < max_rounds:
        t_round = time.perf_counter()
        extrapolated = em.extrapolating(state.em)
        complete = not engine.cuts_solves(state)
        state, change, change_se, n_failed, n_cut = engine.em_round(
            state, em=em, tol=tol, tol_se=tol_se, floor=omega_floor
        )
        due = state.round % checkpoint_every == 0 or state.done
        if ckpt is not None and due and (is_main_process() or not several):
            _save_checkpoint(ckpt, state, engine, patient_id, em)
        if on_round is not None:
            on_round(
                RoundInfo(
                    round=state.round,
                    mu=state.mu,
                    omega=state.omega,
                    change=change,
                    change_se=change_se,
                    n_failed=n_failed,
                    seconds=time.perf_counter() - t_round,
                    e_steps=state.e_steps,
                    extrapolated=extrapolated,
                    cut=n_cut,
                    complete=complete,
                )
            )
    return engine.finish(
        state, infos, failures, start_time, n_devices, covariates, reference
    )


def _update_noise(model, pred, obs, use, ok, sigma, phi, weights, last=None):
    """Re-estimate each evaluable patient's CGM error (and Student-t weights).

    ``weights`` None (Gaussian error) stands for ones and stays None. With ``last``
    (each patient's previous re-estimate, `_State.noise_last`) the update is
    `_secant_noise`'s, and the returned ``last`` holds this re-estimate where ``ok``
    (else ``last`` is returned as given).

    Returns:
        ``(sigma, phi, weights, last)``.
    """
    resid = np.asarray(pred) - obs
    s_new, f_new = _estimate_noise_batch(resid, use, weights, model.noise.ar1)
    ok = ok & np.isfinite(s_new) & np.isfinite(f_new)
    if last is not None:
        here = np.stack([np.log(sigma), phi], axis=1)
        plain = np.stack([np.log(np.where(ok, s_new, 1.0)), f_new], axis=1)
        step = _secant_noise(here, plain, last)
        s_new, f_new = np.exp(step[:, 0]), step[:, 1]
        last = np.where(ok[:, None, None], np.stack([here, plain], axis=1), last)
    sigma = np.where(ok, s_new, sigma)
    phi = np.where(ok, f_new, phi)
    if isinstance(model.noise, StudentTNoise):
        nu = model.noise.df
        with np.errstate(all="ignore"):
            z = resid / sigma[:, None, None]
            w_new = (nu + 1.0) / (nu + z**2)
        weights = np.where(ok[:, None, None], w_new, weights)
    return sigma, phi, weights, last


#: Largest slope of the CGM error's re-estimate taken for a secant step: the step is
#: then at most 1/(1 − 0.75) = 4 times the plain re-estimate's.
_SECANT_MAX_SLOPE = 0.75

#: A cut solve's CGM error is re-estimated when that moves log σ or log σ√(1 − φ²)
#: by more than this (`_Engine.renoise_cut`).
_RENOISE_CUT = 0.02


def _secant_noise(here, plain, last) -> np.ndarray:
    r"""Each patient's next CGM error: a secant step to the re-estimate's fixed point.

    The CGM error x = (log σ, φ) is re-estimated from the residuals of the patient's
    MAP under x: x ← F(x), the conditional maximisation of the profile likelihood
    (e.g. Meng and Rubin 1993, Biometrika 80:267). F converges only linearly: on a
    6-visit × 14-day record the re-estimates of σ rose 9.96 → 11.20 → 11.63 → 11.77
    mg/dL, a slope F' ≈ 0.34, and each re-estimate makes the patient's solve, and
    the population's μ and ω, move again (benchmarks/RESULTS.md). With the previous
    re-estimate (x₀, F(x₀)) each component takes the secant step on F(x) − x = 0,

        x ← x + (F(x) − x) / (1 − s),   s = (F(x) − F(x₀)) / (x − x₀),

    which for a linear F lands on its fixed point at once (Aitken's Δ²). The fixed
    points are those of the plain update. Where the slope s is not in
    [0, `_SECANT_MAX_SLOPE`] (an oscillating component, s < 0; one too slow for a
    safe long step, e.g. after the prior moved between the two re-estimates; or no
    previous re-estimate, s NaN) the plain re-estimate F(x) is taken.

    Args:
        here: The error each patient's solve ran under, (log σ, φ) ``[n, 2]``.
        plain: Its re-estimate F(here) ``[n, 2]``.
        last: The previous ``(here, plain)`` ``[n, 2, 2]`` (NaN: none).

    Returns:
        The next (log σ, φ) ``[n, 2]``, φ in [0, 0.99] and σ ≥ 0.5 mg/dL.
    """
    with np.errstate(all="ignore"):
        dx = here - last[:, 0]
        slope = (plain - last[:, 1]) / dx
    fine = np.isfinite(slope) & (slope >= 0.0) & (slope <= _SECANT_MAX_SLOPE)
    step = np.where(fine, (plain - here) / (1.0 - np.where(fine, slope, 0.0)), 0.0)
    out = np.where(fine, here + step, plain)
    out[:, 0] = np.maximum(out[:, 0], np.log(0.5))
    out[:, 1] = np.clip(out[:, 1], 0.0, 0.99)
    return out


def _fit_result(
    problem: PopulationProblem,
    i: int,
    j: int,
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
    """Stacked patient ``i``'s `FitResult` from row ``j`` of a solve's rows.

    ``cov`` is its band covariance, `fit_patient`'s: the Laplace covariance under the
    population prior, widened by the day-windows' score scatter unless
    ``FitModel.robust_band`` is False (`band_covariance`, batched in `_bands`).
    """
    base = problem.objective(i)
    obj = HierarchicalObjective(
        windows=base.windows,
        model=base.model,
        prior=base.prior,
        mu=np.asarray(mu),
        omega=np.asarray(omega),
    )
    g = res.g[j]  # host-side: the result is assembled with numpy
    return assemble_result(
        obj,
        info,
        g,
        np.asarray(cov),
        pred=np.asarray(res.pred[j]),
        ok=np.asarray(res.ok[j]),
        noise=(float(noise[0]), float(noise[1])),
        converged=bool(res.converged[j]),
        iterations=iterations,
        seconds=seconds,
        cost=float(res.cost[j]),
    )
