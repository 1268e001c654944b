r"""Each patient's posterior as a quadratic in θ: the linearised E-step of a population fit.

After an E-step every patient has Gauss–Newton blocks at its estimate ĝ = (θ̂, r̂)
(θ: the p population parameters; r: the graft knots and sensor calibration, whose
priors do not depend on μ and ω; the per-window unknowns are profiled out,
`profiled_blocks`). Removing the population prior's own contribution,
$\mathrm{diag}(1/ω^2)$ and $(θ̂ − μ)/ω^2$, leaves the quadratic model of everything
else (data and fixed priors); minimising it over r for a given θ leaves

$$q(θ̂ + δ) = a^T δ + \tfrac12 δ^T A δ,\qquad
A = S_{θθ} − S_{θr} S_{rr}^{-1} S_{rθ},\quad a = b_θ − S_{θr} S_{rr}^{-1} b_r,$$

with r at $r̂ − (k + K δ)$, $K = S_{rr}^{-1} S_{rθ}$, $k = S_{rr}^{-1} b_r$ (and each
window's local unknowns at their own Gauss–Newton step given the global one, affine in
δ as well: $e_w + F_w δ$). Under any
prior N(μ', ω'²) the patient's MAP and Laplace covariance of θ are then closed-form:

$$(A + P')\,δ = −\big(a + P'(θ̂ − μ')\big),\qquad Σ_θ = (A + P')^{-1},\qquad
P' = \mathrm{diag}(1/ω'^2).$$

This is the linear mixed-effects step of Lindstrom and Bates (1990): the population
EM iterates on these p-dimensional quadratics (microseconds per patient) to its fixed
point, and the nonlinear E-step only re-linearises. At a fixed point of the two the
quadratic E-step returns the nonlinear E-step's own estimate and Laplace covariance,
so the fixed point is that of the Laplace-EM.

References:
    - Lindstrom MJ, Bates DM. Nonlinear mixed effects models for repeated measures
      data. Biometrics 46:673–687, 1990.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float
from ._lm import Blocks, profiled_blocks

__all__ = ["Surrogate", "quadratic_e_step", "rest_step", "surrogates"]


class Surrogate(NamedTuple):
    """Quadratic models of the patients' posteriors in θ (leading patient axis).

    Attributes:
        theta: Linearisation point θ̂ ``[n, p]`` (log scale).
        hessian: A, Gauss–Newton Hessian in θ of all but the population prior, the
            other global unknowns profiled out ``[n, p, p]``.
        gradient: a, its gradient at θ̂ ``[n, p]``.
        gain: K, how the other global unknowns follow a step in θ ``[n, r, p]``.
        shift: k, their own Gauss–Newton step at θ̂ ``[n, r]``.
        local_gain: F, how each window's local unknowns follow a step in θ
            ``[n, W, nl, p]``.
        local_shift: e, their step at δ = 0 ``[n, W, nl]``.
    """

    theta: np.ndarray
    hessian: np.ndarray
    gradient: np.ndarray
    gain: np.ndarray
    shift: np.ndarray
    local_gain: np.ndarray
    local_shift: np.ndarray


def _one(
    blocks: Blocks, g: Float[Array, " ng"], mu: Float[Array, " p"], omega
) -> tuple[Array, ...]:
    p = mu.shape[0]
    schur, grad, hll_inv = profiled_blocks(blocks)
    precision = 1.0 / omega**2
    # remove the population prior N(mu, omega^2) of the E-step
    schur = schur.at[:p, :p].add(-jnp.diag(precision))
    grad = grad.at[:p].add(-(g[:p] - mu) * precision)
    s_tt, s_tr, s_rr = schur[:p, :p], schur[:p, p:], schur[p:, p:]
    if s_rr.shape[0] == 0:
        gain, shift = jnp.zeros((0, p)), jnp.zeros((0,))
    else:
        both = jnp.concatenate([s_tr.T, grad[p:, None]], axis=1)
        solved = jnp.linalg.solve(s_rr, both)
        gain, shift = solved[:, :p], solved[:, p]
    hessian = s_tt - s_tr @ gain
    # the global step is c + D delta; each window's local step given it
    c = jnp.concatenate([jnp.zeros(p), -shift])
    d = jnp.concatenate([jnp.eye(p), -gain])
    local_shift = -jnp.einsum(
        "wij,wj->wi", hll_inv, blocks.bl + jnp.einsum("wgj,g->wj", blocks.hgl, c)
    )
    local_gain = -jnp.einsum("wij,wgj,gp->wip", hll_inv, blocks.hgl, d)
    return (
        0.5 * (hessian + hessian.T),
        grad[:p] - s_tr @ shift,
        gain,
        shift,
        local_gain,
        local_shift,
    )


@jax.jit
def surrogates(
    blocks: Blocks, g: Float[Array, "n ng"], mu: Float[Array, "*n p"], omega
) -> tuple[Array, ...]:
    """``(A, a, K, k, F, e)`` of every patient from its E-step's blocks at ``g``.

    Args:
        blocks: The patients' Gauss–Newton blocks (leading patient axis), computed
            under the population prior N(``mu``, ``omega``²) on θ = ``g[:, :p]``.
        g: The patients' global unknowns at the blocks.
        mu: The E-step's prior centre [p], or each patient's [n, p].
        omega: The E-step's prior SD [p].
    """
    mu = jnp.broadcast_to(mu, (g.shape[0], mu.shape[-1]))
    return jax.vmap(_one, in_axes=(0, 0, 0, None))(blocks, g, mu, omega)


def quadratic_e_step(
    surrogate: Surrogate, mu: np.ndarray, omega: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every patient's MAP step δ from θ̂ and Laplace covariance Σ_θ under N(μ, ω²).

    Returns:
        ``(δ [n, p], Σ_θ [n, p, p])``; the MAP is ``theta + δ``.
    """
    precision = 1.0 / np.asarray(omega, float) ** 2
    h = surrogate.hessian + np.diag(precision)
    cov = np.linalg.inv(h)
    rhs = surrogate.gradient + precision * (surrogate.theta - mu)
    return -np.einsum("nij,nj->ni", cov, rhs), cov


def rest_step(surrogate: Surrogate, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The steps of the other unknowns that go with a step δ in θ.

    Returns:
        ``(global, local)``: the other global unknowns' ``-(k + K δ)`` ``[n, r]`` and
        the windows' local unknowns' ``e + F δ`` ``[n, W, nl]``.
    """
    rest = -(surrogate.shift + np.einsum("nrp,np->nr", surrogate.gain, delta))
    local = surrogate.local_shift + np.einsum(
        "nwip,np->nwi", surrogate.local_gain, delta
    )
    return rest, local
