r"""Levenberg–Marquardt for least squares with per-window (arrow-shaped) structure.

A patient's fit has a few *global* unknowns g (physiology, the graft trajectory) shared
by all windows, and a few *local* unknowns l_w (e.g. a window's initial glucose) that
affect only window w. The Gauss–Newton matrix is then an arrow:

$$H = \begin{pmatrix} H_{gg} & H_{g1} & \cdots & H_{gW} \\ H_{1g} & H_{11} & & \\
\vdots & & \ddots & \\ H_{Wg} & & & H_{WW}\end{pmatrix},$$

so each step eliminates the local blocks (small, solved in parallel with ``vmap``) and
solves the Schur complement $S = H_{gg} - \sum_w H_{gw} H_{ww}^{-1} H_{wg}$ for the
global step — the bundle-adjustment trick. Jacobians are forward-mode, one window at a
time, so their cost grows with the number of unknowns per window, not the total.

Damping follows Nielsen (1999): after an accepted step with gain ratio ρ,
λ ← λ·max(1/3, 1 − (2ρ − 1)³); after a rejected one λ ← νλ, ν ← 2ν. The damping matrix is
the diagonal of H (Marquardt scaling) with a small floor.

The marginal covariance of g under the Laplace approximation is $S^{-1}$ at λ = 0, so the
same blocks give the uncertainty (`schur_covariance`).

References:
    - Nielsen HB. Damping parameter in Marquardt's method. Technical report
      IMM-REP-1999-05, Technical University of Denmark, 1999.
    - Triggs B et al. Bundle adjustment — a modern synthesis. In: Vision Algorithms:
      Theory and Practice, LNCS 1883, 2000 (Schur complement of the arrow system).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float

__all__ = ["Blocks", "LMResult", "LevenbergMarquardt", "schur_covariance"]


class Blocks(NamedTuple):
    """Gauss–Newton blocks at one point (residuals already weighted)."""

    cost: Float[Array, ""]
    hgg: Float[Array, "ng ng"]
    bg: Float[Array, " ng"]
    hll: Float[Array, "windows nl nl"]
    hgl: Float[Array, "windows ng nl"]
    bl: Float[Array, "windows nl"]


def blocks_from_jacobians(rw, jg, jl, r0, j0) -> Blocks:
    """Assemble the normal-equation blocks from per-window and global Jacobians.

    Args:
        rw: Window residuals ``[W, m]``.
        jg: d rw / d g ``[W, m, ng]``.
        jl: d rw / d l_w ``[W, m, nl]``.
        r0: Global residuals (priors on g) ``[m0]``.
        j0: d r0 / d g ``[m0, ng]``.
    """
    cost = 0.5 * (jnp.sum(rw * rw) + jnp.sum(r0 * r0))
    hgg = jnp.einsum("wmi,wmj->ij", jg, jg) + j0.T @ j0
    bg = jnp.einsum("wmi,wm->i", jg, rw) + j0.T @ r0
    hll = jnp.einsum("wmi,wmj->wij", jl, jl)
    hgl = jnp.einsum("wmi,wmj->wij", jg, jl)
    bl = jnp.einsum("wmi,wm->wi", jl, rw)
    return Blocks(cost, hgg, bg, hll, hgl, bl)


def _solve(blocks: Blocks, lam):
    """Damped Gauss–Newton step (dg, dl) by elimination of the local blocks."""
    hgg, bg, hll, hgl, bl = blocks.hgg, blocks.bg, blocks.hll, blocks.hgl, blocks.bl
    ng, nl = hgg.shape[0], hll.shape[-1]
    dg_diag = jnp.maximum(jnp.diag(hgg), 1e-9)
    dl_diag = jnp.maximum(jnp.diagonal(hll, axis1=1, axis2=2), 1e-9)
    hgg_d = hgg + lam * jnp.diag(dg_diag)
    hll_d = hll + lam * jax.vmap(jnp.diag)(dl_diag)
    hll_inv = jnp.linalg.inv(hll_d) if nl > 0 else hll_d
    k = jnp.einsum("wgi,wij->wgj", hgl, hll_inv)  # H_gw H_ww^-1
    schur = hgg_d - jnp.einsum("wgj,whj->gh", k, hgl)
    rhs = -bg + jnp.einsum("wgj,wj->g", k, bl)
    dg = jnp.linalg.solve(schur, rhs) if ng > 0 else rhs
    dl = -jnp.einsum("wij,wj->wi", hll_inv, bl + jnp.einsum("wgi,g->wi", hgl, dg))
    return dg, dl


def _predicted_decrease(blocks: Blocks, dg, dl):
    """Decrease of ½‖r‖² the linear model predicts for the step (dg, dl)."""
    quad = (
        dg @ blocks.hgg @ dg
        + 2.0 * jnp.einsum("g,wgi,wi->", dg, blocks.hgl, dl)
        + jnp.einsum("wi,wij,wj->", dl, blocks.hll, dl)
    )
    return -(dg @ blocks.bg + jnp.sum(dl * blocks.bl)) - 0.5 * quad


def schur_covariance(blocks: Blocks) -> Float[Array, "ng ng"]:
    """Marginal covariance of the global unknowns (Laplace, Gauss–Newton Hessian)."""
    hll, hgl = blocks.hll, blocks.hgl
    nl = hll.shape[-1]
    hll_inv = jnp.linalg.pinv(hll, hermitian=True) if nl > 0 else hll
    schur = blocks.hgg - jnp.einsum("wgi,wij,whj->gh", hgl, hll_inv, hgl)
    return jnp.linalg.pinv(0.5 * (schur + schur.T), hermitian=True)


def robust_covariance(
    blocks: Blocks,
    scores: Float[Array, "windows ng"],
    prior_hessian: Float[Array, "ng ng"],
    valid: Array,
) -> Float[Array, "ng ng"]:
    r"""Laplace covariance, widened where windows scatter more than the noise model says.

    The Laplace covariance $\Sigma = H_S^{-1}$ (Schur complement of the Gauss–Newton
    Hessian over the local unknowns) trusts the noise model. Model error that is
    correlated over hours (day-to-day and within-day changes of physiology, sensor
    drift) makes the readings of a day less informative than that. Treating each
    day-window as an independent cluster, the data part of the Hessian
    $H_d = H_S - P$ ($P$: the prior's Hessian) is compared with the empirical
    variance of the windows' profiled scores $M = \tfrac{n}{n-1}\sum_w s_w s_w^T$,
    $s_w = J_{g,w}^T r_w - H_{gl,w} H_{ll,w}^{-1} J_{l,w}^T r_w$ (Liang and Zeger 1986,
    cluster-robust "sandwich" variance). Their positive excess $E = (M - H_d)_+$ is
    added to the meat: $\Sigma_{robust} = \Sigma (H_S + E) \Sigma = \Sigma + \Sigma E
    \Sigma$ — never narrower than the Laplace covariance, equal to it when the scores
    scatter as the noise model predicts.

    Args:
        blocks: Gauss–Newton blocks at the optimum.
        scores: Per-window data scores $J_{g,w}^T r_w$.
        prior_hessian: $J_0^T J_0$ of the global prior residuals.
        valid: Which windows are real (not padding).

    References:
        - Liang KY, Zeger SL. Longitudinal data analysis using generalized linear
          models. Biometrika 73:13-22, 1986.
    """
    cov = schur_covariance(blocks)
    hll, hgl = blocks.hll, blocks.hgl
    nl = hll.shape[-1]
    if nl > 0:
        hll_inv = jnp.linalg.pinv(hll, hermitian=True)
        schur = blocks.hgg - jnp.einsum("wgi,wij,whj->gh", hgl, hll_inv, hgl)
        scores = scores - jnp.einsum("wgi,wij,wj->wg", hgl, hll_inv, blocks.bl)
    else:
        schur = blocks.hgg
    w = valid.astype(scores.dtype)
    n = jnp.sum(w)
    s = scores * w[:, None]
    meat = (s.T @ s) * n / jnp.maximum(n - 1.0, 1.0)
    diff = meat - (schur - prior_hessian)
    vals, vecs = jnp.linalg.eigh(0.5 * (diff + diff.T))
    excess = (vecs * jnp.maximum(vals, 0.0)[None, :]) @ vecs.T
    return cov + cov @ excess @ cov


class LMResult(eqx.Module):
    """Outcome of a Levenberg–Marquardt solve.

    Attributes:
        g: Global unknowns at the end.
        loc: Local unknowns ``[W, nl]`` at the end.
        blocks: Gauss–Newton blocks at the end (for the Laplace covariance).
        aux: What ``linearise`` returned beside the blocks at the end (e.g.
            predictions).
        iterations: Iterations used (accepted and rejected steps).
        converged: True if the cost decrease or the step fell below the tolerance
            before ``max_iter``.
        finite: False if the problem could not be evaluated at the starting point.
    """

    g: Float[Array, " ng"]
    loc: Float[Array, "windows nl"]
    blocks: Blocks
    aux: Any
    iterations: Array
    converged: Array
    finite: Array


class LevenbergMarquardt(eqx.Module):
    """Levenberg–Marquardt with Nielsen damping on the arrow-structured system.

    Attributes:
        max_iter: Maximum iterations (accepted plus rejected steps).
        rtol: Stop when an accepted step lowers the cost by less than ``rtol·cost +
            atol``.
        atol: Absolute cost tolerance in log-posterior units. The default 1e-2 is about
            the cost's own numerical noise from the adaptive ODE solver (~1e-6
            relative); a change of 1e-2 moves the unknowns by about 0.1 of their
            standard errors.
        xtol: Stop when the step is smaller than this (max-abs, in the unknowns' units).
        lambda0: Initial damping.
        screen_iter: Iterations given to each starting point before the best one is
            continued (multi-start screening).
        max_step: Largest change of any unknown in one step (a trust bound on the log
            scale: 1 is a factor e); longer Gauss–Newton steps are shortened.
    """

    max_iter: int = 60
    rtol: float = 1e-8
    atol: float = 1e-2
    xtol: float = 1e-7
    lambda0: float = 1e-2
    screen_iter: int = 4
    max_step: float = 1.0

    def __call__(
        self,
        linearise: Callable[[Array, Array], tuple[Blocks, Any]],
        g0: Float[Array, " ng"],
        l0: Float[Array, "windows nl"],
        *,
        max_iter=None,
    ) -> LMResult:
        """Minimise ½‖r‖² from ``(g0, l0)``.

        Every candidate point is linearised (residuals and Jacobians in one forward-mode
        pass), so the model has a single call site — one graph to compile — and an
        accepted step needs no second evaluation. The first iteration "accepts" the
        starting point itself.

        Args:
            linearise: ``(g, loc) -> (Blocks, aux)``; a NaN cost means not evaluable;
                ``aux`` (e.g. predictions) of the accepted point is returned.
            g0: Starting global unknowns.
            l0: Starting local unknowns.
            max_iter: Overrides ``self.max_iter`` (may be a traced integer, so one
                compiled program serves screening and full runs).
        """
        limit = self.max_iter if max_iter is None else max_iter
        dtype = g0.dtype
        blocks_shape, aux_shape = jax.eval_shape(linearise, g0, l0)
        zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), t)  # noqa: E731
        blocks0 = zeros(blocks_shape)._replace(cost=jnp.asarray(jnp.inf, dtype))
        aux0 = zeros(aux_shape)

        def cond(state):
            *_, it, done, _ = state
            return (it < limit + 1) & ~done

        def body(state):
            g, loc, blocks, aux, lam, nu, it, _, finite = state
            first = it == 0
            dg, dl = _solve(blocks, lam)
            size = jnp.maximum(
                jnp.max(jnp.abs(dg), initial=0.0), jnp.max(jnp.abs(dl), initial=0.0)
            )
            shrink = jnp.minimum(1.0, self.max_step / jnp.maximum(size, 1e-300))
            dg, dl = dg * shrink, dl * shrink
            predicted = _predicted_decrease(blocks, dg, dl)
            g_c = jnp.where(first, g, g + dg)
            l_c = jnp.where(first, loc, loc + dl)
            blocks_c, aux_c = linearise(g_c, l_c)
            actual = blocks.cost - blocks_c.cost
            ok = jnp.isfinite(blocks_c.cost) & (
                first | ((actual > 0) & (predicted > 0))
            )
            rho = actual / jnp.maximum(predicted, 1e-300)
            step = jnp.maximum(
                jnp.max(jnp.abs(dg), initial=0.0), jnp.max(jnp.abs(dl), initial=0.0)
            )
            tol = self.rtol * blocks.cost + self.atol
            small = ~first & ((actual <= tol) | (step <= self.xtol))
            flat = ~first & (predicted <= tol)  # the model promises less than tol
            factor = jnp.where(
                first, 1.0, jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            )
            pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)  # noqa: E731
            g2, l2 = pick(g_c, g), pick(l_c, loc)
            blocks2, aux2 = pick(blocks_c, blocks), pick(aux_c, aux)
            lam2 = jnp.where(ok, lam * factor, lam * nu)
            nu2 = jnp.where(ok, jnp.asarray(2.0, dtype), nu * 2.0)
            stuck = lam2 > 1e12
            done2 = (ok & small) | stuck | (~ok & ~first & ((step <= self.xtol) | flat))
            done2 = done2 | (first & ~ok)  # not evaluable at the start
            finite2 = jnp.where(first, ok, finite)
            return g2, l2, blocks2, aux2, lam2, nu2, it + 1, done2, finite2

        state = (
            g0,
            l0,
            blocks0,
            aux0,
            jnp.asarray(self.lambda0, dtype),
            jnp.asarray(2.0, dtype),
            jnp.asarray(0),
            jnp.asarray(False),
            jnp.asarray(False),
        )
        g, loc, blocks, aux, lam, _, it, done, finite = jax.lax.while_loop(
            cond, body, state
        )
        return LMResult(
            g=g,
            loc=loc,
            blocks=blocks,
            aux=aux,
            iterations=it - 1,
            converged=done & finite & (lam <= 1e12),
            finite=finite,
        )
