"""Simulate one window of the fast subsystem with diffrax."""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Float, Int
from ._inputs import Inputs
from ._params import Params
from ._physiology import vector_field
from ._state import State
from ._steady_state import steady_state

__all__ = [
    "FrozenStepsController",
    "Simulation",
    "default_controller",
    "fixed_step_controller",
    "simulate",
    "stable_step",
]


class Simulation(eqx.Module):
    """The output of `simulate` for one window (add leading axes when batched).

    Attributes:
        ts: Output times [min].
        state: All compartments at ``ts`` (after any event at exactly that time), or
            None when simulated with ``save_state=False``.
        glucose: Plasma glucose G = Gp/VG [mg/dL] (None from
            ``simulate_grid(cgm_only=True)``).
        cgm: Interstitial glucose, what a CGM senses before its own error [mg/dL].
        insulin: Plasma insulin I = Ip/VI [pmol/L] (None likewise).
        result: The solver's result code (``diffrax.RESULTS``); check
            ``result == diffrax.RESULTS.successful``. Solves never raise, so one failed
            window in a ``vmap`` batch does not stop the others; outputs of a failed
            solve are not meaningful.
        num_steps: Accepted plus rejected solver steps.
    """

    ts: Float[Array, " times"]
    state: State | None
    glucose: Float[Array, " times"] | None
    cgm: Float[Array, " times"]
    insulin: Float[Array, " times"] | None
    result: dfx.RESULTS
    num_steps: Int[Array, ""]

    @property
    def successful(self) -> jax.Array:
        """Boolean (array): True where the solve succeeded."""
        return self.result == dfx.RESULTS.successful


def default_controller() -> dfx.PIDController:
    """An adaptive controller with rtol = atol = 1e-6 and no step bound.

    Fine for simulation; for derivatives bound the step (``dtmax=stable_step(...)``),
    as `simulate` does by default.
    """
    return dfx.PIDController(rtol=1e-6, atol=1e-6)


def fixed_step_controller(dt: float) -> dfx.PIDController:
    """Fixed steps of ``dt`` minutes that still land exactly on every input event.

    A PID controller with infinite tolerance always accepts and grows its step to
    ``dtmax``; `simulate` clips it onto meal, bolus and basal times. Use with
    ``dt0=dt`` for speed when a known accuracy suffices (see benchmarks/simulate.py).

    Args:
        dt: Step [min].
    """
    return dfx.PIDController(rtol=1e12, atol=1e12, dtmax=dt)


def stable_step(
    params: Params, b: Float[ArrayLike, ""] = 0.0, *, factor: float = 2.5
) -> Float[Array, ""]:
    r"""Largest step [min] at which an explicit Runge–Kutta solver stays stable.

    An adaptive controller bounds only the local error of the solution. Near a steady
    state (the fasting night, every window's warm-up) that error vanishes and the step
    grows without bound; the solution does not care, but a forward-mode derivative
    does: its linear equation sees $h\lambda$ far outside the stability region, and its
    tangents grew to 1e9 where finite differences gave 0.7. The fastest mode of the
    model is the plasma–liver insulin exchange, a 2×2 block with diagonal
    $a = m_2 + m_4$, $d = m_1 + m_3 + B k_{first} k_{p4}/V_G$ (the first-phase loop:
    liver insulin suppresses glucose production, whose rise drives secretion) and
    off-diagonal product $m_1 m_2$, so
    $\lambda_{max} = \tfrac12\,[a + d + \sqrt{(a-d)^2 + 4 m_1 m_2}]$. The meal,
    subcutaneous-insulin and sensor rates are included too. Tsit5's stability region
    reaches about $-3.5$ on the real axis; ``factor`` 2.5 keeps a margin.

    Args:
        params: Model parameters.
        b: Graft capacity B [-].
        factor: $h\lambda_{max}$ allowed [-].

    Returns:
        ``factor / λ_max`` [min].
    """
    p = params
    a = p.m2 + p.m4
    d = p.m1 + p.m3 + b * p.k_first * p.kp4 / p.vg
    lam = 0.5 * (a + d + jnp.sqrt((a - d) ** 2 + 4.0 * p.m1 * p.m2))
    rates = jnp.stack(
        jnp.broadcast_arrays(
            lam, p.kabs, p.kmax, p.kd + p.ka1, p.ka2, 1.0 / p.tau_sensor
        )
    )
    return factor / jnp.max(rates)


class FrozenStepsController(dfx.AbstractAdaptiveStepSizeController):
    """Wraps an adaptive controller so that derivatives treat its step times as fixed.

    Differentiating through an adaptive solve also differentiates the step-size choice,
    which depends on the solution through the error estimate: a noisy term with no
    physical meaning (batched and unbatched tangents of the same solve disagreed).
    Holding the steps fixed gives the exact derivative of the computed discretisation,
    consistent with the primal solution and with finite differences, at no cost. (The
    other condition for sound derivatives, steps inside the stability region of the
    tangent equation, is `stable_step`.)

    Attributes:
        controller: The wrapped adaptive controller.
    """

    controller: dfx.AbstractAdaptiveStepSizeController

    @property
    def rtol(self):
        """The wrapped controller's relative tolerance."""
        return self.controller.rtol

    @property
    def atol(self):
        """The wrapped controller's absolute tolerance."""
        return self.controller.atol

    @property
    def norm(self):
        """The wrapped controller's error norm."""
        return self.controller.norm

    def wrap(self, direction):
        """Wrap the inner controller for the direction of integration."""
        return FrozenStepsController(self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        """The inner controller's first step, with its end time held constant."""
        t_next, state = self.controller.init(
            terms, t0, t1, y0, dt0, args, func, error_order
        )
        return jax.lax.stop_gradient(t_next), state

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        """The inner controller's decision, with the next step's times held constant."""
        keep, next_t0, next_t1, jumped, state, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
        )
        return (
            keep,
            jax.lax.stop_gradient(next_t0),
            jax.lax.stop_gradient(next_t1),
            jumped,
            state,
            result,
        )


def _observed(t, ytilde: State, args):
    """What a fit needs: plasma glucose, interstitial glucose, plasma insulin masses."""
    return ytilde.gp, ytilde.gs, ytilde.ip


def with_doses(ytilde: State, meal, bolus) -> State:
    """The state y from the shifted state y~ (see `_shifted_field`).

    Adds the meal [mg/kg] to the stomach and the bolus [pmol/kg] to the first
    subcutaneous compartment.
    """
    return eqx.tree_at(
        lambda s: (s.qsto1, s.isc1), ytilde, (ytilde.qsto1 + meal, ytilde.isc1 + bolus)
    )


def _shifted_field(t, ytilde: State, args):
    """Vector field of the shifted state y~ = y - (doses given in [t0, t]).

    Meals and boluses are impulses on qsto1 and isc1. Between events y and y~ have the
    same derivative, and y~ is continuous across events, so one adaptive solve with
    jump times at the events integrates the impulsive system exactly.
    """
    params, schedule, b = args
    meal, bolus = schedule.doses(t)
    return vector_field(t, with_doses(ytilde, meal, bolus), (params, schedule, b))


def simulate(
    params: Params,
    inputs: Inputs,
    ts: Float[ArrayLike, " times"],
    *,
    b: Float[ArrayLike, ""] = 0.0,
    y0: State | None = None,
    t0: Float[ArrayLike, ""] | None = None,
    solver: dfx.AbstractSolver = dfx.Tsit5(),
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    max_steps: int = 65536,
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(),
    save_state: bool = True,
) -> Simulation:
    """Simulate one window of the fast subsystem and return the states at ``ts``.

    Meals and boluses are instantaneous doses at their exact times: the solver steps to
    just before and restarts just after every event (``jump_ts``), so nothing is smeared
    and adaptive steps are not wasted locating discontinuities. Events before ``t0`` are
    ignored except the basal rate in effect at ``t0``.

    Args:
        params: Model parameters (scalar leaves; ``vmap`` for a population).
        inputs: Meals, boluses and basal rates of the window (times in minutes).
        ts: Output times [min], ascending.
        b: Graft functional capacity B [fraction of a healthy adult's], constant over the
            window.
        y0: State at ``t0`` before any event at ``t0``. Default: the fasting steady state
            for ``b`` and the basal rate in effect at ``t0``.
        t0: Start time [min]; default ``ts[0]``.
        solver: A diffrax solver, e.g. ``diffrax.Tsit5()`` or ``diffrax.Kvaerno5()``.
        stepsize_controller: A diffrax step-size controller. Adaptive controllers are
            wrapped so that they step onto input events, and so that derivatives hold
            their step times fixed (`FrozenStepsController`). Default: rtol = atol =
            1e-6 with steps bounded by `stable_step`, so that derivatives (forward or
            reverse) are as stable as the solution; a controller passed here should
            set ``dtmax`` likewise when the solve is differentiated.
        dt0: Initial step [min] (required by constant-step controllers).
        max_steps: Maximum number of solver steps.
        adjoint: How to differentiate through the solve (``diffrax.ForwardMode()`` for
            forward-mode Jacobians).
        save_state: Save all 14 compartments (``state``); with False only glucose, CGM
            and insulin are saved and ``state`` is None — much less memory traffic for
            long windows in large batches (see benchmarks/simulate.py).

    Returns:
        A `Simulation`. The solve never raises (``throw=False``); inspect ``result``.
    """
    ts = jnp.asarray(ts, dtype=jnp.result_type(params.vg, float))
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(
            f"simulate: ts must be a non-empty 1-D array [min], got {ts.shape}"
        )
    t0 = ts[0] if t0 is None else jnp.asarray(t0, ts.dtype)
    t1 = ts[-1]
    b = jnp.asarray(b, ts.dtype)
    schedule = inputs.schedule(t0)
    if y0 is None:
        y0 = steady_state(params, b=b, basal=schedule.basal_rate(t0))
    if stepsize_controller is None:
        stepsize_controller = dfx.PIDController(
            rtol=1e-6, atol=1e-6, dtmax=stable_step(params, b)
        )
    if isinstance(stepsize_controller, dfx.AbstractAdaptiveStepSizeController) and not (
        isinstance(stepsize_controller, dfx.ClipStepSizeController)
    ):
        events = inputs.event_times()
        if events.shape[0] > 0:
            stepsize_controller = dfx.ClipStepSizeController(
                stepsize_controller, jump_ts=events
            )
    if isinstance(stepsize_controller, dfx.AbstractAdaptiveStepSizeController):
        stepsize_controller = FrozenStepsController(stepsize_controller)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(_shifted_field),
        solver,
        t0=t0,
        t1=jnp.maximum(t1, t0),
        dt0=dt0,
        y0=y0,
        args=(params, schedule, b),
        saveat=dfx.SaveAt(ts=ts) if save_state else dfx.SaveAt(ts=ts, fn=_observed),
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=False,
    )
    if save_state:
        meal, bolus = jax.vmap(schedule.doses)(ts)
        state = with_doses(sol.ys, meal, bolus)
        gp, gs, ip = state.gp, state.gs, state.ip
    else:
        state = None
        gp, gs, ip = sol.ys
    return Simulation(
        ts=ts,
        state=state,
        glucose=gp / params.vg,
        cgm=gs,
        insulin=ip / params.vi,
        result=sol.result,
        num_steps=sol.stats["num_steps"],
    )
