r"""The slow (days) subsystem: graft functional capacity B(t) over the follow-up.

B is the graft's functional secretory capacity as a fraction of a healthy adult's
(B = 1: secretion equal to a healthy adult's at every glucose). CGM cannot separate
beta-cell mass from per-cell function (Ha & Sherman 2020), so B is their product.

Two differentiable forms:

- `MechanisticGraft`: engraftment of a functional mass on the infusion day, maturation
  of per-cell function after an onset lag, loss (rejection/exhaustion) and an optional
  Topp-type glucose-dependent turnover of mass driven by the glucose the fast model
  implies (`FastModelGlucose`) — or, in the Topp (2000) configuration, by the Topp
  model's own quasi-steady glucose (`ToppGlucose`):

  $$\dot m = \big[g\,(-d_0 + r_1 G - r_2 G^2) - k_{loss}\big]\,m,\qquad
  \dot\varphi = \frac{\mathrm{sigmoid}((t - t_{inf} - t_{lag})/w)}{\tau_{mat}}(1-\varphi),$$

  $B = m\varphi$ for $t \ge t_{inf}$ and $B = 0$ before; $m(t_{inf})$ is the engrafted
  mass and $\varphi(t_{inf})$ the initial maturation.
- `FlexibleGraft`: log B on a day/week grid of knots, interpolated linearly, with a
  random-walk smoothness prior for fitting.

References:
    - Topp B et al. J Theor Biol 206:605-619, 2000 (turnover rates d0, r1, r2).
    - Ha J, Sherman A. Type 2 diabetes: one disease, many pathways. Am J Physiol
      Endocrinol Metab 319:E410-E426, 2020 (function vs mass timescales).
    - Reichman TW et al. Stem cell-derived, fully differentiated islets for type 1
      diabetes. N Engl J Med 393:858-868, 2025 (C-peptide by day 90, function rising to
      day 365 after zimislecel).
"""

from __future__ import annotations

import abc

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float
from ._params import Params
from ._steady_state import steady_state_glucose
from ._topp import ToppParams, topp_turnover

__all__ = [
    "AbstractGlucoseFeedback",
    "AbstractGraft",
    "FastModelGlucose",
    "FlexibleGraft",
    "MechanisticGraft",
    "ToppGlucose",
]


def _scalar(default):
    return eqx.field(default=default, converter=jnp.asarray)


# ------------------------------------------------------------------ glucose feedback
class AbstractGlucoseFeedback(eqx.Module):
    """Glucose that drives graft turnover, as a function of the functional mass."""

    @abc.abstractmethod
    def __call__(self, b: Float[Array, ""]) -> Float[Array, ""]:
        """Glucose [mg/dL] when the graft's functional capacity is ``b``."""


class FastModelGlucose(AbstractGlucoseFeedback):
    """Fasting steady-state glucose of the fast model at graft capacity B.

    The quasi-steady-state reduction of Topp et al. (2000): glucose relaxes in hours,
    the graft in weeks, so the slow subsystem sees the fast subsystem at its steady
    state for the current B and basal insulin.

    Attributes:
        params: Fast-model parameters of the patient.
        basal: Exogenous basal insulin rate [pmol/kg/min].
    """

    params: Params
    basal: Float[Array, ""] = _scalar(0.0)

    def __call__(self, b):
        return steady_state_glucose(self.params, b=b, basal=self.basal)


class ToppGlucose(AbstractGlucoseFeedback):
    """Quasi-steady glucose of the Topp (2000) model at beta-cell mass β [mg].

    Attributes:
        topp: Topp model parameters.
    """

    topp: ToppParams = eqx.field(default_factory=ToppParams)

    def __call__(self, b):
        return self.topp.quasi_steady_glucose(b)


# ------------------------------------------------------------------ graft trajectories
class AbstractGraft(eqx.Module):
    """A graft functional-capacity trajectory B(t) over follow-up days."""

    @abc.abstractmethod
    def __call__(self, days: Float[ArrayLike, " days"]) -> Float[Array, " days"]:
        """B at each of ``days`` [fraction of a healthy adult's]."""


class FlexibleGraft(AbstractGraft):
    """log B on a grid of knots, linearly interpolated (constant beyond the ends).

    Attributes:
        knot_days: Knot times [day], ascending.
        log_b: log B at each knot [-].
        infusion_day: B = 0 before this day [day]; ``-inf`` for a graft present
            throughout.
    """

    knot_days: Float[Array, " knots"] = eqx.field(converter=jnp.asarray)
    log_b: Float[Array, " knots"] = eqx.field(converter=jnp.asarray)
    infusion_day: Float[Array, ""] = _scalar(-jnp.inf)

    def __check_init__(self):
        if self.knot_days.ndim != 1 or self.knot_days.shape != self.log_b.shape:
            raise ValueError(
                "FlexibleGraft.knot_days and FlexibleGraft.log_b must be 1-D of the same "
                f"length, got {self.knot_days.shape} and {self.log_b.shape}"
            )
        if self.knot_days.shape[0] < 1:
            raise ValueError("FlexibleGraft.knot_days needs at least one knot")
        if not isinstance(self.knot_days, jax.core.Tracer):
            k = np.asarray(self.knot_days)
            if not np.isfinite(k).all() or (np.diff(k) <= 0).any():
                raise ValueError(
                    "FlexibleGraft.knot_days must be finite and strictly ascending [day]"
                )

    def __call__(self, days):
        days = jnp.asarray(days, self.log_b.dtype)
        b = jnp.exp(jnp.interp(days, self.knot_days, self.log_b))
        return jnp.where(days >= self.infusion_day, b, 0.0)

    def random_walk_log_prior(self, sigma: Float[ArrayLike, ""]) -> Float[Array, ""]:
        r"""Log density of a Gaussian random walk on log B.

        $\log p = \sum_k \log \mathcal N(\log B_{k+1} - \log B_k;\,0,\,\sigma^2 \Delta t_k)$.

        Args:
            sigma: Random-walk scale [1/sqrt(day)] (e.g. 0.05: log B drifts by about
                0.05·sqrt(7) ≈ 13 % in a week).
        """
        dt = jnp.diff(self.knot_days)
        dlog = jnp.diff(self.log_b)
        var = sigma**2 * dt
        return jnp.sum(-0.5 * dlog**2 / var - 0.5 * jnp.log(2.0 * jnp.pi * var))

    @classmethod
    def on_grid(
        cls,
        start_day: float,
        end_day: float,
        step_days: float = 7.0,
        *,
        b: float | Float[ArrayLike, " knots"] = 0.5,
        infusion_day: float = -np.inf,
    ) -> FlexibleGraft:
        """Knots every ``step_days`` from ``start_day`` to (at least) ``end_day``.

        Args:
            start_day: First knot [day].
            end_day: Last day to cover [day].
            step_days: Knot spacing [day].
            b: Initial B at every knot (scalar) or per knot.
            infusion_day: B = 0 before this day [day].
        """
        n = int(np.ceil((end_day - start_day) / step_days)) + 1
        knots = start_day + step_days * np.arange(n)
        log_b = jnp.log(jnp.broadcast_to(jnp.asarray(b, float), (n,)))
        return cls(knot_days=knots, log_b=log_b, infusion_day=infusion_day)


class MechanisticGraft(AbstractGraft):
    """Engraftment, maturation, loss and optional glucose-dependent turnover.

    Attributes:
        infusion_day: Day of the islet infusion [day].
        engrafted: Functional mass engrafted at infusion [fraction of a healthy adult's;
            mg in the Topp configuration].
        initial_maturation: Per-cell function at infusion [0–1].
        onset_lag: Days after infusion at which maturation is half switched on [day].
        onset_width: Width of the maturation switch [day].
        tau_maturation: Time constant of maturation once switched on [day].
        loss_rate: Loss of graft mass (rejection, exhaustion) [1/day].
        turnover_gain: Scale of the Topp glucose-dependent turnover [-] (0 = off; 1 =
            Topp's rates).
        d0: Topp death rate at zero glucose [1/day].
        r1: Topp glucose-driven replication [dL/mg/day].
        r2: Topp glucotoxic death [dL²/mg²/day].
        feedback: Glucose driving turnover (`FastModelGlucose`, `ToppGlucose`), or None
            for no turnover.
    """

    infusion_day: Float[Array, ""] = _scalar(0.0)
    engrafted: Float[Array, ""] = _scalar(1.0)
    initial_maturation: Float[Array, ""] = _scalar(0.0)
    onset_lag: Float[Array, ""] = _scalar(21.0)
    onset_width: Float[Array, ""] = _scalar(7.0)
    tau_maturation: Float[Array, ""] = _scalar(60.0)
    loss_rate: Float[Array, ""] = _scalar(0.0)
    turnover_gain: Float[Array, ""] = _scalar(1.0)
    d0: Float[Array, ""] = _scalar(0.06)
    r1: Float[Array, ""] = _scalar(0.84e-3)
    r2: Float[Array, ""] = _scalar(0.24e-5)
    feedback: AbstractGlucoseFeedback | None = None

    def vector_field(self, t, y: Float[Array, " 2"], args=None) -> Float[Array, " 2"]:
        """d(m, φ)/dt [mass/day, 1/day] (diffrax signature; ``t`` in days)."""
        m, phi = y[0], y[1]
        growth = -self.loss_rate
        if self.feedback is not None:
            g = self.feedback(m * phi)
            growth = growth + self.turnover_gain * topp_turnover(
                g, self.d0, self.r1, self.r2
            )
        switch = jax.nn.sigmoid(
            (t - self.infusion_day - self.onset_lag) / self.onset_width
        )
        dphi = switch / self.tau_maturation * (1.0 - phi)
        return jnp.stack([growth * m, dphi])

    def solve(
        self,
        days: Float[ArrayLike, " days"],
        *,
        rtol: float = 1e-8,
        atol: float = 1e-10,
        max_steps: int = 16384,
    ) -> tuple[Float[Array, " days 2"], dfx.RESULTS]:
        """States (m, φ) at ``days`` (clipped to the infusion day) and the result code."""
        days = jnp.asarray(days, jnp.result_type(self.engrafted, float))
        order = jnp.argsort(days)
        ts = jnp.maximum(days[order], self.infusion_day)
        t0 = self.infusion_day
        y0 = jnp.stack([self.engrafted, self.initial_maturation + 0.0 * self.engrafted])
        sol = dfx.diffeqsolve(
            dfx.ODETerm(self.vector_field),
            dfx.Tsit5(),
            t0=t0,
            t1=jnp.maximum(ts[-1], t0),
            dt0=None,
            y0=y0,
            saveat=dfx.SaveAt(ts=ts),
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol, dtmax=30.0),
            max_steps=max_steps,
            throw=False,
        )
        ys = jnp.zeros_like(sol.ys).at[order].set(sol.ys)
        return ys, sol.result

    def __call__(self, days):
        days = jnp.asarray(days, jnp.result_type(self.engrafted, float))
        ys, _ = self.solve(days)
        return jnp.where(days >= self.infusion_day, ys[:, 0] * ys[:, 1], 0.0)
