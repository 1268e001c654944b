r"""The Topp et al. (2000) beta-cell mass–insulin–glucose (βIG) model.

The reference configuration of isletfit's slow subsystem.
Time in days; G plasma glucose [mg/dL], I plasma insulin [µU/mL], β beta-cell mass [mg]:

$$\dot G = R_0 - (E_{G0} + S_I I) G,\qquad
\dot I = \frac{\beta \sigma G^2}{\alpha + G^2} - k I,\qquad
\dot\beta = (-d_0 + r_1 G - r_2 G^2)\beta.$$

With the published parameters the model has a stable physiological fixed point
(G = 100 mg/dL, I = 10 µU/mL, β = 300 mg), a saddle (G = 250 mg/dL, I ≈ 2.8 µU/mL,
β ≈ 37 mg) and a stable pathological point (β = 0, G = R0/EG0 = 600 mg/dL). Because
insulin and glucose relax in minutes and β in months, the slow dynamics are those of
β with G at its quasi-steady value G*(β) (`ToppParams.quasi_steady_glucose`).

Reference:
    Topp B, Promislow K, de Vries G, Miura RM, Finegood DT. A model of β-cell mass,
    insulin, and glucose kinetics: pathways to diabetes. J Theor Biol 206:605-619, 2000.
    doi:10.1006/jtbi.2000.2150. Parameter values as encoded in BioModels
    BIOMD0000000341.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Float

__all__ = ["ToppParams", "topp_turnover"]


def topp_turnover(
    g: Float[ArrayLike, "..."],
    d0: Float[ArrayLike, ""],
    r1: Float[ArrayLike, ""],
    r2: Float[ArrayLike, ""],
) -> Float[Array, "..."]:
    """Glucose-dependent net growth rate of beta-cell mass, -d0 + r1 G - r2 G² [1/day].

    Args:
        g: Glucose [mg/dL].
        d0: Death rate at zero glucose [1/day].
        r1: Glucose-driven replication [dL/mg/day].
        r2: Glucotoxic death [dL²/mg²/day].
    """
    g = jnp.asarray(g)
    return -d0 + r1 * g - r2 * g * g


class ToppParams(eqx.Module):
    """Parameters of the Topp 2000 βIG model (time in days).

    Attributes:
        r0: Glucose production at zero glucose [mg/dL/day].
        eg0: Glucose effectiveness at zero insulin [1/day].
        si: Insulin sensitivity [mL/µU/day].
        sigma: Maximal insulin secretion per mg beta cells [µU/mL/day/mg].
        alpha: Hill constant of secretion [mg²/dL²] (half-maximal at sqrt(alpha)).
        k: Insulin clearance [1/day].
        d0: Beta-cell death rate at zero glucose [1/day].
        r1: Glucose-driven replication [dL/mg/day].
        r2: Glucotoxic death [dL²/mg²/day].
    """

    r0: Float[Array, ""] = eqx.field(default=864.0, converter=jnp.asarray)
    eg0: Float[Array, ""] = eqx.field(default=1.44, converter=jnp.asarray)
    si: Float[Array, ""] = eqx.field(default=0.72, converter=jnp.asarray)
    sigma: Float[Array, ""] = eqx.field(default=43.2, converter=jnp.asarray)
    alpha: Float[Array, ""] = eqx.field(default=20000.0, converter=jnp.asarray)
    k: Float[Array, ""] = eqx.field(default=432.0, converter=jnp.asarray)
    d0: Float[Array, ""] = eqx.field(default=0.06, converter=jnp.asarray)
    r1: Float[Array, ""] = eqx.field(default=0.84e-3, converter=jnp.asarray)
    r2: Float[Array, ""] = eqx.field(default=0.24e-5, converter=jnp.asarray)

    def vector_field(
        self, t: Float[ArrayLike, ""], y: Float[Array, " 3"], args=None
    ) -> Float[Array, " 3"]:
        """d(G, I, β)/dt [mg/dL/day, µU/mL/day, mg/day] (diffrax signature)."""
        g, i, beta = y[0], y[1], y[2]
        dg = self.r0 - (self.eg0 + self.si * i) * g
        di = beta * self.sigma * g * g / (self.alpha + g * g) - self.k * i
        dbeta = topp_turnover(g, self.d0, self.r1, self.r2) * beta
        return jnp.stack([dg, di, dbeta])

    def quasi_steady_glucose(self, beta: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Glucose [mg/dL] at which dG/dt = dI/dt = 0 for beta-cell mass ``beta`` [mg].

        Solves R0 = (EG0 + SI·I(G))·G with I(G) = β σ G²/(k(α + G²)) by bisection on
        (0, R0/EG0] (the left side minus the right decreases in G), with an exact
        implicit-function derivative.
        """
        beta = jnp.asarray(beta, jnp.result_type(self.r0, float))

        def residual(g):
            insulin = beta * self.sigma * g * g / (self.k * (self.alpha + g * g))
            return self.r0 - (self.eg0 + self.si * insulin) * g

        def body(_, bracket):
            lo, hi = bracket
            mid = 0.5 * (lo + hi)
            pos = residual(mid) > 0
            return jnp.where(pos, mid, lo), jnp.where(pos, hi, mid)

        lo, hi = jax.lax.fori_loop(
            0,
            80,
            body,
            (jnp.zeros_like(beta), self.r0 / self.eg0 + jnp.zeros_like(beta)),
        )
        g0 = jax.lax.stop_gradient(0.5 * (lo + hi))
        r, dr = jax.jvp(residual, (g0,), (jnp.ones_like(g0),))
        return g0 - r / dr

    def insulin_at(self, g: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Insulin [µU/mL] that holds glucose ``g`` [mg/dL] at steady state."""
        return (self.r0 / g - self.eg0) / self.si

    def fixed_points(self) -> dict[str, Float[Array, " 3"]]:
        """The three fixed points (G [mg/dL], I [µU/mL], β [mg]) in closed form.

        Returns:
            ``physiological`` and ``saddle`` (the roots G± of the turnover rate, with
            I from the glucose balance and β from the insulin balance) and
            ``pathological`` (β = 0, I = 0, G = R0/EG0).
        """
        disc = jnp.sqrt(self.r1**2 - 4.0 * self.d0 * self.r2)
        points = {}
        for name, g in [
            ("physiological", (self.r1 - disc) / (2.0 * self.r2)),
            ("saddle", (self.r1 + disc) / (2.0 * self.r2)),
        ]:
            i = self.insulin_at(g)
            beta = self.k * i * (self.alpha + g * g) / (self.sigma * g * g)
            points[name] = jnp.stack([g, i, beta])
        zero = jnp.zeros_like(self.r0)
        points["pathological"] = jnp.stack([self.r0 / self.eg0, zero, zero])
        return points
