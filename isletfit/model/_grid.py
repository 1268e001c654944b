r"""Fixed steps on a grid that holds every input event: one fused loop per window.

The adaptive solve of `simulate` is latency-bound when many windows are batched: each
step of its ``while_loop`` is a chain of small kernels (error norm, step-size control,
event clipping, dense output), and under ``vmap`` every lane waits for the slowest.
`simulate_grid` integrates the same impulsive system with an explicit Runge–Kutta
tableau on a grid fixed in advance, so a step is a handful of fused elementwise
operations and every lane takes the same number of them:

- the grid cuts each interval between output times into ``substeps`` equal steps (and
  the warm-up before the first output into ``warmup_steps``);
- every input event (meal, bolus, basal change) inside the window is merged into the
  grid on the fly (two pointers, one into the grid and one into the sorted events), so
  no step straddles a discontinuity and the method keeps its order;
- meals and boluses enter through the shifted state (as in `simulate`), and all inputs
  are constant inside a step: they are tabulated once per window after each event and
  read with one gather per step;
- outputs are the step ends that are output times: exact grid values, no interpolation.

The loop runs ``warmup_steps + (len(ts) - 1) * substeps + n_events`` iterations; lanes
that finish early take steps of zero length. Forward- and reverse-mode derivatives go
through the loop (``lax.scan``), and the step times depend on the inputs only, so the
derivative is that of the computed discretisation.

Accuracy and stability: explicit steps must stay inside the method's stability region,
$h\lambda_{max} \le$ `FixedGrid.max_h_lambda` with $\lambda_{max}$ of `stable_step`
(for `ExponentialRK4` and `ExponentialRK3`, which solve the fastest modes exactly,
their own `stable`); a window whose grid is coarser is returned as failed
(``diffrax.RESULTS.breakdown``) instead of with an unstable answer. The error against
a tight adaptive solve is measured in ``tests/test_grid.py``,
``tests/test_exponential.py`` and ``benchmarks/grid.py``.
"""

from __future__ import annotations

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float
from ._exponential import ExponentialRK3, ExponentialRK4, _ExponentialRK
from ._inputs import Inputs, Schedule
from ._params import Params
from ._physiology import vector_field
from ._simulate import Simulation, stable_step, with_doses
from ._state import State
from ._steady_state import steady_state

__all__ = ["FixedGrid", "grid_solve", "real_stability_limit", "simulate_grid"]


def butcher_arrays(tableau: dfx.ButcherTableau) -> tuple[np.ndarray, np.ndarray]:
    """The full ``[s, s]`` matrix A (zero on and above the diagonal) and weights b."""
    b = np.asarray(tableau.b_sol, dtype=float)
    a = np.zeros((b.shape[0], b.shape[0]))
    for i, row in enumerate(tableau.a_lower):
        a[i + 1, : len(row)] = np.asarray(row, dtype=float)
    return a, b


def real_stability_limit(tableau: dfx.ButcherTableau) -> float:
    r"""Where an explicit Runge–Kutta method's stability region ends on the real axis.

    The largest $x$ such that $|R(z)| \le 1$ on $[-x, 0]$, with the stability
    function $R(z) = 1 + z\,b^\top (I - zA)^{-1}\mathbf 1$ of the Butcher tableau
    (Hairer and Wanner 1996, IV.2): 2.0 for the two-stage second-order methods, 2.51
    for Bosh3, 3.31 for Dopri5, 3.51 for Tsit5.
    """
    a, b = butcher_arrays(tableau)
    s = b.shape[0]
    # explicit: A is nilpotent, so R(z) = 1 + sum_k z^k b^T A^(k-1) 1 is a polynomial
    coef, v = [1.0], np.ones(s)
    for _ in range(s):
        coef.append(float(b @ v))
        v = a @ v
    x = np.arange(1, 20001) * 1e-3
    unstable = np.abs(np.polyval(coef[::-1], -x)) > 1.0 + 1e-12
    return float(x[np.argmax(unstable)] - 1e-3) if unstable.any() else 20.0


class FixedGrid(eqx.Module):
    r"""Fixed-step integration on a grid that contains every input event.

    A strategy object for `simulate_grid` (and for fits, ``FitModel(grid=...)``).
    The defaults (Bosh3, 4 steps per 5-min interval) were chosen in
    ``benchmarks/grid.py``: largest CGM difference from a tight adaptive solve about
    0.02 mg/dL over 14-day windows, and the fastest of the tableaux tried at that
    accuracy (Tsit5 at 5/3 min took 2.3× as long on the CPU for a similar error).

    Attributes:
        max_step: Longest step [min]. The steps between consecutive output times (and
            in the warm-up) are that interval cut into the fewest equal pieces no longer
            than this.
        solver: An explicit Runge–Kutta solver of diffrax whose Butcher tableau is
            used (``diffrax.Bosh3()``, ``diffrax.Tsit5()``, ...), or isletfit's
            `StabilisedRK35` (stable for 4× longer steps: with ``max_step=5.0`` one
            step per CGM interval, within 0.35 mg/dL of a tight solve and 1.4–2.6×
            faster on the CPU; ``benchmarks/grid.py``), or isletfit's
            `ExponentialRK4` (the plasma–liver insulin exchange, gut absorption and
            sensor lag solved exactly, four vector-field evaluations per step; with
            ``max_step=5.0`` within about 0.2 mg/dL of a tight solve) or
            `ExponentialRK3` (three evaluations, about 0.5 mg/dL).
        safety: Fraction of the tableau's real stability limit
            (`real_stability_limit`) that $h\lambda_{max}$ may reach, with
            $\lambda_{max}$ of `stable_step`; a window whose steps go beyond it is
            marked failed. With the defaults this allows $\lambda_{max}$ up to
            1.8/min, i.e. B up to about 1.7 with the reference parameters (λ grows with
            B through the first-phase loop: 0.90/min at B = 0, 1.35/min at B = 1).
            With an exponential method its own check (`ExponentialRK4.stable`) must
            also hold at steps ``1/safety`` times longer.
        unroll: Steps per iteration of the compiled loop (``lax.scan(unroll=...)``):
            fewer loop iterations, larger fused kernels; the result is the same. Worth
            raising on GPUs, where each iteration costs a kernel launch.
    """

    max_step: float = 1.25
    solver: dfx.AbstractERK | ExponentialRK4 | ExponentialRK3 = dfx.Bosh3()
    safety: float = 0.9
    unroll: int = 1

    def __check_init__(self):
        if not (self.max_step > 0 and math.isfinite(self.max_step)):
            raise ValueError(
                f"FixedGrid.max_step must be > 0 [min], got {self.max_step}"
            )
        if not isinstance(self.solver, (dfx.AbstractERK, _ExponentialRK)):
            raise TypeError(
                "FixedGrid.solver must be an explicit Runge–Kutta solver of diffrax "
                "(e.g. diffrax.Bosh3()) or isletfit's ExponentialRK4 or ExponentialRK3, "
                "got "
                f"{type(self.solver).__name__}"
            )
        if not (isinstance(self.unroll, int) and self.unroll >= 1):
            raise ValueError(f"FixedGrid.unroll must be an int >= 1, got {self.unroll}")
        if not 0 < self.safety <= 1:
            raise ValueError(f"FixedGrid.safety must be in (0, 1], got {self.safety}")

    @property
    def max_h_lambda(self) -> float:
        r"""Largest $h\lambda_{max}$ accepted [-] (explicit Runge–Kutta solvers)."""
        if isinstance(self.solver, _ExponentialRK):
            raise TypeError(
                f"FixedGrid.max_h_lambda: {type(self.solver).__name__} has no single "
                "stability "
                "limit; see FixedGrid.stable"
            )
        return self.safety * real_stability_limit(self.solver.tableau)

    def stable(self, params: Params, b, h) -> Array:
        """Whether steps of ``h`` [min] are stable at graft capacity ``b`` [-]."""
        if isinstance(self.solver, _ExponentialRK):
            return self.solver.stable(params, b, h) & self.solver.stable(
                params, b, h / self.safety
            )
        return h <= self.max_h_lambda * stable_step(params, b, factor=1.0)

    def step(self, field, t, h, y: State, args, *, params: Params, b) -> State:
        """One step of length ``h`` [min] of ``field(t, y, args)`` at capacity ``b``."""
        if isinstance(self.solver, _ExponentialRK):
            return self.solver.step(field, t, h, y, args, params=params, b=b)
        return _rk_step(self.solver.tableau, field, t, h, y, args)

    def steps_for(self, span: float) -> int:
        """Number of equal steps no longer than ``max_step`` over ``span`` [min]."""
        if span <= 0:
            return 0
        return max(1, math.ceil(span / self.max_step - 1e-9))


class _HeldInputs(eqx.Module):
    """Inputs held constant over one step (the step never straddles an event)."""

    basal: Float[Array, ""]
    meal_size: Float[Array, ""]

    def basal_rate(self, t):
        return self.basal

    def last_meal(self, t):
        return self.meal_size


def _combine(y: State, h, weights, ks) -> State:
    """The stage value y + h Σ w_i k_i over the non-zero weights (unrolled)."""
    pairs = [(float(wi), k) for wi, k in zip(weights, ks, strict=False) if wi != 0.0]
    coefs = [c for c, _ in pairs]
    return jax.tree.map(
        lambda y0, *k: y0 + h * sum(c * ki for c, ki in zip(coefs, k, strict=True)),
        y,
        *[k for _, k in pairs],
    )


def _rk_step(tableau, field, t, h, y: State, args) -> State:
    """One explicit Runge–Kutta step of length ``h`` (stages unrolled)."""
    b = np.asarray(tableau.b_sol)
    used = int(np.flatnonzero(b)[-1]) + 1  # a last FSAL stage with b = 0 is skipped
    ks = [field(t, y, args)]
    for m in range(1, used):
        ym = _combine(y, h, np.asarray(tableau.a_lower[m - 1]), ks)
        ks.append(field(t + float(tableau.c[m - 1]) * h, ym, args))
    return _combine(y, h, b[:used], ks)


def _held_field(t, ytilde: State, args):
    """The shifted-state field (see `simulate`) with the step's inputs held."""
    params, held, b, meal, bolus = args
    return vector_field(t, with_doses(ytilde, meal, bolus), (params, held, b))


def _static_count(name: str, value, compute):
    if value is not None:
        value = int(value)
        if value < 0:
            raise ValueError(f"simulate_grid: {name} must be >= 0, got {value}")
        return value
    try:
        return compute()
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        raise ValueError(
            f"simulate_grid: {name} cannot be derived from traced times (inside jit or "
            f"vmap); pass {name}= explicitly"
        ) from None


def simulate_grid(
    params: Params,
    inputs: Inputs,
    ts: Float[ArrayLike, " times"],
    *,
    b: Float[ArrayLike, ""] = 0.0,
    y0: State | None = None,
    t0: Float[ArrayLike, ""] | None = None,
    grid: FixedGrid | None = None,
    substeps: int | None = None,
    warmup_steps: int | None = None,
    save_state: bool = False,
    cgm_only: bool = False,
) -> Simulation:
    """Simulate one window with fixed steps on a grid that holds every input event.

    Same model, inputs and semantics as `simulate` (doses at their exact times, events
    before ``t0`` ignored except the basal rate in effect at ``t0``), integrated in one
    fused loop: see the module docstring. Saves glucose, CGM and insulin, and with
    ``save_state`` every compartment.

    Args:
        params: Model parameters (scalar leaves; ``vmap`` for a population).
        inputs: Meals, boluses and basal rates of the window (times in minutes).
        ts: Output times [min], ascending.
        b: Graft functional capacity B [-], constant over the window.
        y0: State at ``t0`` before any event at ``t0``; default the fasting steady
            state for ``b`` and the basal rate in effect at ``t0``.
        t0: Start time [min]; default ``ts[0]``.
        grid: The `FixedGrid` strategy (step length, tableau, stability check);
            default ``FixedGrid()``.
        substeps: Steps per interval between output times. Default: from ``ts`` and
            ``grid.max_step`` (``ts`` must then be concrete).
        warmup_steps: Steps from ``t0`` to ``ts[0]``. Default: from ``t0``, ``ts`` and
            ``grid.max_step`` (0 when ``t0`` is not given).
        save_state: Also save all compartments at ``ts`` (after any event at exactly
            that time, as `simulate` does).
        cgm_only: Save the CGM (interstitial glucose) only: ``glucose`` and
            ``insulin`` of the result are None. For fits, which read nothing else: a
            third of the loop's output writes and, under forward-mode
            differentiation, of their tangents (about 7 % of a fit's Jacobian on the
            CPU). Ignored with ``save_state``.

    Returns:
        A `Simulation` (``state=None`` unless ``save_state``). It never raises on
        traced values: a window whose steps exceed the stability bound (or, traced,
        whose ``t0`` precedes ``ts[0]`` with ``warmup_steps=0``) is marked
        ``diffrax.RESULTS.breakdown``, one with non-finite output
        ``diffrax.RESULTS.nonfinite``.

    Raises:
        ValueError: ``ts`` is not a non-empty 1-D array, a step count cannot be
            derived (traced times) or is negative, or a concrete ``t0`` precedes
            ``ts[0]`` with ``warmup_steps=0``.
    """
    sim, _ = grid_solve(
        params,
        inputs,
        ts,
        b=b,
        y0=y0,
        t0=t0,
        grid=grid,
        substeps=substeps,
        warmup_steps=warmup_steps,
        save_state=save_state,
        cgm_only=cgm_only,
    )
    return sim


def grid_solve(
    params: Params,
    inputs: Inputs,
    ts: Float[ArrayLike, " times"],
    *,
    b: Float[ArrayLike, ""] = 0.0,
    y0: State | None = None,
    t0: Float[ArrayLike, ""] | None = None,
    grid: FixedGrid | None = None,
    substeps: int | None = None,
    warmup_steps: int | None = None,
    save_state: bool = False,
    cgm_only: bool = False,
) -> tuple[Simulation, State]:
    """`simulate_grid`, and the state at ``ts[-1]`` (doses at that time included).

    For simulations that go on from where one window ends (the segments of
    `isletfit.cohort`); arguments and errors as `simulate_grid`.
    """
    ts = jnp.asarray(ts, dtype=jnp.result_type(params.vg, float))
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(
            f"simulate_grid: ts must be a non-empty 1-D array [min], got {ts.shape}"
        )
    n = ts.shape[0]
    grid = FixedGrid() if grid is None else grid
    given_t0 = t0 is not None
    t0 = ts[0] if t0 is None else jnp.asarray(t0, ts.dtype)
    s = _static_count(
        "substeps",
        substeps,
        lambda: grid.steps_for(float(np.max(np.diff(np.asarray(ts))))) if n > 1 else 1,
    )
    s = max(s, 1)
    w = _static_count(
        "warmup_steps",
        warmup_steps,
        lambda: grid.steps_for(float(ts[0] - t0)) if given_t0 else 0,
    )
    if w == 0 and given_t0 and not isinstance(t0, jax.core.Tracer):
        if float(t0) != float(ts[0]):
            raise ValueError(
                f"simulate_grid: t0 = {float(t0)} min is before ts[0] = "
                f"{float(ts[0])} min but warmup_steps = 0; give warmup_steps >= 1"
            )
    b = jnp.asarray(b, ts.dtype)
    schedule = Schedule(inputs, t0)
    if y0 is None:
        y0 = steady_state(params, b=b, basal=schedule.basal_rate(t0))
    events = inputs.event_times().astype(ts.dtype)
    n_events = events.shape[0]
    # Row j: the next event's time and the inputs in effect once the first j events
    # (sorted) have passed: one gather per step instead of four searches.
    after = jnp.maximum(jnp.concatenate([t0[None], events]), t0)
    meal, bolus = jax.vmap(schedule.doses)(after)
    table = jnp.stack(
        [
            jnp.concatenate([events, jnp.full((1,), jnp.inf, ts.dtype)]),
            meal,
            bolus,
            jax.vmap(schedule.basal_rate)(after),
            jax.vmap(schedule.last_meal)(after),
        ]
    )
    n_grid = w + (n - 1) * s  # grid steps
    cgm_only = cgm_only and not save_state

    def saved(y):  # the outputs without `save_state` (doses move none of them)
        return jnp.stack([y.gs] if cgm_only else [y.gp, y.gs, y.ip])

    def grid_time(i):
        k = i - w
        q = jnp.clip(k // s, 0, n - 1)
        q1 = jnp.minimum(q + 1, n - 1)
        frac = (k - q * s).astype(ts.dtype) / s
        main = ts[q] + (ts[q1] - ts[q]) * frac
        warm = t0 + (ts[0] - t0) * (i.astype(ts.dtype) / max(w, 1))
        return jnp.where(i <= w, warm, main)

    def true_state(y, j):  # the state from the shifted one, doses to row j
        return with_doses(y, table[1, j], table[2, j])

    def body(carry, _):
        t, i, j, y, out, steps = carry
        done = i >= n_grid
        g_next = grid_time(jnp.minimum(i + 1, n_grid))
        e_next, meal, bolus, basal, meal_size = table[:, j]
        t_b = jnp.where(done, t, jnp.minimum(g_next, e_next))
        h = t_b - t
        held = _HeldInputs(basal, meal_size)
        y = grid.step(
            _held_field, t, h, y, (params, held, b, meal, bolus), params=params, b=b
        )
        adv_i = (~done) & (g_next <= t_b)
        adv_j = (~done) & (e_next <= t_b)
        i = i + adv_i.astype(i.dtype)
        j = j + adv_j.astype(j.dtype)
        k = i - w
        record = adv_i & (k >= 0) & (k % s == 0)
        slot = jnp.where(record, k // s, n)
        if save_state:
            out = jax.tree.map(
                lambda o, v: o.at[slot].set(v, mode="drop"), out, true_state(y, j)
            )
        else:
            out = out.at[:, slot].set(saved(y), mode="drop")
        return (t_b, i, j, y, out, steps + (h > 0).astype(steps.dtype)), None

    j0 = jnp.searchsorted(events, t0, side="right").astype(jnp.int32)
    if save_state:
        out0 = jax.tree.map(lambda v: jnp.zeros((n,), ts.dtype), y0)
        if w == 0:  # the first output is the start, with the doses at t0
            out0 = jax.tree.map(lambda o, v: o.at[0].set(v), out0, true_state(y0, j0))
    else:
        out0 = jnp.zeros((1 if cgm_only else 3, n), ts.dtype)
        if w == 0:  # the first output is the start
            out0 = out0.at[:, 0].set(saved(y0))
    carry = (t0, jnp.int32(0), j0, y0, out0, jnp.int32(0))
    (_, _, j_end, y_end, out, steps), _ = jax.lax.scan(
        body, carry, None, length=n_grid + n_events, unroll=grid.unroll
    )
    state = out if save_state else None
    if save_state:
        gp, gs, ip = out.gp, out.gs, out.ip
    elif cgm_only:
        gp, gs, ip = None, out[0], None
    else:
        gp, gs, ip = out
    h_max = jnp.maximum(
        jnp.max(jnp.diff(ts), initial=0.0) / s, (ts[0] - t0) / max(w, 1)
    )
    stable = grid.stable(params, b, h_max)
    # without warm-up steps the first output is the start itself
    stable = stable & ((w > 0) | (t0 == ts[0]))
    finite = jnp.all(jnp.isfinite(out if not save_state else jnp.stack([gp, gs, ip])))
    finite = finite & jnp.all(
        jnp.stack([jnp.isfinite(v) for v in jax.tree.leaves(y_end)])
    )
    result = dfx.RESULTS.where(
        stable,
        dfx.RESULTS.where(finite, dfx.RESULTS.successful, dfx.RESULTS.nonfinite),
        dfx.RESULTS.breakdown,
    )
    sim = Simulation(
        ts=ts,
        state=state,
        glucose=None if gp is None else gp / params.vg,
        cgm=gs,
        insulin=None if ip is None else ip / params.vi,
        result=result,
        num_steps=steps,
    )
    return sim, true_state(y_end, j_end)
