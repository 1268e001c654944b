r"""Full posterior of the population model by the No-U-Turn Sampler (NumPyro).

`fit_population` gives the mode of each patient's posterior under estimated population
values (Laplace-EM) and Gaussian (Laplace) bands around it. `sample_posterior` draws
from the full posterior of the *same* hierarchical model, with the population values
integrated over instead of fixed:

$$\mu_k \sim N(c_k, (a\,s_k)^2), \qquad \omega_k \sim \text{Half-}N\big((b\,s_k)^2\big),
\qquad \theta_i \sim N(\mu, \operatorname{diag}\omega^2),$$

with $c$ the log of the model's values of the estimated fields, $s$ = `Prior.log_sd`
and $(a, b)$ from `Hyperprior`; and for each patient i the graft trajectory (log B at
the knots: level prior on the first knot, random walk between knots), the sensor
calibration scores (standard normal), the per-window local unknowns (initial glucose
and day-to-day factors) and the CGM likelihood, all exactly as in the MAP objective:
the log density is $-\tfrac12\lVert r\rVert^2$ of the residual rows of `Objective`
(vmapped over patients; masks and the AR(1) prewhitening included; 'Low'/'High'
readings enter through the same one-sided residual as in the MAP fit, not as a
Gaussian tail probability) plus the hyperprior terms. With ``fixed_population`` μ and
ω stay at the fitted values: the empirical-Bayes posterior of each patient, which the
Laplace bands approximate; `sample_patient_posterior` is the same with one patient
and the single-patient prior.

The CGM error of each patient (SD σ_i [mg/dL] and AR(1) coefficient φ_i) is *fixed*
at the value of the MAP fit, not sampled: `fit_population` profiles it rather than
giving it a prior, and with hundreds of readings per day its posterior is narrow.
Student-t errors (fitted by reweighting) and latent meals (a sparsity prior with its
mode at no carbohydrate) are not supported.

Unknowns are sampled on unconstrained scales: log ω (with the log-Jacobian of
ω = exp(log ω)), and by default the non-centred θ_i = μ + ω ⊙ η_i with η_i ~ N(0, I),
which removes the funnel between ω and the θ_i when the data say little about some
parameters (high shrinkage), as is typical of CGM (Betancourt and Girolami 2015).
Padding entries of the stacked problem (padding knots, unused sensor sessions, padding
windows) are not sampled; they stay at 0, their prior mode, where they add nothing.
Every chain starts at the MAP plus a draw from its Laplace approximation, which is
also the initial mass matrix of the warm-up.

Gradients: NUTS needs the gradient of the scalar log density. The ODE solves are
differentiated in forward mode, window by window, with the Jacobians the optimiser
already computes (`_linearise`: the gradient of ½‖r‖² is Jᵀr), wrapped as the
reverse-mode derivative of the cost (`equinox.filter_custom_vjp`); the prior rows
(cheap, no solve) are differentiated by ordinary autodiff, through μ and ω too.
``NUTSSampler(forward_mode=False)`` differentiates the solves in reverse mode
instead (diffrax's `RecursiveCheckpointAdjoint`): the same gradient (to 1e-13), but
slower on CPU (3 patients × 1 day, default `Prior`, 54 unknowns, 2 shared cores:
0.14 s per gradient and 13 s to compile in forward mode, 0.19 s and 37 s in reverse
mode). Either is the derivative of the solution with the solver's step sizes held
(diffrax does not differentiate its step-size controller): at ``FitModel.rtol`` =
1e-5 it differs from a finite difference of the computed density by about 0.5 %,
which only lowers the acceptance rate a little (the Metropolis correction uses the
density itself).

Cost: a draw takes up to 2^``max_tree_depth`` − 1 gradients. Under the fitted
population (``fixed_population=True``; 2 patients × 1 day, 3 estimated fields) NUTS
with a dense mass matrix took about 10 gradients per draw and 220 s for 2 chains of
100 + 100 iterations on 2 shared CPU cores, with R-hat ≤ 1.02 and posterior SDs
within 15 % of the Laplace SDs. The hierarchical posterior of so few patients is much
harder: ω is bounded only by its prior, and with vmx, kp1 and kd estimated, μ spreads
along the ridge of insulin sensitivity (vmx), glucose production (kp1) and B that one
CGM day cannot resolve (trees at the depth limit, R-hat 1.1–1.9 over keys, machines
and warm-ups of 80–200 iterations, θ SDs 2–4× the Laplace SDs, which condition on ω).
Without kp1 (vmx and kd, ω's half-normal scaled to the fitted ω) 2 chains of 80 +
100 iterations gave R-hat 1.03–1.06 over three keys, 17–27 gradients per draw and
medians within 0.4 posterior SDs of the MAP (2026-11-29). Estimate what the data identify
(docs/identifiability.md), use more patients, longer warm-ups, or
``fixed_population``.

References:
    - Hoffman MD, Gelman A. The No-U-Turn Sampler: adaptively setting path lengths in
      Hamiltonian Monte Carlo. J Mach Learn Res 15:1593–1623, 2014.
    - Phan D, Pradhan N, Jankowiak M. Composable effects for flexible and accelerated
      probabilistic programming in NumPyro. arXiv:1912.11554, 2019.
    - Gelman A. Prior distributions for variance parameters in hierarchical models.
      Bayesian Anal 1:515–534, 2006.
    - Betancourt M, Girolami M. Hamiltonian Monte Carlo for hierarchical models. In:
      Current Trends in Bayesian Methodology with Applications, CRC Press, 2015.
    - Kumar R, Carroll C, Hartikainen A, Martin O. ArviZ a unified library for
      exploratory analysis of Bayesian models in Python. J Open Source Softw 4:1143,
      2019.
    - Vehtari A, Gelman A, Simpson D, Carpenter B, Bürkner PC. Rank-normalization,
      folding, and localization: an improved R-hat for assessing convergence of MCMC.
      Bayesian Anal 16:667–718, 2021.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._custom_types import Array, Float, PRNGKeyArray
from .._errors import InputError
from ..data import PatientData
from ._config import FitModel, LatentMeals, Prior, StudentTNoise
from ._fit import FitResult, _linearise
from ._lm import Blocks, LevenbergMarquardt
from ._population import (
    HierarchicalObjective,
    PopulationResult,
    _solve_all,
)
from ._problem import Objective
from ._stacking import PopulationProblem, embed_global, prepare_patient, stack_windows

__all__ = [
    "Hyperprior",
    "NUTSSampler",
    "sample_patient_posterior",
    "sample_posterior",
]

_CHAIN_METHODS = ("sequential", "parallel", "vectorized")


class NUTSSampler(eqx.Module):
    """Settings of the No-U-Turn Sampler (Hoffman and Gelman 2014; NumPyro's `NUTS`).

    Attributes:
        num_warmup: Warm-up (adaptation) iterations per chain; discarded.
        num_samples: Draws kept per chain.
        num_chains: Independent chains (at least 2 for R-hat).
        target_accept: Target mean acceptance probability of the step-size
            adaptation (raise towards 0.95 if there are divergences).
        max_tree_depth: Largest tree depth (at most 2^depth − 1 leapfrog steps, each
            one gradient of the log density, per draw).
        dense_mass: Adapt a dense mass matrix (the posterior of θ and log B is
            correlated: B against insulin sensitivity) instead of a diagonal one.
        noncentred: Sample η_i = (θ_i − μ)/ω instead of θ_i (see the module
            docstring). Ignored by `sample_patient_posterior` (no μ, ω to sample).
        chain_method: NumPyro's way of running several chains: ``"sequential"``,
            ``"parallel"`` (one device per chain) or ``"vectorized"``.
        init_jitter: Chains start at the MAP plus this many Laplace SDs of standard
            normal noise (so that R-hat can detect chains that do not mix).
        forward_mode: Differentiate the ODE solves in forward mode (see the module
            docstring); False: reverse mode with checkpointing.
    """

    num_warmup: int = 500
    num_samples: int = 500
    num_chains: int = 4
    target_accept: float = 0.8
    max_tree_depth: int = 8
    dense_mass: bool = False
    noncentred: bool = True
    chain_method: str = "sequential"
    init_jitter: float = 0.5
    forward_mode: bool = True

    def __check_init__(self):
        if self.num_warmup < 0 or self.num_samples < 1 or self.num_chains < 1:
            raise InputError(
                "NUTSSampler: num_warmup >= 0, num_samples >= 1 and num_chains >= 1 "
                f"are required, got {self.num_warmup}, {self.num_samples} and "
                f"{self.num_chains}",
                field="num_samples",
            )
        if not 0.0 < self.target_accept < 1.0:
            raise InputError(
                f"NUTSSampler: target_accept must be in (0, 1), got {self.target_accept}",
                field="target_accept",
            )
        if not 1 <= self.max_tree_depth <= 15:
            raise InputError(
                "NUTSSampler: max_tree_depth must be in 1..15, got "
                f"{self.max_tree_depth}",
                field="max_tree_depth",
            )
        if self.chain_method not in _CHAIN_METHODS:
            raise InputError(
                f"NUTSSampler: unknown chain_method {self.chain_method!r}",
                field="chain_method",
                expected=", ".join(_CHAIN_METHODS),
            )
        if not self.init_jitter >= 0.0:
            raise InputError(
                f"NUTSSampler: init_jitter must be >= 0, got {self.init_jitter}",
                field="init_jitter",
            )


class Hyperprior(eqx.Module):
    r"""Weakly informative priors of the population values μ and ω.

    $\mu_k \sim N(c_k, (a\,s_k)^2)$ and $\omega_k \sim \text{Half-}N\big((b\,s_k)^2\big)$,
    with $c_k$ the log of the model's value of estimated field k (the centre of the
    single-patient prior), $s_k$ = ``Prior.log_sd[k]`` (the between-patient
    variability of the literature populations, `POPULATION_LOG_SD`), a =
    ``mu_factor`` and b = ``omega_factor``.

    Why a half-normal for ω: with a handful of patients the data cannot bound the
    between-patient SD from above, and the prior decides how large ω can get (Gelman
    2006). A half-normal scaled by the literature variability has its mode at 0 (no
    variability is allowed), mean 0.8 s and 95 % of its mass below 1.96 s; a
    half-Cauchy would keep ω = 5 s (factors of e^{±1.5} or more between patients for
    e.g. insulin sensitivity) plausible, which is not physiology but a sampler
    problem (the funnel). Increase ``omega_factor`` for a vaguer prior.

    Attributes:
        mu_factor: a, the SD of μ in units of ``Prior.log_sd`` [-]: one number, or
            one per estimated field (in the order of ``Prior.estimated``).
        omega_factor: b, the scale of ω in units of ``Prior.log_sd`` [-]: likewise.
    """

    mu_factor: float | tuple[float, ...] = 1.0
    omega_factor: float | tuple[float, ...] = 1.0

    def __check_init__(self):
        for name in ("mu_factor", "omega_factor"):
            value = np.asarray(getattr(self, name), float)
            if value.ndim > 1 or value.size == 0 or not np.all(value > 0.0):
                raise InputError(
                    f"Hyperprior: {name} must be > 0 (a number or one per estimated "
                    f"field), got {getattr(self, name)}",
                    field=name,
                )

    def scales(self, log_sd) -> tuple[Array, Array]:
        """SD of μ and scale of ω of each estimated field, given ``Prior.log_sd``."""
        log_sd = jnp.asarray(log_sd)
        out = []
        for name in ("mu_factor", "omega_factor"):
            factor = np.asarray(getattr(self, name), float)
            if factor.ndim == 1 and factor.shape != log_sd.shape:
                raise InputError(
                    f"Hyperprior: {name} has {factor.shape[0]} entries for "
                    f"{log_sd.shape[0]} estimated fields",
                    field=name,
                )
            out.append(jnp.asarray(factor, log_sd.dtype) * log_sd)
        return out[0], out[1]


# --------------------------------------------------------------------- log density
class _DataOnly(Objective):
    """`Objective` without the prior rows on g (they are differentiated apart)."""

    def global_residual(self, g):
        """No rows: the priors on θ, knots and calibration are added by the caller."""
        return jnp.zeros((0,), g.dtype)


@eqx.filter_custom_vjp
def _window_cost(gl, obj: _DataOnly, noise, weights):
    """½‖r‖² of the window rows (readings and local priors) of one patient."""
    g, loc = gl
    u = obj.to_window(g)
    r = jax.vmap(lambda uw, lw, w, wt: obj.window_residual(uw, lw, w, noise, wt))(
        u, loc, jnp.arange(u.shape[0]), weights
    )
    return 0.5 * jnp.sum(r * r)


@_window_cost.def_fwd
def _window_cost_fwd(perturbed, gl, obj, noise, weights):
    g, loc = gl
    blocks, _ = _linearise(obj, g, loc, noise, weights)
    return blocks.cost, (blocks.bg, blocks.bl)


@_window_cost.def_bwd
def _window_cost_bwd(residuals, ct, perturbed, gl, obj, noise, weights):
    bg, bl = residuals
    return (ct * bg, ct * bl)


def _window_cost_reverse(gl, obj: _DataOnly, noise, weights):
    """As `_window_cost`, reverse-differentiable through the solves (checkpointing)."""
    g, loc = gl
    u = obj.to_window(g)
    r = jax.vmap(
        lambda uw, lw, w, wt: obj.window_residual(
            uw, lw, w, noise, wt, forward_mode=False
        )
    )(u, loc, jnp.arange(u.shape[0]), weights)
    return 0.5 * jnp.sum(r * r)


class _Posterior(eqx.Module):
    """Log density of the stacked patients on a flat vector of the free unknowns.

    The full (padded) vector is ``[mu (p), log_omega (p), theta or eta (N×p),
    knots (N×K), calibration (N×S×2), local (N×W×L)]``; ``free`` indexes the sampled
    entries (μ and log ω only when ``sample_hyper``). Without ``sample_hyper``, μ and
    ω are the constants ``mu0`` and ``omega0``.
    """

    problem: PopulationProblem
    sigma: Float[Array, " patients"]
    phi: Float[Array, " patients"]
    weights: Array
    centre: Float[Array, " p"]
    mu_sd: Float[Array, " p"]
    omega_scale: Float[Array, " p"]
    mu0: Float[Array, " p"]
    omega0: Float[Array, " p"]
    free: np.ndarray
    n_local: int
    sample_hyper: bool
    noncentred: bool
    forward_mode: bool

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the parts of the full vector, in order."""
        pr = self.problem
        n, p = pr.n_patients, pr.n_params
        nw = pr.windows.ts.shape[1]
        return {
            "mu": (p,),
            "log_omega": (p,),
            "theta": (n, p),
            "knots": (n, pr.n_knots),
            "cal": (n, pr.n_sessions, 2),
            "loc": (n, nw, self.n_local),
        }

    @property
    def size(self) -> int:
        """Number of sampled unknowns."""
        return int(self.free.shape[0])

    def unpack(self, z: Float[Array, " d"]) -> dict[str, Array]:
        """The parts of the full vector (padding at 0) from the sampled entries."""
        total = sum(int(np.prod(s)) for s in self.shapes.values())
        full = jnp.zeros((total,), z.dtype).at[self.free].set(z)
        out, start = {}, 0
        for name, shape in self.shapes.items():
            size = int(np.prod(shape))
            out[name] = full[start : start + size].reshape(shape)
            start += size
        return out

    def pack(self, parts: dict[str, Array]) -> Float[Array, " d"]:
        """The sampled entries of a full vector given by its parts."""
        full = jnp.concatenate(
            [jnp.ravel(jnp.asarray(parts[name])) for name in self.shapes]
        )
        return full[self.free]

    def hyper(self, parts) -> tuple[Array, Array]:
        """μ and ω of a point."""
        if not self.sample_hyper:
            return self.mu0, self.omega0
        return parts["mu"], jnp.exp(parts["log_omega"])

    def theta(self, parts) -> Array:
        """θ ``[N, p]`` of a point (from η when non-centred)."""
        mu, omega = self.hyper(parts)
        if self.noncentred:
            return mu[None, :] + omega[None, :] * parts["theta"]
        return parts["theta"]

    def global_vectors(self, parts) -> Array:
        """Every patient's g = [θ, knots, calibration] ``[N, ng]``."""
        n = self.problem.n_patients
        return jnp.concatenate(
            [self.theta(parts), parts["knots"], parts["cal"].reshape(n, -1)], axis=1
        )

    def hyper_terms(self, parts) -> Array:
        """−log density of the hyperpriors, with the log-Jacobian of ω = exp(log ω).

        With θ centred, the prior N(μ, ω²) of each θ_i needs its normalising term
        Σ_k log ω_k (the MAP objective, with ω fixed, leaves it out); with η
        non-centred it cancels against the Jacobian of θ = μ + ω η.
        """
        if not self.sample_hyper:
            return jnp.zeros((), self.mu0.dtype)
        mu, log_omega = parts["mu"], parts["log_omega"]
        omega = jnp.exp(log_omega)
        terms = 0.5 * jnp.sum(((mu - self.centre) / self.mu_sd) ** 2)
        terms += 0.5 * jnp.sum((omega / self.omega_scale) ** 2) - jnp.sum(log_omega)
        if not self.noncentred:
            terms += self.problem.n_patients * jnp.sum(log_omega)
        return terms

    def potential(self, z: Float[Array, " d"]) -> Float[Array, ""]:
        """Negative log posterior density (up to a constant) at ``z``."""
        parts = self.unpack(z)
        mu, omega = self.hyper(parts)
        g = self.global_vectors(parts)
        pr = self.problem
        window_cost = _window_cost if self.forward_mode else _window_cost_reverse

        def patient(win, g_i, loc_i, s, f, wt):
            data = _DataOnly(windows=win, model=pr.model, prior=pr.prior)
            prior = HierarchicalObjective(
                windows=win, model=pr.model, prior=pr.prior, mu=mu, omega=omega
            )
            r0 = prior.global_residual(g_i)
            return window_cost((g_i, loc_i), data, (s, f), wt) + 0.5 * jnp.sum(r0 * r0)

        costs = jax.vmap(patient)(
            pr.windows, g, parts["loc"], self.sigma, self.phi, self.weights
        )
        return jnp.sum(costs) + self.hyper_terms(parts)

    def named(self, z: Float[Array, " d"]) -> dict[str, Array]:
        """The reported quantities of a point: μ, ω, θ, log B knots, calibration."""
        parts = self.unpack(z)
        mu, omega = self.hyper(parts)
        return {
            "mu": mu,
            "omega": omega,
            "theta": self.theta(parts),
            "knots": parts["knots"],
            "cal": parts["cal"],
        }


def _free_index(
    problem: PopulationProblem, n_local: int, sample_hyper: bool
) -> np.ndarray:
    """Indices of the sampled entries of the full vector (see `_Posterior`)."""
    win = problem.windows
    n, p = problem.n_patients, problem.n_params
    valid = np.asarray(win.valid)  # [N, W]
    session_used = (
        np.einsum("nws,nw->ns", np.asarray(win.session), valid.astype(float)) > 0
    )
    masks = [
        np.full(p, sample_hyper),
        np.full(p, sample_hyper),
        np.ones((n, p), bool),
        np.asarray(win.knot_valid),
        np.repeat(session_used[:, :, None], 2, axis=2),
        np.repeat(valid[:, :, None], n_local, axis=2),
    ]
    return np.flatnonzero(np.concatenate([m.ravel() for m in masks]))


# ------------------------------------------------------------------ the MAP start
@dataclasses.dataclass(frozen=True)
class _Start:
    """The stacked patients at their MAP: the start of every chain."""

    problem: PopulationProblem
    g: np.ndarray  # [N, ng]
    loc: np.ndarray  # [N, W, L]
    cov: np.ndarray  # [N, ng + W·L, ng + W·L] Laplace covariance of [g, loc]
    sigma: np.ndarray
    phi: np.ndarray
    mu: np.ndarray
    omega: np.ndarray
    mu_se: np.ndarray  # standard error of μ (the chains' jitter and mass matrix)


def _calibration_scores(fit: FitResult, prior: Prior) -> np.ndarray:
    """The standard-normal calibration scores of each real session of a fit."""
    if fit.sensor is None:
        raise InputError(
            f"{fit.patient_id}: the fit has no sensor calibration table",
            field="sensor",
        )
    gain = np.asarray(fit.sensor["gain"], float)
    offset = np.asarray(fit.sensor["offset_mg_dl"], float)
    z0 = (
        np.log(gain) / prior.sensor_gain_log_sd
        if prior.sensor_gain_log_sd > 0
        else np.zeros_like(gain)
    )
    z1 = (
        offset / prior.sensor_offset_sd
        if prior.sensor_offset_sd > 0
        else np.zeros_like(offset)
    )
    return np.stack([z0, z1], axis=1).ravel()


def _map_start(
    patients: Sequence[PatientData],
    fits: Sequence[FitResult],
    *,
    model: FitModel,
    prior: Prior,
    sheet: pd.DataFrame | None,
    mu: np.ndarray,
    omega: np.ndarray,
    mu_se: np.ndarray,
    optimiser: LevenbergMarquardt,
) -> _Start:
    """Prepare and stack the patients; polish their MAP under N(μ, ω²) on θ.

    The fits give θ, the log-B knots and the calibration; the per-window local
    unknowns are not kept in a `FitResult`, so one more Levenberg–Marquardt solve from
    that point (the E-step of `fit_population`) recovers them, with the Gauss–Newton
    blocks of the joint Laplace covariance of [g, loc] (`_joint_covariance`).
    """
    if isinstance(model.noise, StudentTNoise):
        raise InputError(
            "the posterior sampler supports Gaussian CGM error only (Student-t is "
            "fitted by reweighting, not as a likelihood)",
            field="noise",
            expected="FitModel(noise=GaussianNoise())",
        )
    if isinstance(model.meals, LatentMeals):
        raise InputError(
            "the posterior sampler does not support latent meals (their sparsity "
            "prior has its mode at no carbohydrate; sampling it needs its own "
            "parameterisation)",
            field="meals",
            expected="FitModel(meals=LoggedMeals())",
        )
    prepared = []
    for patient, fit in zip(patients, fits, strict=True):
        windows, info = prepare_patient(patient, model=model, sheet=sheet, host=True)
        if info.n_knots != fit.log_b.shape[0] or info.n_windows != fit.info.n_windows:
            raise InputError(
                f"{patient.patient_id}: the record, model or sheet differ from the "
                "fit's (other windows or knots)",
                expected="the patients, model and sheet of the fit",
            )
        prepared.append(windows)
    problem = stack_windows(prepared, model=model, prior=prior)
    p = problem.n_params
    g0 = []
    for fit in fits:
        if fit.theta.shape[0] != p or not np.all(np.isfinite(fit.theta)):
            raise InputError(
                f"{fit.patient_id}: the fit has no finite estimates of the "
                f"{p} estimated parameters",
                field="estimated",
            )
        cal = _calibration_scores(fit, prior)
        g = np.concatenate([fit.theta, fit.log_b, cal])
        g0.append(
            embed_global(
                jnp.asarray(g),
                n_params=p,
                n_knots=(fit.log_b.shape[0], problem.n_knots),
                n_sessions=(cal.shape[0] // 2, problem.n_sessions),
            )
        )
    n = problem.n_patients
    obj0 = problem.objective(0)
    sigma = np.array([f.sigma_mg_dl for f in fits], float)
    phi = np.array([f.ar1 for f in fits], float)
    weights = jnp.ones(problem.windows.obs.shape)
    l0 = jnp.zeros((n, problem.windows.ts.shape[1], obj0.n_local))
    res = _solve_all(
        problem.windows,
        model,
        prior,
        jnp.broadcast_to(jnp.asarray(mu), (n, p)),  # every patient's prior centre
        jnp.asarray(omega),
        optimiser,
        jnp.stack(g0),
        l0,
        jnp.asarray(sigma),
        jnp.asarray(phi),
        weights,
        (  # every lane: the whole iteration budget, from the first damping
            jnp.full(n, optimiser.max_iter),
            jnp.full(n, optimiser.lambda0, jnp.asarray(sigma).dtype),
        ),
        None,
    )
    cost = np.asarray(res.cost)
    if not np.all(np.isfinite(cost)):
        bad = [
            f.patient_id for f, c in zip(fits, cost, strict=True) if not np.isfinite(c)
        ]
        raise InputError(
            f"the model cannot be evaluated at the MAP of {bad}",
            expected="patients whose fit succeeded",
        )
    return _Start(
        problem=problem,
        g=np.asarray(res.g),
        loc=np.asarray(res.loc),
        cov=_joint_covariance(res.blocks),
        sigma=sigma,
        phi=phi,
        mu=np.asarray(mu, float),
        omega=np.asarray(omega, float),
        mu_se=np.asarray(mu_se, float),
    )


def _joint_covariance(blocks: Blocks) -> np.ndarray:
    """Laplace covariance of each patient's [g, loc] (Gauss–Newton Hessian, pinv).

    The optimiser's blocks are those of an arrow matrix (`LevenbergMarquardt`); here
    it is assembled whole (small: ng + W·L unknowns per patient) and inverted, so that
    the covariance of the local unknowns and their correlation with g come too.
    """
    hgg, hgl, hll = (np.asarray(x) for x in (blocks.hgg, blocks.hgl, blocks.hll))
    n, ng = hgg.shape[:2]
    nw, nl = hll.shape[1], hll.shape[2]
    out = []
    for i in range(n):
        h = np.zeros((ng + nw * nl,) * 2)
        h[:ng, :ng] = hgg[i]
        cross = hgl[i].transpose(1, 0, 2).reshape(ng, nw * nl)
        h[:ng, ng:], h[ng:, :ng] = cross, cross.T
        for w in range(nw):
            sl = slice(ng + w * nl, ng + (w + 1) * nl)
            h[sl, sl] = hll[i, w]
        out.append(np.linalg.pinv(0.5 * (h + h.T), hermitian=True))
    return np.stack(out)


def _build_posterior(
    problem: PopulationProblem,
    *,
    sigma,
    phi,
    mu,
    omega,
    hyperprior: Hyperprior,
    sample_hyper: bool,
    noncentred: bool,
    forward_mode: bool,
) -> _Posterior:
    """The log density of the stacked ``problem`` (see `_Posterior`).

    Args:
        problem: The stacked patients.
        sigma: CGM error SD of each patient [mg/dL].
        phi: AR(1) coefficient of each patient's CGM error [-].
        mu: μ, fixed unless ``sample_hyper`` (log scale).
        omega: ω, likewise.
        hyperprior: Priors of μ and ω when sampled.
        sample_hyper: Sample μ and ω (the population model) or keep them fixed.
        noncentred: Sample η = (θ − μ)/ω (only with ``sample_hyper``).
        forward_mode: Differentiate the solves in forward mode.
    """
    obj0 = problem.objective(0)
    centre = obj0.prior_centre()
    dtype = centre.dtype
    log_sd = jnp.asarray(problem.prior.log_sd, dtype)
    mu_sd, omega_scale = hyperprior.scales(log_sd)
    return _Posterior(
        problem=problem,
        sigma=jnp.asarray(sigma, dtype),
        phi=jnp.asarray(phi, dtype),
        weights=jnp.ones(problem.windows.obs.shape, dtype),
        centre=centre,
        mu_sd=mu_sd,
        omega_scale=omega_scale,
        mu0=jnp.asarray(mu, dtype),
        omega0=jnp.asarray(omega, dtype),
        free=_free_index(problem, obj0.n_local, sample_hyper),
        n_local=obj0.n_local,
        sample_hyper=sample_hyper,
        noncentred=noncentred and sample_hyper,
        forward_mode=forward_mode,
    )


def _laplace(post: _Posterior, start: _Start, *, dense: bool):
    """The MAP and its Laplace covariance in the sampled coordinates.

    Each patient's block is the joint Laplace covariance of its [θ (or η), knots,
    calibration, local unknowns] under the fitted μ and ω; μ and log ω get the
    diagonal variances ``mu_se``² of the fit (ω²/n where it is not finite) and
    1/(2n) (normal theory); the blocks do not correlate.

    Returns:
        ``(z0, variance, covariance or None, blocks)``: the MAP ``[d]``, the diagonal
        of the covariance ``[d]``, the dense covariance ``[d, d]`` if ``dense``, and
        the blocks as (full-vector indices, covariance) pairs.
    """
    pr = post.problem
    n, p, k, s = pr.n_patients, pr.n_params, pr.n_knots, pr.n_sessions
    nw, nl = start.loc.shape[1:]
    mu, omega = start.mu, start.omega
    theta = start.g[:, :p]
    jac = np.ones(start.cov.shape[1])
    if post.noncentred:
        theta = (theta - mu) / omega
        jac[:p] = 1.0 / omega
    parts = {
        "mu": mu,
        "log_omega": np.log(omega),
        "theta": theta,
        "knots": start.g[:, p : p + k],
        "cal": start.g[:, p + k :].reshape(n, s, 2),
        "loc": start.loc,
    }
    sizes = {name: int(np.prod(shape)) for name, shape in post.shapes.items()}
    offset = dict(zip(sizes, np.cumsum([0, *sizes.values()])[:-1], strict=True))
    blocks = []
    if post.sample_hyper:
        var = np.where(np.isfinite(start.mu_se), start.mu_se**2, omega**2 / n)
        blocks.append((offset["mu"] + np.arange(p), np.diag(var)))
        blocks.append((offset["log_omega"] + np.arange(p), np.eye(p) / (2.0 * n)))
    for i in range(n):
        idx = np.concatenate(
            [
                offset["theta"] + i * p + np.arange(p),
                offset["knots"] + i * k + np.arange(k),
                offset["cal"] + i * 2 * s + np.arange(2 * s),
                offset["loc"] + i * nw * nl + np.arange(nw * nl),
            ]
        )
        blocks.append((idx, start.cov[i] * jac[:, None] * jac[None, :]))
    full = np.concatenate([np.ravel(parts[name]) for name in post.shapes])
    total = full.shape[0]
    variance = np.zeros(total)
    for idx, c in blocks:
        variance[idx] = np.diag(c)
    covariance = None
    if dense:
        covariance = np.zeros((total, total))
        for idx, c in blocks:
            covariance[np.ix_(idx, idx)] = c
        covariance = covariance[np.ix_(post.free, post.free)]
    return full[post.free], variance[post.free], covariance, blocks


def _initial_points(
    post: _Posterior, start: _Start, sampler: NUTSSampler, blocks, *, key
) -> Array:
    """Every chain's start ``[chains, d]``: the MAP plus Laplace-distributed noise.

    The noise is ``init_jitter`` × a draw from the Laplace approximation (with its
    correlations: independent jitter of correlated unknowns would put the chains far
    off the posterior's ridges).
    """
    z0, *_ = _laplace(post, start, dense=False)
    total = sum(int(np.prod(shape)) for shape in post.shapes.values())
    eps = np.asarray(jax.random.normal(key, (sampler.num_chains, total)))
    noise = np.zeros_like(eps)
    for idx, c in blocks:
        vals, vecs = np.linalg.eigh(0.5 * (c + c.T))
        root = vecs * np.sqrt(np.maximum(vals, 0.0))[None, :]
        noise[:, idx] = eps[:, idx] @ root.T
    z = z0[None, :] + sampler.init_jitter * noise[:, post.free]
    return jnp.asarray(z)


# ------------------------------------------------------------------------ sampling
def _run_nuts(post: _Posterior, z0: Array, inverse_mass, sampler: NUTSSampler, *, key):
    """NUTS from ``z0`` ``[chains, d]`` -> (draws ``[chains, draws, d]``, stats, s).

    The mass matrix adaptation starts from ``inverse_mass`` (the Laplace covariance:
    diagonal ``[d]`` or dense ``[d, d]``), so that the first warm-up window already
    moves in well-scaled coordinates.
    """
    from numpyro.infer import MCMC, NUTS

    kernel = NUTS(
        potential_fn=post.potential,
        inverse_mass_matrix=jnp.asarray(inverse_mass),
        target_accept_prob=sampler.target_accept,
        max_tree_depth=sampler.max_tree_depth,
        dense_mass=sampler.dense_mass,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=sampler.num_warmup,
        num_samples=sampler.num_samples,
        num_chains=sampler.num_chains,
        chain_method=sampler.chain_method,
        progress_bar=False,
    )
    fields = (
        "diverging",
        "energy",
        "num_steps",
        "accept_prob",
        "adapt_state.step_size",
        "potential_energy",
    )
    t0 = time.perf_counter()
    # NumPyro mixes integer and float arrays (e.g. the mean acceptance probability) and
    # relies on rank promotion: standard promotion here, whatever the caller's setting
    # (tests run with strict promotion); the log density itself is strict-clean.
    with (
        jax.numpy_dtype_promotion("standard"),
        jax.numpy_rank_promotion("allow"),
        warnings.catch_warnings(),
    ):
        # one CPU device: numpyro runs "parallel" chains in sequence, and says so
        warnings.filterwarnings("ignore", "There are not enough devices")
        mcmc.run(
            key,
            init_params=z0 if sampler.num_chains > 1 else z0[0],
            extra_fields=fields,
        )
    seconds = time.perf_counter() - t0
    draws = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    steps = np.asarray(extra["num_steps"])
    stats = {
        "diverging": np.asarray(extra["diverging"]),
        "energy": np.asarray(extra["energy"]),
        "n_steps": steps,
        "tree_depth": np.log2(steps + 1.0),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "step_size": np.asarray(extra["adapt_state.step_size"]),
        "lp": -np.asarray(extra["potential_energy"]),
    }
    return np.asarray(draws), stats, seconds


def _inference_data(
    post: _Posterior,
    start: _Start,
    draws: np.ndarray,
    stats: dict,
    *,
    patient_id: Sequence[str],
    sampler: NUTSSampler,
    seconds: float,
):
    """ArviZ `InferenceData` of the draws (named dims and coordinates)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz's refactor notice
        import arviz as az

    pr = post.problem
    c, s, d = draws.shape
    named = jax.jit(jax.vmap(post.named))(jnp.asarray(draws.reshape(c * s, d)))
    named = {k: np.asarray(v).reshape(c, s, *v.shape[1:]) for k, v in named.items()}
    knot_valid = np.asarray(pr.windows.knot_valid)
    valid = np.asarray(pr.windows.valid).astype(float)
    used = np.einsum("nws,nw->ns", np.asarray(pr.windows.session), valid) > 0
    prior = pr.prior
    log_b = np.where(knot_valid, named["knots"], np.nan)
    gain = np.where(
        used, np.exp(prior.sensor_gain_log_sd * named["cal"][..., 0]), np.nan
    )
    offset = np.where(used, prior.sensor_offset_sd * named["cal"][..., 1], np.nan)
    posterior = {
        "theta": named["theta"],
        "log_b": log_b,
        "sensor_gain": gain,
        "sensor_offset": offset,
    }
    dims = {
        "mu": ["param"],
        "omega": ["param"],
        "theta": ["patient", "param"],
        "log_b": ["patient", "knot"],
        "sensor_gain": ["patient", "session"],
        "sensor_offset": ["patient", "session"],
        "knot_day": ["patient", "knot"],
        "sigma_mg_dl": ["patient"],
        "ar1": ["patient"],
        "theta_map": ["patient", "param"],
        "theta_sd_laplace": ["patient", "param"],
        "log_b_map": ["patient", "knot"],
        "log_b_sd_laplace": ["patient", "knot"],
        "mu_map": ["param"],
        "omega_map": ["param"],
    }
    if post.sample_hyper:
        posterior = {"mu": named["mu"], "omega": named["omega"], **posterior}
    p, k = pr.n_params, pr.n_knots
    sd = np.sqrt(np.maximum(np.diagonal(start.cov, axis1=1, axis2=2), 0.0))
    sd = sd[:, : start.g.shape[1]]
    constant = {
        "knot_day": np.where(knot_valid, np.asarray(pr.windows.knot_days), np.nan),
        "sigma_mg_dl": start.sigma,
        "ar1": start.phi,
        "theta_map": start.g[:, :p],
        "theta_sd_laplace": sd[:, :p],
        "log_b_map": np.where(knot_valid, start.g[:, p : p + k], np.nan),
        "log_b_sd_laplace": np.where(knot_valid, sd[:, p : p + k], np.nan),
    }
    if post.sample_hyper:
        constant.update(mu_map=start.mu, omega_map=start.omega)
    import numpyro

    return az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        constant_data=constant,
        coords={
            "param": list(prior.estimated),
            "patient": list(patient_id),
            "knot": np.arange(k),
            "session": np.arange(pr.n_sessions),
        },
        dims=dims,
        attrs={
            "inference_library": "numpyro",
            "inference_library_version": numpyro.__version__,
            "sampler": "NUTS",
            "sampling_time": seconds,
            "num_warmup": sampler.num_warmup,
            "dense_mass": int(sampler.dense_mass),
            "target_accept": sampler.target_accept,
            "noncentred": int(post.noncentred),
            "cgm_noise": "fixed at the MAP fit's sigma_mg_dl and ar1",
            "n_unknowns": post.size,
        },
    )


def _sample(
    patients,
    fits,
    *,
    model,
    prior,
    sheet,
    mu,
    omega,
    mu_se,
    sample_hyper,
    sampler,
    hyperprior,
    optimiser,
    key,
):
    k_init, k_run = jax.random.split(key)
    start = _map_start(
        patients,
        fits,
        model=model,
        prior=prior,
        sheet=sheet,
        mu=mu,
        omega=omega,
        mu_se=mu_se,
        optimiser=optimiser,
    )
    post = _build_posterior(
        start.problem,
        sigma=start.sigma,
        phi=start.phi,
        mu=start.mu,
        omega=start.omega,
        hyperprior=hyperprior,
        sample_hyper=sample_hyper,
        noncentred=sampler.noncentred,
        forward_mode=sampler.forward_mode,
    )
    _, variance, covariance, blocks = _laplace(post, start, dense=sampler.dense_mass)
    z0 = _initial_points(post, start, sampler, blocks, key=k_init)
    inverse_mass = covariance if sampler.dense_mass else variance
    draws, stats, seconds = _run_nuts(post, z0, inverse_mass, sampler, key=k_run)
    return _inference_data(
        post,
        start,
        draws,
        stats,
        patient_id=[f.patient_id for f in fits],
        sampler=sampler,
        seconds=seconds,
    )


def _check_args(sampler, key) -> None:
    if not isinstance(sampler, NUTSSampler):
        raise InputError(
            f"sampler must be a NUTSSampler, got {type(sampler).__name__}",
            field="sampler",
        )
    if key is None:
        raise InputError("a PRNG key is required (jax.random.key(seed))", field="key")


def sample_posterior(
    patients: Sequence[PatientData],
    result: PopulationResult,
    *,
    model: FitModel | None = None,
    prior: Prior | None = None,
    sheet: pd.DataFrame | None = None,
    sampler: NUTSSampler | None = None,
    hyperprior: Hyperprior | None = None,
    fixed_population: bool = False,
    optimiser: LevenbergMarquardt = LevenbergMarquardt(),
    key: PRNGKeyArray,
):
    """Draw from the full posterior of the population model with NUTS.

    The model is `fit_population`'s, with μ and ω given the priors of `Hyperprior`
    and integrated over (see the module docstring); the CGM error of each patient is
    fixed at its fitted SD and AR(1) coefficient. Every chain starts near the MAP of
    ``result`` (θ, log B and calibration of each patient; its per-window unknowns from
    one Levenberg–Marquardt polish under the fitted μ and ω).

    Args:
        patients: The records given to `fit_population` (the patients it fitted are
            sampled; the others are ignored).
        result: The `fit_population` result.
        model: The `FitModel` of the fit (default: ``result.model`` if the result
            kept it, else ``FitModel()``).
        prior: The `Prior` of the fit (default: ``result.prior``, else ``Prior()``).
        sheet: The patient sheet of the fit (weights, transplant dates).
        sampler: NUTS settings (`NUTSSampler`; default ``NUTSSampler()``).
        hyperprior: Priors of μ and ω (`Hyperprior`; default ``Hyperprior()``).
        fixed_population: Keep μ and ω at the fitted values instead of sampling them:
            the empirical-Bayes posterior of each patient, which the Laplace bands of
            `fit_population` approximate (no ``mu``, ``omega`` in the result).
        optimiser: Optimiser of the polish of the MAP start.
        key: PRNG key (jitter of the starting points and the chains).

    Returns:
        An `arviz.InferenceData` with groups ``posterior`` (``mu``, ``omega``
        [param]; ``theta`` [patient, param] = log of the estimated fields;
        ``log_b`` [patient, knot] = log B at the knots, NaN at padding knots;
        ``sensor_gain`` [-] and ``sensor_offset`` [mg/dL] [patient, session], NaN for
        sessions a patient does not have), ``sample_stats`` (``diverging``, ``lp``,
        ``energy``, ``n_steps``, ``tree_depth``, ``acceptance_rate``,
        ``step_size``) and ``constant_data`` (``knot_day`` [day], ``sigma_mg_dl``,
        ``ar1``, and the MAP with its Laplace SDs: ``theta_map``,
        ``theta_sd_laplace``, ``log_b_map``, ``log_b_sd_laplace``; ``mu_map``,
        ``omega_map`` when μ and ω are sampled). ``theta_map`` is the polished MAP
        (equal to ``result.theta`` within the optimiser's tolerance).

    Raises:
        InputError: A bad argument; a fitted patient missing from ``patients``;
            patients, model or sheet that differ from the fit's; Student-t noise or
            latent meals (not supported).
    """
    if not isinstance(result, PopulationResult):
        raise InputError(
            f"result must be a PopulationResult, got {type(result).__name__}",
            field="result",
        )
    # the fit's own model and prior where it kept them
    if model is None:
        model = getattr(result, "model", None)
        model = FitModel() if model is None else model
    if prior is None:
        prior = getattr(result, "prior", None)
        prior = Prior() if prior is None else prior
    sampler = NUTSSampler() if sampler is None else sampler
    hyperprior = Hyperprior() if hyperprior is None else hyperprior
    _check_args(sampler, key)
    if not isinstance(hyperprior, Hyperprior):
        raise InputError(
            f"hyperprior must be a Hyperprior, got {type(hyperprior).__name__}",
            field="hyperprior",
        )
    hyperprior.scales(np.asarray(prior.log_sd, float))  # one factor per field
    if tuple(prior.estimated) != tuple(result.estimated):
        raise InputError(
            f"prior.estimated {prior.estimated} differs from the fit's "
            f"{result.estimated}",
            field="prior",
        )
    by_id = {p.patient_id: p for p in patients}
    fitted = [pid for pid in result.patient_id if pid in result.results]
    missing = [pid for pid in fitted if pid not in by_id]
    if missing:
        raise InputError(
            f"fitted patients missing from patients: {missing}", field="patients"
        )
    if not fitted:
        raise InputError("the population fit has no fitted patient", field="result")
    if result.covariates:
        raise InputError(
            "the posterior sampler does not support covariates on the typical values",
            field="result",
            expected="a population fitted without covariates",
        )
    return _sample(
        [by_id[pid] for pid in fitted],
        [result.results[pid] for pid in fitted],
        model=model,
        prior=prior,
        sheet=sheet,
        mu=np.asarray(result.mu, float),
        omega=np.asarray(result.omega, float),
        mu_se=np.asarray(result.mu_se, float),
        sample_hyper=not fixed_population,
        sampler=sampler,
        hyperprior=hyperprior,
        optimiser=optimiser,
        key=key,
    )


def sample_patient_posterior(
    data: PatientData,
    fit: FitResult,
    *,
    model: FitModel | None = None,
    prior: Prior = Prior(),
    sampler: NUTSSampler | None = None,
    optimiser: LevenbergMarquardt = LevenbergMarquardt(),
    key: PRNGKeyArray,
):
    """Draw from the posterior of one patient's `fit_patient` model with NUTS.

    The same code as `sample_posterior` with one patient and the single-patient prior
    N(log of the model's values, ``prior.log_sd``²) on θ in place of the population
    (nothing hierarchical is sampled). The body weight and transplant day are the
    fit's (``fit.info``).

    Args:
        data: The record given to `fit_patient`.
        fit: Its `FitResult`.
        model: The `FitModel` of the fit (default ``FitModel()``).
        prior: The `Prior` of the fit.
        sampler: NUTS settings (`NUTSSampler`; default ``NUTSSampler()``;
            ``noncentred`` does not apply).
        optimiser: Optimiser of the polish of the MAP start.
        key: PRNG key.

    Returns:
        An `arviz.InferenceData` as from `sample_posterior`, with one patient and
        without ``mu`` and ``omega``.

    Raises:
        InputError: As `sample_posterior`.
    """
    model = FitModel() if model is None else model
    sampler = NUTSSampler() if sampler is None else sampler
    _check_args(sampler, key)
    if not isinstance(fit, FitResult):
        raise InputError(
            f"fit must be a FitResult, got {type(fit).__name__}", field="fit"
        )
    if tuple(prior.estimated) != tuple(fit.estimated):
        raise InputError(
            f"prior.estimated {prior.estimated} differs from the fit's {fit.estimated}",
            field="prior",
        )
    info = fit.info
    sheet = pd.DataFrame(
        {
            "patient_id": [data.patient_id],
            "weight_kg": [info.weight_kg],
            "transplant_date": [
                np.nan if info.transplant_day is None else info.transplant_day
            ],
        }
    )
    centre = np.log([float(getattr(model.params, n)) for n in prior.estimated])
    return _sample(
        [data],
        [fit],
        model=model,
        prior=prior,
        sheet=sheet,
        mu=centre,
        omega=np.asarray(prior.log_sd, float),
        mu_se=np.zeros_like(centre),
        sample_hyper=False,
        sampler=sampler,
        hyperprior=Hyperprior(),
        optimiser=optimiser,
        key=key,
    )
