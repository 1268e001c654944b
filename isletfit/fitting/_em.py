r"""How the Laplace-EM of `fit_population` moves μ and ω: plain or accelerated.

One *round* of `fit_population` runs the E-step (every patient's MAP under the prior
N(μ, ω²)) and the M-step at one point x = (μ, ω), giving the EM map F(x). A strategy
only decides where the next round runs, from the points and maps seen so far:

- `PlainEM`: at F(x) (the EM iteration x ← F(x)).
- `LinearisedEM`: at the fixed point of the EM on the patients' quadratic models
  (`isletfit/fitting/_surrogate.py`), linearised at the round's E-step: the linear
  mixed-effects step of Lindstrom and Bates (1990). Most of the EM's iterations then
  cost no ODE solve; the nonlinear E-steps only re-linearise.
- `SquaremEM`: SQUAREM (Varadhan & Roland 2008, scheme S3) — from x₀, two EM steps
  x₁ = F(x₀), x₂ = F(x₁), then the extrapolation
  x' = x₀ + 2α r + α² v with r = x₁ − x₀, v = x₂ − 2x₁ + x₀ and step length
  α = ‖r‖/‖v‖ (clamped to [1, ``step_max``]), then one stabilising EM step
  x₃ = F(x'), which starts the next cycle. α = 1 gives x' = x₂ (plain EM).

Safeguards (those of the reference implementation, the R package SQUAREM, without an
objective function, plus a residual check): ``step_max`` starts at ``step_max0`` and
grows by ``mstep`` after each cycle whose α reached it; an extrapolated point whose ω
is not finite or not positive is not evaluated; an extrapolated point whose EM change
‖F(x') − x'‖ is larger than the change ‖x₂ − x₁‖ of the plain step it replaced is
rejected. Either way the cycle falls back to the plain EM point x₂ (the next cycle
starts there) and, if α had reached ``step_max``, the bound shrinks by ``mstep`` (not
below ``step_max0``). ω below ``omega_floor`` (but positive) is raised
to the floor, as the M-step floors it. Convergence is judged as for plain EM: the
round's change ‖F(x) − x‖∞ at the point it ran.

Strategies are pure: their state (`PlainEMState`, `SquaremState`, numpy arrays only)
is returned, never stored; `fit_population` saves it in its checkpoint, so a resumed
fit continues the extrapolation cycle where it stopped.

References:
    - Lindstrom MJ, Bates DM. Nonlinear mixed effects models for repeated measures
      data. Biometrics 46:673–687, 1990.
    - Varadhan R, Roland C. Simple and globally convergent methods for accelerating
      the convergence of any EM algorithm. Scand J Stat 35:335–353, 2008.
      doi:10.1111/j.1467-9469.2007.00585.x
    - Du Y, Varadhan R. SQUAREM: an R package for off-the-shelf acceleration of EM,
      MM and other EM-like monotone algorithms. J Stat Softw 92(7), 2020.
      doi:10.18637/jss.v092.i07
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import numpy as np

from .._errors import InputError
from ._surrogate import Surrogate, quadratic_e_step

__all__ = [
    "LinearisedEM",
    "LinearisedEMState",
    "PlainEM",
    "PlainEMState",
    "SquaremEM",
    "SquaremState",
    "m_step",
]


def _join(mu, omega) -> np.ndarray:
    return np.concatenate([np.asarray(mu, float), np.asarray(omega, float)])


def m_step(theta, var, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """μ and ω from the patients' estimates θ̂_i and Laplace variances diag Σ_i.

    μ = mean θ̂_i, ω² = mean[(θ̂_i − μ)² + diag Σ_i], floored at ``floor``².
    """
    mu = theta.mean(axis=0)
    omega = np.sqrt(np.maximum(np.mean((theta - mu) ** 2 + var, axis=0), floor**2))
    return mu, omega


class PlainEMState(NamedTuple):
    """State of `PlainEM`.

    Attributes:
        point: (μ, ω) of the next round, concatenated ``[2p]`` (log scale).
    """

    point: np.ndarray


class SquaremState(NamedTuple):
    """State of `SquaremEM` (one SQUAREM cycle in progress).

    Attributes:
        point: (μ, ω) of the next round, concatenated ``[2p]``.
        phase: What the next round evaluates: 0 the cycle's start x₀, 1 x₁ = F(x₀),
            2 the extrapolated point x'.
        x0: Start of the cycle.
        x1: F(x₀).
        x2: F(x₁) (the fallback of the cycle).
        step_max: Current upper bound of the step length α.
        alpha: Step length of the cycle's extrapolation (1 before it).
        extrapolated: Extrapolated points accepted so far.
        rejected: Extrapolations rejected (fallbacks to x₂) so far.
    """

    point: np.ndarray
    phase: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    x2: np.ndarray
    step_max: np.ndarray
    alpha: np.ndarray
    extrapolated: np.ndarray
    rejected: np.ndarray


class PlainEM(eqx.Module):
    """The plain EM iteration: each round runs at the previous round's M-step result."""

    def init(self, mu, omega) -> PlainEMState:
        """The state before the first round, which runs at (``mu``, ``omega``).

        Args:
            mu: Starting μ (log scale) ``[p]``.
            omega: Starting ω (log scale) ``[p]``.
        """
        return PlainEMState(point=_join(mu, omega))

    def update(
        self, state: PlainEMState, mapped, *, floor: float, n_omega: int | None = None
    ) -> PlainEMState:
        """The state after a round at ``state.point`` whose M-step gave ``mapped``.

        Args:
            state: The state the round ran from.
            mapped: F(point): the round's (μ, ω), concatenated ``[2p]`` (with
                covariates the coefficients, then ω).
            floor: The smallest ω (unused: the M-step floors it).
            n_omega: Entries of ω at the end of the point (unused).
        """
        del floor, n_omega
        return PlainEMState(point=np.asarray(mapped, float))

    @staticmethod
    def extrapolating(state: PlainEMState) -> bool:
        """Whether the next round runs at an extrapolated point (never)."""
        del state
        return False


class SquaremEM(eqx.Module):
    """SQUAREM acceleration of the EM for μ and ω (see the module docstring).

    Each cycle costs three rounds (two EM steps and the stabilising one at the
    extrapolated point) and, near the fixed point, moves as far as many plain EM
    steps when the EM converges slowly (large between-patient variances poorly
    determined by few patients, strong shrinkage).

    Attributes:
        step_max0: Initial (and smallest) upper bound of the step length α.
        mstep: Factor by which the bound grows when α reaches it, and shrinks after a
            rejected extrapolation.
        step_min: Lower bound of α (1: never shorter than two plain EM steps).

    References:
        Varadhan R, Roland C. Scand J Stat 35:335–353, 2008 (scheme S3; defaults of
        the SQUAREM package: ``step.min0 = 1``, ``step.max0 = 1``, ``mstep = 4``).
    """

    step_max0: float = 1.0
    mstep: float = 4.0
    step_min: float = 1.0

    def __check_init__(self):
        if not (self.step_min >= 1.0 and self.step_max0 >= self.step_min):
            raise InputError(
                f"SquaremEM: need 1 <= step_min <= step_max0, got step_min="
                f"{self.step_min}, step_max0={self.step_max0}",
                field="SquaremEM",
            )
        if not self.mstep > 1.0:
            raise InputError(
                f"SquaremEM: mstep must be > 1, got {self.mstep}", field="SquaremEM"
            )

    def init(self, mu, omega) -> SquaremState:
        """The state before the first round, which runs at (``mu``, ``omega``).

        Args:
            mu: Starting μ (log scale) ``[p]``.
            omega: Starting ω (log scale) ``[p]``.
        """
        x = _join(mu, omega)
        return SquaremState(
            point=x,
            phase=np.asarray(0),
            x0=x,
            x1=x,
            x2=x,
            step_max=np.asarray(float(self.step_max0)),
            alpha=np.asarray(1.0),
            extrapolated=np.asarray(0),
            rejected=np.asarray(0),
        )

    def update(
        self, state: SquaremState, mapped, *, floor: float, n_omega: int | None = None
    ) -> SquaremState:
        """The state after a round at ``state.point`` whose M-step gave ``mapped``.

        Args:
            state: The state the round ran from.
            mapped: F(point): the round's (μ, ω), concatenated ``[2p]`` (with
                covariates the coefficients, then ω).
            floor: The smallest ω [log units].
            n_omega: Entries of ω at the end of the point (default: half of it).
        """
        fx = np.asarray(mapped, float)
        phase = int(state.phase)
        if phase == 0:
            return state._replace(point=fx, phase=np.asarray(1), x1=fx)
        if phase == 1:
            x0, x1, x2 = state.x0, state.x1, fx
            r = x1 - x0
            v = x2 - 2.0 * x1 + x0
            nr, nv = np.linalg.norm(r), np.linalg.norm(v)
            alpha = nr / nv if nv > 0 and np.isfinite(nr / nv) else 1.0
            alpha = float(np.clip(alpha, self.step_min, float(state.step_max)))
            state = state._replace(x2=x2, alpha=np.asarray(alpha))
            if alpha == 1.0:  # x' = x2: the cycle was two plain EM steps
                return self._next_cycle(state, x2, accepted=False)
            x = x0 + 2.0 * alpha * r + alpha**2 * v
            p = x.shape[0] // 2 if n_omega is None else x.shape[0] - n_omega
            if not (np.all(np.isfinite(x)) and np.all(x[p:] > 0.0)):
                return self._reject(state)
            x[p:] = np.maximum(x[p:], floor)
            return state._replace(point=x, phase=np.asarray(2))
        # phase 2: the stabilising EM step from the extrapolated point
        change = np.linalg.norm(fx - state.point)
        plain = np.linalg.norm(state.x2 - state.x1)
        if np.all(np.isfinite(fx)) and change <= plain:
            return self._next_cycle(state, fx, accepted=True)
        return self._reject(state)

    def _next_cycle(self, state: SquaremState, x, *, accepted: bool) -> SquaremState:
        """A new cycle from ``x``; the bound widens if α reached it."""
        step_max = float(state.step_max)
        if float(state.alpha) == step_max:
            step_max *= self.mstep
        return state._replace(
            point=x,
            phase=np.asarray(0),
            x0=x,
            x1=x,
            x2=x,
            step_max=np.asarray(step_max),
            alpha=np.asarray(1.0),
            extrapolated=np.asarray(int(state.extrapolated) + int(accepted)),
        )

    def _reject(self, state: SquaremState) -> SquaremState:
        """Fall back to the cycle's plain EM point x₂; the bound shrinks if α hit it."""
        step_max = float(state.step_max)
        if float(state.alpha) == step_max:
            step_max = max(float(self.step_max0), step_max / self.mstep)
        x2 = state.x2
        return state._replace(
            point=x2,
            phase=np.asarray(0),
            x0=x2,
            x1=x2,
            step_max=np.asarray(step_max),
            alpha=np.asarray(1.0),
            rejected=np.asarray(int(state.rejected) + 1),
        )

    @staticmethod
    def extrapolating(state: SquaremState) -> bool:
        """Whether the next round runs at an extrapolated point."""
        return int(state.phase) == 2


class LinearisedEMState(NamedTuple):
    """State of `LinearisedEM`.

    Attributes:
        point: (μ, ω) of the next round, concatenated ``[2p]``.
        inner_rounds: EM rounds on the quadratic models so far (all rounds).
        step: The last round's residual (its fixed point minus where it ran), NaN
            before the first.
        relax: The fraction of that residual the last round moved by [-].
    """

    point: np.ndarray
    inner_rounds: np.ndarray
    step: np.ndarray
    relax: np.ndarray


class LinearisedEM(eqx.Module):
    """EM to convergence on each round's linearisation (Lindstrom–Bates alternation).

    After a round's E-step each patient's posterior is replaced by its quadratic model
    in θ (`isletfit.fitting._surrogate`), on which the E-step is closed-form. The
    ``inner`` strategy iterates E- and M-steps on these models until (μ, ω) moves by
    less than ``tol``; that point is where the next round runs, and the patients'
    starting points there are the quadratic models' MAPs. The rounds stop, as for
    the other strategies, when a round's (μ, ω) is within the fit's tolerance of the
    point it ran at — then the linearisation is exact to that tolerance and the point
    is a fixed point of the Laplace-EM.

    Where the rounds oscillate (a residual that reverses the last one: the quadratic
    models overshoot, e.g. for a patient whose data pull a parameter against its
    soft physiological bound, where Gauss–Newton misses the curvature of the bound),
    the next point is under-relaxed: with r the ratio of the two residuals along the
    last one, the map's rate there is λ = 1 + (r − 1)/α (α the last relaxation), and
    the round moves by 1/(1 − λ) of its residual, which cancels a rate λ < 0 (a
    secant step, as in Aitken's Δ²). A residual that does not reverse is taken whole.

    Jumping to each linearisation's fixed point passes the E-steps' own imprecision
    (each stops within the optimiser's tolerance) to μ and ω with the gain of the EM's
    slow directions. With tightly solved E-steps it needs fewer of them than the plain
    EM (12 against 22 in ``tests/test_population.py``); at the default optimiser
    tolerance its rounds can wander instead of converging (``docs/population.md``).

    Attributes:
        inner: Strategy of the EM on the quadratic models (`PlainEM` or `SquaremEM`).
        tol: Stop the inner EM when no μ or ω moves by more than this [log units].
        max_rounds: Most inner EM rounds per linearisation.

    References:
        Lindstrom MJ, Bates DM. Biometrics 46:673–687, 1990 (alternating penalised
        nonlinear least squares and linear mixed-effects steps).
    """

    inner: PlainEM | SquaremEM = SquaremEM()
    tol: float = 1e-7
    max_rounds: int = 2000

    def __check_init__(self):
        if not isinstance(self.inner, PlainEM | SquaremEM):
            raise InputError(
                f"LinearisedEM: inner must be PlainEM() or SquaremEM(), got "
                f"{self.inner!r}",
                field="LinearisedEM",
            )
        if not (self.tol > 0 and self.max_rounds >= 1):
            raise InputError(
                f"LinearisedEM: need tol > 0 and max_rounds >= 1, got tol={self.tol}, "
                f"max_rounds={self.max_rounds}",
                field="LinearisedEM",
            )

    def init(self, mu, omega) -> LinearisedEMState:
        """The state before the first round, which runs at (``mu``, ``omega``)."""
        x = _join(mu, omega)
        return LinearisedEMState(
            point=x,
            inner_rounds=np.asarray(0),
            step=np.full(x.shape, np.nan),
            relax=np.asarray(1.0),
        )

    def update(
        self, state: LinearisedEMState, mapped, *, floor: float, inner_rounds: int = 0
    ) -> LinearisedEMState:
        """The state after a round at ``state.point`` whose inner EM ended at ``mapped``.

        Args:
            state: The state the round ran from.
            mapped: The inner EM's fixed point, concatenated ``[2p]``.
            floor: The smallest ω (unused: the M-step floors it).
            inner_rounds: Inner EM rounds the round took.
        """
        del floor  # a convex combination of two floored points is floored
        mapped = np.asarray(mapped, float)
        step = mapped - state.point
        last = np.asarray(state.step, float)
        relax = 1.0
        norm = float(last @ last) if np.all(np.isfinite(last)) else 0.0
        if norm > 0 and float(step @ last) < 0:
            ratio = float(step @ last) / norm
            rate = 1.0 + (ratio - 1.0) / float(state.relax)
            if rate < 0:
                relax = 1.0 / (1.0 - rate)
        return LinearisedEMState(
            point=state.point + relax * step,
            inner_rounds=np.asarray(int(state.inner_rounds) + inner_rounds),
            step=step,
            relax=np.asarray(relax),
        )

    @staticmethod
    def extrapolating(state: LinearisedEMState) -> bool:
        """Whether the next round runs at an extrapolated point (never)."""
        del state
        return False

    def fixed_point(
        self, surrogate: Surrogate, point, *, floor: float
    ) -> tuple[np.ndarray, int]:
        """The EM's fixed point on the quadratic models, from ``point``.

        Args:
            surrogate: The quadratic models of the patients in the M-step.
            point: Where the inner EM starts, (μ, ω) concatenated ``[2p]``.
            floor: The smallest ω [log units].

        Returns:
            ``(x, rounds)``: the last M-step's (μ, ω) and the inner rounds taken.
        """
        x = np.asarray(point, float)
        p = x.shape[0] // 2
        state = self.inner.init(x[:p], x[p:])
        mapped = x
        for rounds in range(1, self.max_rounds + 1):
            x = state.point
            delta, cov = quadratic_e_step(surrogate, x[:p], x[p:])
            var = np.diagonal(cov, axis1=1, axis2=2)
            mapped = _join(*m_step(surrogate.theta + delta, var, floor))
            if not np.all(np.isfinite(mapped)):  # a singular model: stay where it was
                return x, rounds
            if np.max(np.abs(mapped - x)) < self.tol:
                break
            state = self.inner.update(state, mapped, floor=floor)
        return mapped, rounds
