r"""Exponential integrators: the model's fast linear modes solved exactly.

The fixed steps of `simulate_grid` are bounded by stability, not accuracy. The fastest
mode of the model is the linear exchange of insulin between plasma and liver,

$$\frac{d}{dt}\begin{pmatrix} I_p \\ I_l \end{pmatrix} =
L \begin{pmatrix} I_p \\ I_l \end{pmatrix} + \dots,\qquad
L = \begin{pmatrix} -(m_2 + m_4) & m_1 \\ m_2 & -(m_1 + m_3) \end{pmatrix},$$

with eigenvalues −0.90 and −0.26/min for the reference parameters: an explicit
three-stage method needs $h \le 2.51/0.90$ min, less once the first-phase loop adds to
it, and `FixedGrid` takes 1.25-min steps where 5 min would resolve the CGM. Two more
linear rates are fast for some patients: the gut's absorption $k_{abs}$ (about
0.2/min in adults with type 1 diabetes, up to twice that on some days) and the
sensor's $1/\tau$ (0.1/min; 0.33 at a 3-min lag). Every other rate of the model is at
most 0.15/min.

The linear part L of the methods here is the insulin block above and the decays
$-k_{abs}$ of the gut's content and $-1/\tau$ of the interstitial glucose
(`decay_rates`); L is zero on the other states. The rest of the vector field,
$N(y) = f(y) - L y$ (gastric emptying, subcutaneous insulin, secretion, the glucose
system, the gut's inflow, the sensor's input), is explicit. `ExponentialRK3` is the
third-order exponential time-differencing Runge–Kutta method ETD3RK of Cox and
Matthews (2002). With $z = hL$,

$$a = e^{z/2} u + \tfrac h2 \varphi_1(\tfrac z2) N(u),\qquad
b = e^{z} u + h \varphi_1(z)\,[2N(a) - N(u)],$$
$$u_{+} = e^{z} u + h\,[f_u(z) N(u) + f_a(z) N(a) + f_b(z) N(b)],$$

$\varphi_1(z) = (e^z - 1)/z$, $f_u = [-4 - z + e^z(4 - 3z + z^2)]/z^3$,
$f_a = 4[2 + z + e^z(z - 2)]/z^3$, $f_b = [-4 - 3z - z^2 + e^z(4 - z)]/z^3$
(computed as `phi_functions` says, with power series near $z = 0$, where these
closed forms cancel). `ExponentialRK4` is their ETDRK4: one stage more, the same
functions, fourth order. Where $L$ is zero the methods are Kutta's third-order and
the classical fourth-order Runge–Kutta methods. The matrix functions of the 2×2
block are $g(L) = \alpha I + \beta L$ by Sylvester's formula
($\beta = [g(\lambda_1) - g(\lambda_2)]/(\lambda_1 - \lambda_2)$, $\alpha = g(\lambda_1) -
\beta\lambda_1$); those of the two decays are scalars. A step costs three (four)
vector-field evaluations and the φ-functions of four scalars $h\lambda$.

Stability: the exchange no longer bounds the step. What stays stiff is the first-phase
loop (liver insulin suppresses glucose production, whose rise drives the graft's
secretion into the liver): a rate between 0 (glucose falling, or production
suppressed) and $\mu = B k_{first} k_{p4}/V_G$ on the liver insulin, 0.73/min at
B = 1. Half of $\mu$ (``loop_in_linear``) is added to L's liver entry, so the explicit
remainder is at most $\mu/2$ in either direction. ``stable`` checks the spectral
radius of the method's amplification matrix on the insulin block for the loop off,
half and fully on, and $h$ times the fastest explicit rate against the explicit
method's real stability limit (2.51 and 2.79).

Accuracy on the model (``tests/test_exponential.py``, ``benchmarks/grid.py``), with
one 5-min step per CGM interval against a tight adaptive solve on the test window:
ETDRK4 0.04–0.08 mg/dL for B from 0 to 1.5 (0.12 at B = 2), 0.18 mg/dL at
$k_{abs}$ = 0.2/min and 0.25 at 0.6; ETD3RK 0.19–0.34 (0.54), 0.47 and 2.2. Before
the gut and the sensor were in L, ETD3RK was 0.87 mg/dL off at $k_{abs}$ = 0.2 and
unstable at 0.6, and a tightly solved population EM drifted along the weakly
identified ``kabs``/``kmax`` ridge instead of converging. The CGM reports whole mg/dL
and its noise is about 10, but weakly identified parameters of a fit feel errors of a
few tenths: at 5-min steps with ETD3RK one patient's log ``kd`` moved by 0.6 from the
adaptive fit, with ETDRK4 by 0.015 (``tests/test_grid.py``).

References:
    - Cox SM, Matthews PC. Exponential time differencing for stiff systems. J Comput
      Phys 176:430–455, 2002 (ETD3RK and ETDRK4, eq. 26–29).
    - Hochbruck M, Ostermann A. Exponential integrators. Acta Numer 19:209–286, 2010.
"""

from __future__ import annotations

import abc
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float
from ._params import Params
from ._state import State

__all__ = ["ExponentialRK3", "ExponentialRK4"]

#: Real stability limit of every three-stage third-order Runge–Kutta method:
#: the root of 1 - x + x²/2 - x³/6 = -1.
_RK3_LIMIT = 2.5127453266183286
#: Real stability limit of the classical fourth-order method: the positive root of
#: 1 - x + x²/2 - x³/6 + x⁴/24 = 1.
_RK4_LIMIT = 2.785293563405282
#: Below this |z| the φ-functions are summed as power series (12 terms: truncation
#: below 1e-14 relative).
_SERIES_BELOW = 0.5
#: The φ-functions at z = 0 (`phi_functions`): where L = 0 the stages weigh N by these.
_AT_ZERO = {
    "exp_half": 1.0,
    "exp": 1.0,
    "phi1_half": 1.0,
    "phi1": 1.0,
    "fu": 1.0 / 6.0,
    "fa": 2.0 / 3.0,
    "fb": 1.0 / 6.0,
}
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


def decay_rates(params: Params) -> dict[str, Array]:
    r"""The linear decay rates integrated exactly outside the insulin block [1/min].

    Gut absorption ($\dot q_{gut} = \dots - k_{abs} q_{gut}$) and the sensor lag
    ($\dot G_s = (G - G_s)/\tau$): $k_{abs}$ is about 0.2/min for adults with type 1
    diabetes (UVA/Padova; Dalla Man et al. 2007 give 0.057 for healthy adults), so
    an explicit 5-min step would take $hk_{abs} \approx 1$, where Kutta's method
    damps the gut's content by 1/3 per step instead of $e^{-1}$: the fits' meal
    absorption rates moved along their weakly identified ridge (``kabs``/``kmax``).
    """
    return {"qgut": params.kabs, "gs": 1.0 / params.tau_sensor}


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


class _ExponentialRK(eqx.Module):
    r"""Exponential Runge–Kutta steps with L as in the module docstring.

    Attributes:
        loop_in_linear: Fraction of the first-phase loop's largest rate
            $\mu = B k_{first} k_{p4}/V_G$ put into the linear part L (on the liver
            insulin); the loop's true slope is between 0 (glucose falling or
            production suppressed) and $\mu$, so the explicit remainder is at most
            $\max(c, 1 - c)\,\mu$ for a fraction c. The default 0.5 halves it: 5-min
            ETD3RK steps stay stable to B = 4 (at 0: to B ≈ 0.8; at 0.25: 1.35),
            ETDRK4 steps to B ≥ 10.
    """

    loop_in_linear: float = 0.5

    def __check_init__(self):
        if not 0.0 <= self.loop_in_linear <= 1.0:
            raise ValueError(
                f"{type(self).__name__}.loop_in_linear must be in [0, 1], got "
                f"{self.loop_in_linear}"
            )

    @abc.abstractmethod
    def _stages(self, t, h, y: State, lin: _Linear, nonlinear) -> State:
        """The method's stages and update from ``y`` (``nonlinear(t, y)`` is N)."""

    @abc.abstractmethod
    def _amplify(self, g: dict[str, Array], m: Array, h) -> Array:
        """The step's matrix on v' = (L + M) v, with ``g`` the functions of hL."""

    @property
    @abc.abstractmethod
    def explicit_limit(self) -> float:
        """Real stability limit of the method's explicit (L = 0) part [-]."""

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
        rates = decay_rates(params)
        lin = _Linear(
            block=_entries(params, b_lin),
            block_fn=_matrix_functions(params, b_lin, h),
            decay={name: phi_functions(-h * r) for name, r in rates.items()},
        )

        def nonlinear(ty, yy):  # N = f - L y
            dy = field(ty, yy, args)
            lv = _times(lin.block, (yy.ip, yy.il))
            return eqx.tree_at(
                lambda s: (s.ip, s.il, *(getattr(s, n) for n in rates)),
                dy,
                (
                    dy.ip - lv[0],
                    dy.il - lv[1],
                    *(getattr(dy, n) + r * getattr(yy, n) for n, r in rates.items()),
                ),
            )

        return self._stages(t, h, y, lin, nonlinear)

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
            out.append(self._amplify(g, m, h))
        return out

    def stable(
        self, params: Params, b: Float[ArrayLike, ""], h: Float[ArrayLike, ""]
    ) -> Array:
        r"""Whether steps of ``h`` [min] are stable at graft capacity ``b``.

        Two conditions. (1) The spectral radius of the `amplification` matrix on the
        insulin block is at most 1 with the first-phase loop off, half on and fully
        on (slope 0, 1/2, 1). (2) $h$ times the fastest explicit rate outside L
        (gastric emptying, subcutaneous insulin, glucose exchange, second-phase
        secretion, insulin action) is at most the explicit method's real stability
        limit (`explicit_limit`).

        With the reference parameters and the default ``loop_in_linear`` the radius
        at 5-min steps is at most 0.30 at B = 1 and 0.62 at B = 3 for ETD3RK (stable
        to B = 4), 0.28 and 0.33 for ETDRK4 (stable to B ≥ 10).
        """
        # a yes or no: no derivative flows through it, so none is traced
        p, b, h = jax.lax.stop_gradient((params, b, jnp.asarray(h)))
        amps = self._amplifications(p, b, h, (0.0, 0.5, 1.0))
        radius = jnp.max(jnp.stack([_spectral_radius(a) for a in amps]))
        rates = jnp.stack(
            jnp.broadcast_arrays(
                p.kmax, p.kd + p.ka1, p.ka2, p.k1, p.k2, p.alpha_y, p.p2u, p.ki
            )
        )
        return (radius <= 1.0) & (h * jnp.max(rates) <= self.explicit_limit)


class ExponentialRK3(_ExponentialRK):
    r"""ETD3RK (Cox and Matthews 2002) with L exact (module docstring).

    A step method for `FixedGrid` (``FixedGrid(max_step=5.0,
    solver=ExponentialRK3())``: one step per 5-min CGM interval); not a diffrax
    solver. Third order, three evaluations of the vector field per step; stable
    while `stable` holds: at 5-min steps for B up to 4 with the reference
    parameters. At 5-min steps the CGM is within 0.19–0.54 mg/dL of a tight solve
    (`ExponentialRK4`: 0.04–0.12), enough to move a weakly identified parameter
    of a fit by a good part of its uncertainty.

    Attributes:
        loop_in_linear: As for `ExponentialRK4`.
    """

    @property
    def explicit_limit(self) -> float:
        """Kutta's third-order method: 2.51."""
        return _RK3_LIMIT

    def _stages(self, t, h, y, lin, nonlinear):
        # where L = 0 the weights are the z -> 0 limits (φ1 -> 1; f_u, f_a, f_b ->
        # 1/6, 2/3, 1/6): Kutta's third-order method
        n_u = nonlinear(t, y)
        a = _advance(y, h, lin, "exp_half", [("phi1_half", 0.5, n_u)])
        n_a = nonlinear(t + 0.5 * h, a)
        b = _advance(y, h, lin, "exp", [("phi1", 2.0, n_a), ("phi1", -1.0, n_u)])
        n_b = nonlinear(t + h, b)
        terms = [
            ("fu", 1.0, n_u),
            ("fa", 1.0, n_a),
            ("fb", 1.0, n_b),
        ]
        return _advance(y, h, lin, "exp", terms)

    def _amplify(self, g, m, h):
        amp_a = g["exp_half"] + 0.5 * h * g["phi1_half"] @ m
        amp_b = g["exp"] + h * g["phi1"] @ (2.0 * m @ amp_a - m)
        return g["exp"] + h * (g["fu"] @ m + g["fa"] @ m @ amp_a + g["fb"] @ m @ amp_b)


class ExponentialRK4(_ExponentialRK):
    r"""ETDRK4 (Cox and Matthews 2002) with L exact: the fits' exponential method.

    $$a = e^{z/2}u + \tfrac h2\varphi_1(\tfrac z2)N(u),\quad
    b = e^{z/2}u + \tfrac h2\varphi_1(\tfrac z2)N(a),\quad
    c = e^{z/2}a + \tfrac h2\varphi_1(\tfrac z2)[2N(b) - N(u)],$$
    $$u_+ = e^z u + h\,[f_u N(u) + \tfrac12 f_a (N(a) + N(b)) + f_b N(c)]$$

    with the φ-functions of `ExponentialRK3`; where L = 0 it is the classical
    fourth-order Runge–Kutta method. Four evaluations of the vector field per step;
    stable while `stable` holds: at 5-min steps for B up to at least 10 with the
    reference parameters. The fits' default (``isletfit.fitting.EXPONENTIAL_GRID``).
    At one step per 5-min CGM interval the CGM is within 0.04–0.12 mg/dL of a tight
    adaptive solve for B from 0 to 2 (0.18 at a gut absorption rate of 0.2/min, 0.25
    at 0.6/min), three to nine times closer than `ExponentialRK3`
    (``tests/test_exponential.py``), and a patient's fit agrees with the adaptive
    fit to 0.02 in every log parameter (``tests/test_grid.py``).

    Attributes:
        loop_in_linear: Fraction of the first-phase loop's largest rate
            $\mu = B k_{first} k_{p4}/V_G$ put into the linear part L (on the liver
            insulin); the loop's true slope is between 0 (glucose falling or
            production suppressed) and $\mu$, so the explicit remainder is at most
            $\max(c, 1 - c)\,\mu$ for a fraction c. The default 0.5 halves it.

    References:
        - Cox SM, Matthews PC. J Comput Phys 176:430–455, 2002 (ETDRK4, eq. 26–29).
        - Kassam AK, Trefethen LN. Fourth-order time-stepping for stiff PDEs. SIAM
          J Sci Comput 26:1214–1233, 2005.
    """

    @property
    def explicit_limit(self) -> float:
        """The classical fourth-order method: 2.79."""
        return _RK4_LIMIT

    def _stages(self, t, h, y, lin, nonlinear):
        n_u = nonlinear(t, y)
        a = _advance(y, h, lin, "exp_half", [("phi1_half", 0.5, n_u)])
        n_a = nonlinear(t + 0.5 * h, a)
        b = _advance(y, h, lin, "exp_half", [("phi1_half", 0.5, n_a)])
        n_b = nonlinear(t + 0.5 * h, b)
        c = _advance(
            a,
            h,
            lin,
            "exp_half",
            [("phi1_half", 1.0, n_b), ("phi1_half", -0.5, n_u)],
        )
        n_c = nonlinear(t + h, c)
        n_ab = jax.tree.map(jnp.add, n_a, n_b)
        terms = [
            ("fu", 1.0, n_u),
            ("fa", 0.5, n_ab),
            ("fb", 1.0, n_c),
        ]
        return _advance(y, h, lin, "exp", terms)

    def _amplify(self, g, m, h):
        amp_a = g["exp_half"] + 0.5 * h * g["phi1_half"] @ m
        amp_b = g["exp_half"] + 0.5 * h * g["phi1_half"] @ m @ amp_a
        amp_c = g["exp_half"] @ amp_a + 0.5 * h * g["phi1_half"] @ (2.0 * m @ amp_b - m)
        return g["exp"] + h * (
            g["fu"] @ m + 0.5 * g["fa"] @ m @ (amp_a + amp_b) + g["fb"] @ m @ amp_c
        )


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


class _Linear(NamedTuple):
    """L of one step.

    The insulin block's entries and (α, β) of each function g (``block``,
    ``block_fn``), and the decaying states' scalar functions g(-h r) (``decay``, by
    state: `decay_rates`).
    """

    block: tuple[Array, Array, Array, Array]
    block_fn: dict[str, tuple[Array, Array]]
    decay: dict[str, dict[str, Array]]


def _advance(y: State, h, lin: _Linear, linear: str, terms) -> State:
    """One stage of an exponential Runge–Kutta method.

    On the insulin block v = (ip, il): g(hL) v + h Σ c_i g_i(hL) N_i; on the gut and
    the sensor the same with the scalars g(-h r); elsewhere, where L = 0, the same
    with every function at 0: y + h Σ c_i g_i(0) N_i. ``terms`` holds (g_i, c_i, N_i).
    """

    def apply(name, v):  # g(hL) v = α v + β L v
        alpha, beta = lin.block_fn[name]
        lv = _times(lin.block, v)
        return (alpha * v[0] + beta * lv[0], alpha * v[1] + beta * lv[1])

    def decay(state):
        g = lin.decay[state]
        return g[linear] * getattr(y, state) + h * sum(
            c * g[name] * getattr(n, state) for name, c, n in terms
        )

    parts = [apply(linear, (y.ip, y.il))] + [
        apply(name, (h * c * n.ip, h * c * n.il)) for name, c, n in terms
    ]
    ip = sum(q[0] for q in parts)
    il = sum(q[1] for q in parts)
    weights = [c * _AT_ZERO[name] for name, c, _ in terms]
    rest = jax.tree.map(
        lambda y0, *ns: y0 + h * sum(w * k for w, k in zip(weights, ns, strict=True)),
        y,
        *[n for *_, n in terms],
    )
    return eqx.tree_at(
        lambda s: (s.ip, s.il, *(getattr(s, n) for n in lin.decay)),
        rest,
        (ip, il, *(decay(n) for n in lin.decay)),
    )
