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
the diagonal of H (Marquardt scaling) with a small floor. A rejected step along which
the cost curved more than the Gauss–Newton model says is first retried shorter, at the
minimum of the parabola through the trial (a one-step quadratic line search; Nocedal
and Wright 2006, §3.5), before the damping is raised.

The marginal covariance of g under the Laplace approximation is $S^{-1}$ at λ = 0, so the
same blocks give the uncertainty (`schur_covariance`).

References:
    - Nielsen HB. Damping parameter in Marquardt's method. Technical report
      IMM-REP-1999-05, Technical University of Denmark, 1999.
    - Nocedal J, Wright SJ. Numerical Optimization, 2nd ed. Springer, 2006.
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

__all__ = [
    "Blocks",
    "LMResult",
    "LevenbergMarquardt",
    "profiled_blocks",
    "schur_covariance",
]


class Blocks(NamedTuple):
    """Gauss–Newton blocks at one point (residuals already weighted)."""

    cost: Float[Array, ""]
    hgg: Float[Array, "ng ng"]
    bg: Float[Array, " ng"]
    hll: Float[Array, "windows nl nl"]
    hgl: Float[Array, "windows ng nl"]
    bl: Float[Array, "windows nl"]


def blocks_from_jacobians(rw, jg, jl, r0, j0, *, du=None) -> Blocks:
    r"""Assemble the normal-equation blocks from per-window and global Jacobians.

    With ``du``, ``jg`` is each window's Jacobian with respect to its own few unknowns
    u_w (``[W, m, nu]``), which depend linearly on the global ones, u_w = D_w g. The
    products are then formed in u-space and mapped to g afterwards:
    $H_{gg} = \sum_w D_w^T (J_{u,w}^T J_{u,w}) D_w$, $H_{gw} = D_w^T J_{u,w}^T J_{l,w}$,
    $b_g = \sum_w D_w^T J_{u,w}^T r_w$: the same blocks as from $J_{g,w} = J_{u,w} D_w$,
    at a cost in m·nu² instead of m·ng² per window (nu ≈ 10 against ng ≈ 100 for a
    year of graft knots: 20–30× less arithmetic).

    Args:
        rw: Window residuals ``[W, m]``.
        jg: d rw / d g ``[W, m, ng]``, or d rw / d u_w ``[W, m, nu]`` with ``du``.
        jl: d rw / d l_w ``[W, m, nl]``.
        r0: Global residuals (priors on g) ``[m0]``.
        j0: d r0 / d g ``[m0, ng]``.
        du: d u_w / d g ``[W, nu, ng]``, or None when ``jg`` is with respect to g.
    """
    cost = 0.5 * (jnp.sum(rw * rw) + jnp.sum(r0 * r0))
    hll = jnp.einsum("wmi,wmj->wij", jl, jl)
    bl = jnp.einsum("wmi,wm->wi", jl, rw)
    if du is None:
        hgg = jnp.einsum("wmi,wmj->ij", jg, jg)
        hgl = jnp.einsum("wmi,wmj->wij", jg, jl)
        bg = jnp.einsum("wmi,wm->i", jg, rw)
    else:
        huu = jnp.einsum("wmi,wmj->wij", jg, jg)
        hgg = jnp.einsum("wug,wuh->gh", du, jnp.einsum("wuv,wvh->wuh", huu, du))
        hgl = jnp.einsum("wug,wul->wgl", du, jnp.einsum("wmi,wmj->wij", jg, jl))
        bg = jnp.einsum("wug,wu->g", du, jnp.einsum("wmi,wm->wi", jg, rw))
    return Blocks(cost, hgg + j0.T @ j0, bg + j0.T @ r0, hll, hgl, bl)


def _spd_solve(
    a: Float[Array, "*batch n n"], b: Float[Array, "*batch n k"]
) -> Float[Array, "*batch n k"]:
    """``a⁻¹ b`` for (batched) small symmetric positive definite matrices ``a``.

    Gauss–Jordan elimination without pivoting (stable for SPD matrices: every pivot
    is a Schur complement of a leading block, hence positive) in plain array
    operations, one loop iteration per column. Used inside the optimiser's loop
    instead of batched LAPACK calls: XLA's CPU runtime runs batched LAPACK kernels on
    its intra-op thread pool, and with the windows or patients sharded over as many
    host devices as there are cores such a kernel waited on partitions queued behind
    itself (a deadlock, jax 0.10.2).
    """
    n = a.shape[-1]
    m = jnp.concatenate([a, b], axis=-1)  # [..., n, n + k]

    def column(k, m):
        row = jax.lax.dynamic_index_in_dim(m, k, axis=-2, keepdims=False)
        pivot = jax.lax.dynamic_index_in_dim(row, k, axis=-1, keepdims=False)
        row = row / pivot[..., None]
        col = jax.lax.dynamic_index_in_dim(m, k, axis=-1, keepdims=False)
        m = m - col[..., :, None] * row[..., None, :]
        return jax.lax.dynamic_update_index_in_dim(m, row, k, axis=-2)

    m = jax.lax.fori_loop(0, n, column, m)
    return m[..., n:]


def _spd_inverse(a: Float[Array, "*batch n n"]) -> Float[Array, "*batch n n"]:
    """Inverses of (batched) small SPD matrices (`_spd_solve` of the identity)."""
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    return _spd_solve(a, eye)


def _solve(blocks: Blocks, lam):
    """Damped Gauss–Newton step (dg, dl) by elimination of the local blocks."""
    hgg, bg, hll, hgl, bl = blocks.hgg, blocks.bg, blocks.hll, blocks.hgl, blocks.bl
    ng, nl = hgg.shape[0], hll.shape[-1]
    dg_diag = jnp.maximum(jnp.diag(hgg), 1e-9)
    dl_diag = jnp.maximum(jnp.diagonal(hll, axis1=1, axis2=2), 1e-9)
    hgg_d = hgg + lam * jnp.diag(dg_diag)
    hll_d = hll + lam * jax.vmap(jnp.diag)(dl_diag)
    hll_inv = _spd_inverse(hll_d) if nl > 0 else hll_d
    k = jnp.einsum("wgi,wij->wgj", hgl, hll_inv)  # H_gw H_ww^-1
    schur = hgg_d - jnp.einsum("wgj,whj->gh", k, hgl)
    rhs = -bg + jnp.einsum("wgj,wj->g", k, bl)
    dg = _spd_solve(schur, rhs[:, None])[:, 0] if ng > 0 else rhs
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


def profiled_blocks(
    blocks: Blocks,
) -> tuple[Float[Array, "ng ng"], Float[Array, " ng"], Float[Array, "windows nl nl"]]:
    r"""The Gauss–Newton model of the global unknowns with the local ones profiled out.

    Minimising the quadratic model over each window's local unknowns leaves
    $\tfrac12 \delta_g^T S \delta_g + b_S^T \delta_g$ with the Schur complement
    $S = H_{gg} - \sum_w H_{gw} H_{ww}^{+} H_{wg}$ and
    $b_S = b_g - \sum_w H_{gw} H_{ww}^{+} b_w$ (pseudo-inverses: padded windows have
    zero blocks).

    Returns:
        ``(S, b_S, H_ww^+)``: the last for the local unknowns' own steps.
    """
    hll, hgl = blocks.hll, blocks.hgl
    if hll.shape[-1] == 0:
        return blocks.hgg, blocks.bg, hll
    hll_inv = jnp.linalg.pinv(hll, hermitian=True)
    k = jnp.einsum("wgi,wij->wgj", hgl, hll_inv)
    schur = blocks.hgg - jnp.einsum("wgj,whj->gh", k, hgl)
    grad = blocks.bg - jnp.einsum("wgj,wj->g", k, blocks.bl)
    return 0.5 * (schur + schur.T), grad, hll_inv


def schur_covariance(blocks: Blocks) -> Float[Array, "ng ng"]:
    """Marginal covariance of the global unknowns (Laplace, Gauss–Newton Hessian)."""
    schur, _, _ = profiled_blocks(blocks)
    return jnp.linalg.pinv(schur, hermitian=True)


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
    schur, _, hll_inv = profiled_blocks(blocks)
    cov = jnp.linalg.pinv(schur, hermitian=True)
    if blocks.hll.shape[-1] > 0:
        scores = scores - jnp.einsum("wgi,wij,wj->wg", blocks.hgl, hll_inv, blocks.bl)
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
        jacobians: Of these, the points linearised with a fresh Jacobian; the others
            were evaluated with a held one.
        converged: True if the cost decrease or the step fell below the tolerance
            before ``max_iter``.
        finite: False if the problem could not be evaluated at the starting point.
        stopped: True if the solve ended for a reason other than ``max_iter``
            (converged, stuck or not evaluable): False means it may be continued.
        damping: The damping λ at the end (to continue a solve where it stopped).
    """

    g: Float[Array, " ng"]
    loc: Float[Array, "windows nl"]
    blocks: Blocks
    aux: Any
    iterations: Array
    jacobians: Array
    converged: Array
    finite: Array
    stopped: Array
    damping: Array


class LevenbergMarquardt(eqx.Module):
    """Levenberg–Marquardt with Nielsen damping on the arrow-structured system.

    With ``reuse_jacobian > 0`` and an ``evaluate`` callable, trial points after a
    fresh linearisation are first tried with the Jacobian held (the chord or
    "modified Gauss–Newton" method; Dennis and Schnabel 1996, §6.4 / Kelley 1995,
    §5.4): a trial then costs one forward solve of the model instead of a forward-mode
    Jacobian (about 10× less here). The gradient Jᵀr is formed with the held Jacobian
    and the new residuals, the Gauss–Newton matrix is kept. The Jacobian is refreshed
    at the current point after ``reuse_jacobian`` held steps; the first held step that
    is rejected or looks converged also refreshes it and ends the held steps of this
    solve (near the optimum they stop paying: plain Levenberg–Marquardt from there).
    Convergence is only declared from a fresh linearisation, and the returned blocks
    (for the Laplace covariance) are always exact. Far from the optimum (multi-start
    screening) this halves the Jacobians needed.

    Attributes:
        max_iter: Maximum iterations (accepted plus rejected steps, with fresh or held
            Jacobians).
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
        reuse_jacobian: Most consecutive steps taken with a held Jacobian (0: a fresh
            Jacobian at every trial point). Used only when the caller provides
            ``evaluate``.
        line_search: After a rejected step from fresh blocks along which the cost
            rose faster than the Gauss–Newton model predicted, retry once along the
            same direction at the minimum of the parabola through the cost at both
            ends and the exact slope at the start (clipped to [0.1, 0.9] of the
            step), keeping the damping, before raising it. The Gauss–Newton matrix
            lacks the curvature Σ rᵢ∇²rᵢ of the residuals; in the sloppy directions
            of a long CGM record (sensor calibration against daily insulin
            absorption) that term is as large as the matrix itself (measured: the
            cost's curvature along the step 2.1× the model's), a full step
            overshoots, and raising the damping alone shrinks the sloppy directions
            far more than needed — slow, linear convergence. On the 6 × 14-day
            synthetic recipient of ``benchmarks/fit.py`` this took `fit_patient`
            from 36–46 to 30–34 iterations, 1.05–1.17× faster warm
            (``benchmarks/RESULTS.md``).

    References:
        - Dennis JE, Schnabel RB. Numerical Methods for Unconstrained Optimization and
          Nonlinear Equations. SIAM, 1996.
        - Kelley CT. Iterative Methods for Linear and Nonlinear Equations. SIAM, 1995.
    """

    max_iter: int = 60
    rtol: float = 1e-8
    atol: float = 1e-2
    xtol: float = 1e-7
    lambda0: float = 1e-2
    screen_iter: int = 4
    max_step: float = 1.0
    reuse_jacobian: int = 4
    line_search: bool = True

    def __call__(
        self,
        linearise: Callable[[Array, Array], tuple[Blocks, Any]],
        g0: Float[Array, " ng"],
        l0: Float[Array, "windows nl"],
        *,
        max_iter=None,
        evaluate: Callable[[Array, Array, Any, Blocks], tuple[Blocks, Any]]
        | None = None,
        damping=None,
        start: tuple[Blocks, Any] | None = None,
        carried=False,
    ) -> LMResult:
        """Minimise ½‖r‖² from ``(g0, l0)``.

        Every fresh candidate point is linearised (residuals and Jacobians in one
        forward-mode pass), so an accepted step needs no second evaluation. The first
        iteration "accepts" the starting point itself.

        Args:
            linearise: ``(g, loc) -> (Blocks, aux)``, or ``(Blocks, aux, jac)`` when
                ``evaluate`` is given; a NaN cost means not evaluable; ``aux`` (e.g.
                predictions) of the accepted point is returned.
            g0: Starting global unknowns.
            l0: Starting local unknowns.
            max_iter: Overrides ``self.max_iter`` (may be a traced integer, so one
                compiled program serves screening and full runs).
            evaluate: ``(g, loc, jac, blocks) -> (Blocks, aux)``: the blocks at a new
                point from its residuals and a held Jacobian ``jac`` (Gauss–Newton
                matrix kept from ``blocks``); enables Jacobian reuse.
            damping: Starting λ (default ``lambda0``; may be traced), e.g. the
                `LMResult.damping` of a solve this one continues.
            start: ``(blocks, aux)`` at ``(g0, l0)`` from the solve this one
                continues (its `LMResult.blocks` and ``aux``), used where
                ``carried``: the solve then takes a step at once instead of
                linearising its starting point again, and every one of its
                ``max_iter`` iterations is a step. With ``damping`` carried too it
                continues exactly where the other stopped (after an accepted step).
            carried: Whether to use ``start`` (may be traced, e.g. per lane of a
                ``vmap``).
        """
        limit = self.max_iter if max_iter is None else max_iter
        reuse = evaluate is not None and self.reuse_jacobian > 0
        if reuse:
            full = linearise
        else:
            # one signature inside: (blocks, aux, held Jacobians = nothing)
            def full(g, loc):
                out = linearise(g, loc)
                return out[0], out[1], ()

        dtype = g0.dtype
        # traced once: the shapes below and the loop's trials share the trace
        full = jax.jit(full)
        blocks_shape, aux_shape, jac_shape = jax.eval_shape(full, g0, l0)
        zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), t)  # noqa: E731
        blocks0 = zeros(blocks_shape)._replace(cost=jnp.asarray(jnp.inf, dtype))
        aux0 = zeros(aux_shape)
        carried = jnp.asarray(carried, bool) & (start is not None)
        if start is not None:
            blocks0, aux0 = jax.tree.map(
                lambda x, y: jnp.where(carried, x, y), start, (blocks0, aux0)
            )
        # a carried start is not linearised again: one iteration fewer to count
        offset = jnp.where(carried, 0, 1)

        def trial(held, g_c, l_c, jac, blocks):
            if not reuse:
                return full(g_c, l_c)
            return jax.lax.cond(
                held,
                lambda: (*evaluate(g_c, l_c, jac, blocks), jac),
                lambda: full(g_c, l_c),
            )

        def cond(state):
            return (state["it"] < limit + offset) & ~state["done"]

        def body(s):
            g, loc, blocks, lam, nu = s["g"], s["loc"], s["blocks"], s["lam"], s["nu"]
            first = (s["it"] == 0) & ~carried
            # linearise at the current point without moving (start, or a refresh)
            # the last iteration never ends on held blocks: refresh or a fresh trial
            last = s["it"] >= limit + offset - 1
            here = first | s["refresh"] | (last & ~s["fresh"])
            dg, dl = _solve(blocks, lam)
            size = jnp.maximum(
                jnp.max(jnp.abs(dg), initial=0.0), jnp.max(jnp.abs(dl), initial=0.0)
            )
            shrink = jnp.minimum(1.0, self.max_step / jnp.maximum(size, 1e-300))
            # after a rejected step: the same direction, shortened to the minimum of
            # the parabola through the trial (`line_search`)
            shrink = shrink * s["scale"]
            dg, dl = dg * shrink, dl * shrink
            predicted = _predicted_decrease(blocks, dg, dl)
            g_c = jnp.where(here, g, g + dg)
            l_c = jnp.where(here, loc, loc + dl)
            # a held (chord) step only where the caller can evaluate one: without
            # `evaluate` every trial point is linearised afresh
            held = (
                s["chord"] & ~here & ~last & (s["n_held"] < self.reuse_jacobian)
                if reuse
                else jnp.asarray(False)
            )
            blocks_c, aux_c, jac_c = trial(held, g_c, l_c, s["jac"], blocks)
            actual = blocks.cost - blocks_c.cost
            ok = jnp.isfinite(blocks_c.cost) & (here | ((actual > 0) & (predicted > 0)))
            rho = actual / jnp.maximum(predicted, 1e-300)
            step = jnp.maximum(
                jnp.max(jnp.abs(dg), initial=0.0), jnp.max(jnp.abs(dl), initial=0.0)
            )
            tol = self.rtol * blocks.cost + self.atol
            small = ~here & ((actual <= tol) | (step <= self.xtol))
            flat = ~here & (predicted <= tol)  # the model promises less than tol
            # a step from held blocks settles nothing: refresh instead of stopping,
            # and after a rejected one refresh before raising the damping
            fresh_step = s["fresh"] | here
            factor = jnp.where(
                here, 1.0, jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            )
            # converged by a small step from fresh blocks: when that step was only
            # evaluated (held Jacobian), stay (within tol) where the blocks are exact
            stop_small = fresh_step & ok & small
            move = ok & ~(stop_small & held)
            pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(move, x, y), a, b)  # noqa: E731
            g2, l2 = pick(g_c, g), pick(l_c, loc)
            blocks2, aux2 = pick(blocks_c, blocks), pick(aux_c, s["aux"])
            jac2 = pick(jac_c, s["jac"])
            # A rejected fresh step whose cost rose faster than the Gauss–Newton model
            # said (curvature the model lacks, e.g. Σ r ∇²r in sloppy directions) is
            # retried once along the same direction at the minimum of the parabola
            # through c(0), c'(0) and c(1), the damping kept; otherwise, and when
            # that retry fails too, the damping is raised.
            slope = dg @ blocks.bg + jnp.sum(dl * blocks.bl)  # c'(0), exact if fresh
            curvature = 2.0 * (blocks_c.cost - blocks.cost - slope)
            t_min = -slope / jnp.where(curvature > 0, curvature, 1.0)
            retry = (
                self.line_search
                & ~ok
                & s["fresh"]
                & ~here
                & ~held
                & (s["scale"] == 1.0)
                & jnp.isfinite(blocks_c.cost)
                & (slope < 0)
                & (curvature > 0)
                & (t_min < 1.0)
            )
            scale2 = jnp.where(retry, jnp.clip(t_min, 0.1, 0.9), 1.0)
            raise_lam = ~ok & fresh_step & ~retry
            lam2 = jnp.where(ok, lam * factor, jnp.where(raise_lam, lam * nu, lam))
            nu2 = jnp.where(
                ok, jnp.asarray(2.0, dtype), jnp.where(raise_lam, nu * 2.0, nu)
            )
            stuck = (lam2 > 1e12) & ~ok
            done2 = stop_small | fresh_step & (
                stuck | (~ok & ~here & ((step <= self.xtol) | flat))
            )
            done2 = done2 | (here & ~ok)  # not evaluable at the start
            fresh2 = jnp.where(move, ~held, s["fresh"])
            refresh2 = ~done2 & ~here & ~fresh2 & (~ok | small | flat)
            refresh2 = refresh2 | (
                ~done2 & ok & held & (s["n_held"] + 1 >= self.reuse_jacobian)
            )
            return {
                "g": g2,
                "loc": l2,
                "blocks": blocks2,
                "aux": aux2,
                "jac": jac2,
                "lam": lam2,
                "nu": nu2,
                "it": s["it"] + 1,
                "done": done2,
                "finite": jnp.where(first, ok, s["finite"]),
                "fresh": fresh2,
                "refresh": refresh2,
                "n_held": jnp.where(move & held, s["n_held"] + 1, 0),
                "scale": scale2,
                # near the optimum held Jacobians stop paying: plain LM from then on
                "chord": s["chord"] & ~(held & (~ok | small | flat)),
                "jacobians": s["jacobians"] + (~held).astype(s["jacobians"].dtype),
            }

        state = {
            "g": g0,
            "loc": l0,
            "blocks": blocks0,
            "aux": aux0,
            "jac": zeros(jac_shape),
            "lam": jnp.asarray(self.lambda0 if damping is None else damping, dtype),
            "nu": jnp.asarray(2.0, dtype),
            "it": jnp.asarray(0),
            "done": jnp.asarray(False),
            "finite": carried,
            "fresh": jnp.asarray(True),
            "refresh": jnp.asarray(False),
            "n_held": jnp.asarray(0),
            "scale": jnp.asarray(1.0, dtype),
            "chord": jnp.asarray(True),
            "jacobians": jnp.asarray(0),
        }
        s = jax.lax.while_loop(cond, body, state)
        return LMResult(
            g=s["g"],
            loc=s["loc"],
            blocks=s["blocks"],
            aux=s["aux"],
            iterations=s["it"] - offset,
            jacobians=s["jacobians"],
            converged=s["done"] & s["finite"] & (s["lam"] <= 1e12),
            finite=s["finite"],
            stopped=s["done"],
            damping=s["lam"],
        )
