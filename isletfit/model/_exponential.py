r"""An exponential integrator: the plasma–liver insulin exchange solved exactly.

The fixed steps of `simulate_grid` are bounded by stability, not accuracy. The fastest
mode of the model is the linear exchange of insulin between plasma and liver,

$$\frac{d}{dt}\begin{pmatrix} I_p \\ I_l \end{pmatrix} =
L \begin{pmatrix} I_p \\ I_l \end{pmatrix} + \dots,\qquad
L = \begin{pmatrix} -(m_2 + m_4) & m_1 \\ m_2 & -(m_1 + m_3) \end{pmatrix},$$

with eigenvalues −0.90 and −0.26/min for the reference parameters: an explicit
three-stage method needs $h \le 2.51/0.90$ min, less once the first-phase loop adds to
it, and `FixedGrid` takes 1.25-min steps where 5 min would resolve the CGM. Every other
rate of the model is at most 0.15/min.

`ExponentialRK3` is the third-order exponential time-differencing Runge–Kutta method
ETD3RK of Cox and Matthews (2002) with this block as its linear part: the exchange is
integrated exactly, the rest of the vector field $N(y) = f(y) - L y$ (absorption,
secretion, the glucose system, the meal) explicitly. With $z = hL$,

$$a = e^{z/2} u + \tfrac h2 \varphi_1(\tfrac z2) N(u),\qquad
b = e^{z} u + h \varphi_1(z)\,[2N(a) - N(u)],$$
$$u_{+} = e^{z} u + h\,[f_u(z) N(u) + f_a(z) N(a) + f_b(z) N(b)],$$

$\varphi_1(z) = (e^z - 1)/z$, $f_u = [-4 - z + e^z(4 - 3z + z^2)]/z^3$,
$f_a = 4[2 + z + e^z(z - 2)]/z^3$, $f_b = [-4 - 3z - z^2 + e^z(4 - z)]/z^3$
(computed as `phi_functions` says, with power series near $z = 0$, where these
closed forms cancel). On the states outside the
block $L$ is zero and the method is Kutta's third-order Runge–Kutta method. The matrix
functions of the 2×2 $L$ are $g(L) = \alpha I + \beta L$ by Sylvester's formula
($\beta = [g(\lambda_1) - g(\lambda_2)]/(\lambda_1 - \lambda_2)$, $\alpha = g(\lambda_1) -
\beta\lambda_1$), so a step costs three vector-field evaluations and a few scalar
functions of $h\lambda_{1,2}$.

Stability: the exchange no longer bounds the step. What stays stiff is the first-phase
loop (liver insulin suppresses glucose production, whose rise drives the graft's
secretion into the liver): a rate between 0 (glucose falling, or production
suppressed) and $\mu = B k_{first} k_{p4}/V_G$ on the liver insulin, 0.73/min at
B = 1. Half of $\mu$ (`ExponentialRK3.loop_in_linear`) is added to L's liver entry,
so the explicit remainder is at most $\mu/2$ in either direction.
`ExponentialRK3.stable` checks the spectral radius of the method's amplification
matrix on the insulin block for the loop off, half and fully on, and $h$ times the
fastest other rate against Kutta's real stability limit 2.51.

Accuracy on the model (``tests/test_exponential.py``, ``benchmarks/grid.py``): third
order; with one 5-min step per CGM interval the CGM is within 0.34 mg/dL of a tight
adaptive solve on the test window up to B = 1.5, and within 0.55 mg/dL over the 16
virtual patients of ``benchmarks/grid.py`` (B up to 1; 0.09 at 2.5-min steps). The
CGM reports whole mg/dL and its noise is about 10. A quarter of the steps of the
default 1.25-min Bosh3 grid: forward simulation 2.2× faster on the CPU, a fit's
Jacobian 1.8× cheaper (``benchmarks/RESULTS.md``).

References:
    - Cox SM, Matthews PC. Exponential time differencing for stiff systems. J Comput
      Phys 176:430–455, 2002 (ETD3RK, eq. 26–28).
    - Hochbruck M, Ostermann A. Exponential integrators. Acta Numer 19:209–286, 2010.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float
from ._params import Params
from ._state import State

__all__ = ["ExponentialRK3"]

#: Real stability limit of every three-stage third-order Runge–Kutta method:
#: the root of 1 - x + x²/2 - x³/6 = -1.
_RK3_LIMIT = 2.5127453266183286
#: Below this |z| the φ-functions are summed as power series (12 terms: truncation
#: below 1e-14 relative).
_SERIES_BELOW = 0.5
_TERMS = 12


def _series(coef: np.ndarray, z):
    """Σ coef[k] z^k by Horner's rule."""
    out = jnp.full_like(z, float(coef[-1]))
    for c in coef[-2::-1]:
        out = out * z + float(c)  # a Python float keeps z's precision
    return out


#: Taylor coefficients of φ_k(z) = Σ_j z^j/(j + k)!, k = 1, 2, 3.
_PHI = {
    k: np.array([1.0 / math.factorial(j + k) for j in range(_TERMS)]) for k in (1, 2, 3)
}


def _phi(k: int, z, closed):
    """φ_k(z): the series below |z| = 1/2, else ``closed(zs)`` (zs is z kept off 0)."""
    small = jnp.abs(z) < _SERIES_BELOW
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, _series(_PHI[k], z), closed(zs))


@jax.custom_jvp
def phi_functions(z: Float[ArrayLike, "..."]) -> dict[str, Array]:
    r"""The scalar functions of ETD3RK at $z = h\lambda$ (module docstring).

    Computed from $e^{z/2}$ and $\varphi_1(z/2) = \mathrm{expm1}(z/2)/(z/2)$, with
    $e^z = (e^{z/2})^2$, $\varphi_1(z) = \tfrac12(e^{z/2} + 1)\varphi_1(z/2)$,
    $\varphi_2 = (\varphi_1 - 1)/z$, $\varphi_3 = (\varphi_2 - \tfrac12)/z$ (power
    series below $|z| = 1/2$) and
    $f_u = \varphi_1 - 3\varphi_2 + 4\varphi_3$, $f_a = 4\varphi_2 - 8\varphi_3$,
    $f_b = 4\varphi_3 - \varphi_2$ (Cox and Matthews 2002, in the φ-functions of
    Hochbruck and Ostermann 2010): two transcendental functions and two short
    series per point. Relative error below 1e-12 against extended precision
    (``tests/test_exponential.py``).

    Returns:
        ``exp_half`` $e^{z/2}$, ``phi1_half`` $\varphi_1(z/2)$, ``exp`` $e^z$,
        ``phi1`` $\varphi_1(z)$, ``fu``, ``fa``, ``fb``; $z = 0$ (a step of zero
        length) gives the Runge–Kutta limits 1, 1, 1, 1, 1/6, 2/3, 1/6.
    """
    z = jnp.asarray(z)
    half = 0.5 * z
    exp_half = jnp.exp(half)
    tiny = jnp.abs(half) < 1e-3  # five terms of the series: error below 1e-17
    safe = jnp.where(tiny, 1.0, half)
    phi1_half = jnp.where(tiny, _series(_PHI[1][:5], half), jnp.expm1(safe) / safe)
    phi1 = 0.5 * (exp_half + 1.0) * phi1_half
    phi2 = _phi(2, z, lambda zs: (phi1 - 1.0) / zs)
    phi3 = _phi(3, z, lambda zs: (phi2 - 0.5) / zs)
    return {
        "exp_half": exp_half,
        "exp": exp_half * exp_half,
        "phi1_half": phi1_half,
        "phi1": phi1,
        "fu": phi1 - 3.0 * phi2 + 4.0 * phi3,
        "fa": 4.0 * phi2 - 8.0 * phi3,
        "fb": 4.0 * phi3 - phi2,
    }


def loop_rate(params: Params, b) -> Array:
    r"""Largest rate of the first-phase loop, $\mu = B k_{first} k_{p4}/V_G$ [1/min]."""
    return b * params.k_first * params.kp4 / params.vg


@phi_functions.defjvp
def _phi_functions_jvp(primals, tangents):
    """The functions' derivatives once per point, scaled for each tangent.

    Under ``jacfwd`` (one tangent per direction) the derivatives of the series and
    closed forms are then not recomputed for every direction: a Jacobian of the
    fits' windows took 1.5× less time.
    """
    (z,), (z_dot,) = primals, tangents
    values, slopes = jax.jvp(phi_functions.fun, (z,), (jnp.ones_like(z),))
    return values, {k: slopes[k] * z_dot for k in values}


def exchange_matrix(params: Params, b) -> Float[Array, "2 2"]:
    """L on (ip, il) [1/min]: the insulin exchange and the first-phase loop at μ(b)."""
    l11, l12, l21, l22 = _entries(params, b)
    return jnp.array([[l11, l12], [l21, l22]])


def _eigenvalues(params: Params, b):
    """The two real eigenvalues of L (λ1 < λ2 < 0; distinct since m1 m2 > 0)."""
    p = params
    a, d = p.m2 + p.m4, p.m1 + p.m3 + loop_rate(p, b)
    root = jnp.sqrt((a - d) ** 2 + 4.0 * p.m1 * p.m2)
    return -0.5 * (a + d + root), -0.5 * (a + d - root)


def _matrix_functions(params: Params, b, h) -> dict[str, tuple[Array, Array]]:
    """Each function g of ETD3RK as g(hL) = α I + β L: a dict of (α, β)."""
    l1, l2 = _eigenvalues(params, b)
    g1, g2 = phi_functions(h * l1), phi_functions(h * l2)
    out = {}
    for name in g1:
        beta = (g1[name] - g2[name]) / (l1 - l2)
        out[name] = (g1[name] - beta * l1, beta)
    return out


class ExponentialRK3(eqx.Module):
    r"""ETD3RK with the plasma–liver insulin exchange exact (module docstring).

    A step method for `FixedGrid` (``FixedGrid(max_step=5.0,
    solver=ExponentialRK3())``: one step per 5-min CGM interval); not a diffrax
    solver. Third order; stable while `stable` holds: at 5-min steps for B up to at
    least 4 with the reference parameters.

    Attributes:
        loop_in_linear: Fraction of the first-phase loop's largest rate
            $\mu = B k_{first} k_{p4}/V_G$ put into the linear part L (on the liver
            insulin); the loop's true slope is between 0 (glucose falling or
            production suppressed) and $\mu$, so the explicit remainder is at most
            $\max(c, 1 - c)\,\mu$ for a fraction c. The default 0.5 halves it: 5-min
            steps stay stable to B ≥ 4 (at 0: to B ≈ 0.8; at 0.25: 1.35) while the
            CGM stays within 0.34 mg/dL of a tight solve up to B = 1.5 (0.26–0.30 at
            0; 0.35–0.55 at 0.75, where the explicit remainder is larger while the
            loop is off).
    """

    loop_in_linear: float = 0.5

    def __check_init__(self):
        if not 0.0 <= self.loop_in_linear <= 1.0:
            raise ValueError(
                "ExponentialRK3.loop_in_linear must be in [0, 1], got "
                f"{self.loop_in_linear}"
            )

    def step(self, field, t, h, y: State, args, *, params: Params, b) -> State:
        """One step of length ``h`` [min] from ``y`` at ``t``.

        Args:
            field: ``field(t, y, args) -> State``, the vector field.
            t: Start of the step [min].
            h: Step length [min] (0 returns ``y``).
            y: State at ``t``.
            args: Passed to ``field``.
            params: The model's `Params` (for L).
            b: Graft capacity B [-] (for the loop's part of L).
        """
        b_lin = self.loop_in_linear * b
        lm = _entries(params, b_lin)
        fn = _matrix_functions(params, b_lin, h)

        def nonlinear(ty, yy):  # N = f - L v on the block, f elsewhere
            dy = field(ty, yy, args)
            lv = _times(lm, (yy.ip, yy.il))
            return eqx.tree_at(
                lambda s: (s.ip, s.il), dy, (dy.ip - lv[0], dy.il - lv[1])
            )

        # Off the block L = 0 and the weights are the z -> 0 limits (φ1 -> 1;
        # f_u, f_a, f_b -> 1/6, 2/3, 1/6): Kutta's third-order method.
        n_u = nonlinear(t, y)
        a = _advance(y, h, lm, fn, "exp_half", [("phi1_half", 0.5, 0.5, n_u)])
        n_a = nonlinear(t + 0.5 * h, a)
        b = _advance(
            y, h, lm, fn, "exp", [("phi1", 2.0, 2.0, n_a), ("phi1", -1.0, -1.0, n_u)]
        )
        n_b = nonlinear(t + h, b)
        terms = [
            ("fu", 1.0, 1.0 / 6.0, n_u),
            ("fa", 1.0, 4.0 / 6.0, n_a),
            ("fb", 1.0, 1.0 / 6.0, n_b),
        ]
        return _advance(y, h, lm, fn, "exp", terms)

    def amplification(
        self,
        params: Params,
        b: Float[ArrayLike, ""],
        h: Float[ArrayLike, ""],
        slope: float,
    ) -> Float[Array, "2 2"]:
        r"""The step's 2×2 amplification matrix on the linearised insulin block.

        For $\dot v = (L_0 - s\mu E_{22}) v$ on v = (ip, il), with $L_0$ the
        exchange, $\mu$ the loop's largest rate and $s$ = ``slope`` its slope
        (ramp times soft-plus slope, in [0, 1]): one step maps v to R v. L holds
        ``loop_in_linear``·μ of the loop, the explicit part
        $M = (c - s)\mu E_{22}$ the rest.
        """
        return self._amplifications(params, b, h, (slope,))[0]

    def _amplifications(self, params: Params, b, h, slopes) -> list[Array]:
        """`amplification` for several slopes (the matrix functions computed once)."""
        p = params
        h = jnp.asarray(h)
        b_lin = self.loop_in_linear * b
        lm = exchange_matrix(p, b_lin)
        eye = jnp.eye(2, dtype=lm.dtype)
        g = {
            k: alpha * eye + beta * lm
            for k, (alpha, beta) in _matrix_functions(p, b_lin, h).items()
        }
        out = []
        for slope in slopes:
            m = (
                jnp.zeros((2, 2), lm.dtype)
                .at[1, 1]
                .set((self.loop_in_linear - slope) * loop_rate(p, b))
            )
            amp_a = g["exp_half"] + 0.5 * h * g["phi1_half"] @ m
            amp_b = g["exp"] + h * g["phi1"] @ (2.0 * m @ amp_a - m)
            out.append(
                g["exp"] + h * (g["fu"] @ m + g["fa"] @ m @ amp_a + g["fb"] @ m @ amp_b)
            )
        return out

    def stable(
        self, params: Params, b: Float[ArrayLike, ""], h: Float[ArrayLike, ""]
    ) -> Array:
        r"""Whether steps of ``h`` [min] are stable at graft capacity ``b``.

        Two conditions. (1) The spectral radius of the `amplification` matrix on the
        insulin block is at most 1 with the first-phase loop off, half on and fully
        on (slope 0, 1/2, 1). (2) $h$ times the fastest explicit rate outside the
        block (meal emptying and absorption, subcutaneous insulin, sensor, glucose
        exchange) is at most Kutta's real stability limit 2.51.

        With the reference parameters and the default ``loop_in_linear`` the radius
        at 5-min steps is at most 0.33 for B ≤ 1 and 0.62 at B = 3.
        """
        # a yes or no: no derivative flows through it, so none is traced
        p, b, h = jax.lax.stop_gradient((params, b, jnp.asarray(h)))
        amps = self._amplifications(p, b, h, (0.0, 0.5, 1.0))
        radius = jnp.max(jnp.stack([_spectral_radius(a) for a in amps]))
        rates = jnp.stack(
            jnp.broadcast_arrays(
                p.kabs, p.kmax, p.kd + p.ka1, p.ka2, 1.0 / p.tau_sensor, p.k1, p.k2
            )
        )
        return (radius <= 1.0) & (h * jnp.max(rates) <= _RK3_LIMIT)


def _spectral_radius(a: Float[Array, "2 2"]) -> Array:
    """Largest modulus of the eigenvalues of a real 2×2 matrix."""
    tr, det = jnp.trace(a), a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    disc = tr * tr - 4.0 * det
    root = jnp.sqrt(jnp.abs(disc))
    return jnp.where(
        disc >= 0.0,
        0.5 * jnp.maximum(jnp.abs(tr + root), jnp.abs(tr - root)),
        jnp.sqrt(jnp.abs(det)),
    )


def _entries(params: Params, b) -> tuple[Array, Array, Array, Array]:
    """L's entries (l11, l12, l21, l22) as scalars.

    Batched 2×2 products written out are much faster on a CPU than as matrix
    products (a Jacobian of the fits' windows: 1.9×).
    """
    p = params
    return (-(p.m2 + p.m4), p.m1, p.m2, -(p.m1 + p.m3 + loop_rate(p, b)))


def _times(lm, v):
    """L v on the block, v = (ip, il)."""
    l11, l12, l21, l22 = lm
    return (l11 * v[0] + l12 * v[1], l21 * v[0] + l22 * v[1])


def _advance(y: State, h, lm, fn, linear: str, terms) -> State:
    """One stage of ETD3RK.

    On the block v = (ip, il): g(hL) v + h Σ c_i g_i(hL) N_i; elsewhere y + h Σ w_i N_i.
    ``terms`` holds (g_i, c_i, w_i, N_i); ``fn`` the (α, β) of each function g.
    """

    def apply(name, v):  # g(hL) v = α v + β L v
        alpha, beta = fn[name]
        lv = _times(lm, v)
        return (alpha * v[0] + beta * lv[0], alpha * v[1] + beta * lv[1])

    parts = [apply(linear, (y.ip, y.il))] + [
        apply(name, (h * c * n.ip, h * c * n.il)) for name, c, _, n in terms
    ]
    ip = sum(q[0] for q in parts)
    il = sum(q[1] for q in parts)
    rest = jax.tree.map(
        lambda y0, *ns: (
            y0 + h * sum(w * k for (_, _, w, _), k in zip(terms, ns, strict=True))
        ),
        y,
        *[n for *_, n in terms],
    )
    return eqx.tree_at(lambda s: (s.ip, s.il), rest, (ip, il))
