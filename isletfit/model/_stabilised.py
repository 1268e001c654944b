r"""Third-order explicit Runge–Kutta methods with long real stability intervals.

The fixed steps of `simulate_grid` are bounded by stability, not accuracy: the fastest
mode of the model (the plasma–liver insulin exchange, λ ≈ 0.9/min without graft and
1.35/min at B = 1; `stable_step`) lies on the negative real axis, and a classical
three-stage method such as Bosh3 is stable only for $h\lambda \le 2.51$, so it needs
steps of 1.25 min where 5 min would be accurate enough for the CGM. Methods with more
stages than their order can spend the free coefficients of their stability polynomial
on a longer real interval (stabilised explicit Runge–Kutta methods; Hairer and Wanner
1996, IV.2; van der Houwen and Sommeijer 1980):

- `StabilisedRK34`: 4 stages, order 3, stable on $[-6.03, 0]$ (1.51 per stage,
  against 0.84 for Bosh3);
- `StabilisedRK35`: 5 stages, order 3, stable on $[-10.53, 0]$ (2.11 per stage).

Construction (done once for isletfit; ``tests/test_stabilised.py`` checks the result):
the stability polynomial $R(z) = 1 + z + z^2/2 + z^3/6 + \sum_{k>3} \alpha_k z^k$ of a
third-order method has $\alpha_k$ free; they were chosen to maximise the interval
$[-\beta, 0]$ on which $|R| \le 1$ (Nelder–Mead from many starts; 6.0273 and 10.5355).
The Butcher tableau was then found by sequential quadratic programming: the four
third-order conditions and $b^\top A^{k-2} c = \alpha_k$ as equality constraints,
$0 \le c_i \le 1$ and $b_i \ge 0$, minimising the squared remaining fourth-order error
terms ($b^\top c^3 - 1/4$, $b^\top (c \circ Ac) - 1/8$, $b^\top A c^2 - 1/12$: all below
2e-5; the fourth, $b^\top A^2 c - 1/24$, is fixed by $\alpha_4$). The embedded
error estimate (for adaptive use with diffrax) is a second-order combination of the
same stages.

On the model (``tests/test_stabilised.py``, ``benchmarks/grid.py``): `StabilisedRK35`
with one 5-min step per CGM interval (``FixedGrid(max_step=5.0, solver=...)``) is
within 0.35 mg/dL of a tight adaptive solve (the CGM reports whole mg/dL) and
evaluates the vector field 2.4 times less often than Bosh3 at 1.25 min; forward
simulation at scale ran 1.4–2.6× faster on the CPU, fits about 1.1×
(``benchmarks/RESULTS.md``), so the fits kept Bosh3; they now take one
`ExponentialRK4` step per interval.

References:
    - Hairer E, Wanner G. Solving Ordinary Differential Equations II: Stiff and
      Differential-Algebraic Problems, 2nd ed. Springer, 1996, section IV.2.
    - van der Houwen PJ, Sommeijer BP. On the internal stability of explicit, m-stage
      Runge–Kutta methods for large m-values. Z Angew Math Mech 60:479–485, 1980.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax as dfx
import numpy as np

__all__ = ["StabilisedRK34", "StabilisedRK35"]


def _tableau(a: list[list[float]], b: list[float]) -> dfx.ButcherTableau:
    """An explicit tableau from its strictly lower ``a`` rows and weights ``b``.

    The error weights are ``b`` minus the minimum-norm second-order weights
    (Σ b̂ = 1, b̂·c = 1/2) on the same stages.
    """
    s = len(b)
    rows = [np.asarray(r, dtype=float) for r in a]
    c = np.array([0.0] + [float(r.sum()) for r in rows])
    b = np.asarray(b, dtype=float)
    b_hat = np.linalg.lstsq(np.vstack([np.ones(s), c]), [1.0, 0.5], rcond=None)[0]
    return dfx.ButcherTableau(c=c[1:], b_sol=b, b_error=b - b_hat, a_lower=tuple(rows))


def _linear_dense_output(*, t0, t1, y0, y1, k) -> dfx.LocalLinearInterpolation:
    """Dense output between step ends (the stages are not at the step's ends)."""
    del k
    return dfx.LocalLinearInterpolation(t0=t0, t1=t1, y0=y0, y1=y1)


_RK34 = _tableau(
    [
        [0.3886421430557275],
        [-0.04069010011423429, 0.8403458853664799],
        [0.24822328737277702, -0.20312088531784542, 0.1407652792598143],
    ],
    [0.0, 0.12956366122624785, 0.46898940395270805, 0.4014469348210441],
)

_RK35 = _tableau(
    [
        [0.19337007810518206],
        [0.28330270675024405, 0.30436851959445677],
        [0.11717023903488806, 0.09663824471826903, 0.19525869345934915],
        [
            0.05247916829943299,
            0.13892214547913395,
            0.3806160250121342,
            0.2747268433222677,
        ],
    ],
    [
        0.05838077402714221,
        0.25153711952338537,
        0.08359580717365696,
        0.25430933574337566,
        0.35217696353244327,
    ],
)


class _AbstractStabilisedRK3(dfx.AbstractERK):
    """Third order; embedded second-order error estimate; linear dense output."""

    interpolation_cls: ClassVar[Callable[..., dfx.LocalLinearInterpolation]] = (
        staticmethod(_linear_dense_output)
    )

    def order(self, terms):
        del terms
        return 3


class StabilisedRK34(_AbstractStabilisedRK3):
    """Third order, 4 stages, real stability interval [-6.03, 0] (module docstring).

    A diffrax solver (embedded second-order error estimate, linear dense output); in
    isletfit it serves `FixedGrid`.
    """

    tableau: ClassVar[dfx.ButcherTableau] = _RK34


class StabilisedRK35(_AbstractStabilisedRK3):
    """Third order, 5 stages, real stability interval [-10.53, 0] (module docstring).

    For `FixedGrid` with one 5-min step per CGM interval (``max_step=5.0``); a diffrax
    solver too (embedded second-order error estimate, linear dense output).
    """

    tableau: ClassVar[dfx.ButcherTableau] = _RK35
