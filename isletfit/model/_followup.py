"""Follow-up simulation: observed windows in parallel, B from the slow subsystem."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Float
from ._graft import AbstractGraft
from ._inputs import Inputs
from ._params import Params
from ._simulate import Simulation, simulate
from ._steady_state import steady_state

__all__ = ["MIN_PER_DAY", "day_windows", "simulate_followup"]

#: Minutes per day: the fast model's clock is minutes, the slow model's is days.
MIN_PER_DAY = 1440.0


def day_windows(
    days: Float[ArrayLike, " windows"],
    *,
    step_min: float = 5.0,
    length_days: float = 1.0,
) -> Float[Array, "windows times"]:
    """Output grids for windows that start at midnight of each of ``days``.

    Args:
        days: Start day of each window (minutes since the reference / 1440) [day].
        step_min: Output spacing [min].
        length_days: Window length [day].

    Returns:
        Absolute output times [min], one row per window, from the window start to its
        end inclusive.
    """
    n = round(length_days * MIN_PER_DAY / step_min) + 1
    offsets = jnp.arange(n, dtype=float) * step_min
    return jnp.asarray(days, float)[:, None] * MIN_PER_DAY + offsets[None, :]


def simulate_followup(
    params: Params,
    graft: AbstractGraft,
    inputs: Inputs,
    ts: Float[ArrayLike, "windows times"],
    *,
    b: Float[ArrayLike, " windows"] | None = None,
    warmup_min: float = 0.0,
    **simulate_kwargs,
) -> tuple[Simulation, Float[Array, " windows"]]:
    """Simulate every observed window of a follow-up in parallel (``vmap``).

    Each window is an independent fast-model problem (multiple shooting): B is held at the
    graft's value at the window's mid-time, and the window starts from the fasting steady
    state for that B and the basal rate in effect at its start — or, with
    ``warmup_min > 0``, from that steady state ``warmup_min`` minutes earlier, so that
    meals and insulin of the evening before carry over into the window.

    Args:
        params: Patient parameters (scalar leaves).
        graft: The graft trajectory B(t) (`MechanisticGraft` or `FlexibleGraft`).
        inputs: All meals, boluses and basal rates of the follow-up, times in minutes
            since the reference (the same object serves every window).
        ts: Output times of each window [min since the reference], shape
            ``[windows, times]`` (see `day_windows`).
        b: Optional B per window, overriding the graft.
        warmup_min: Minutes simulated before each window's first output [min].
        **simulate_kwargs: Passed to `simulate` (solver, stepsize_controller, ...).

    Returns:
        The `Simulation` with leading axis ``windows``, and B per window.
    """
    ts = jnp.asarray(ts, jnp.result_type(params.vg, float))
    if ts.ndim != 2:
        raise ValueError(
            f"simulate_followup: ts must be [windows, times] [min], got shape {ts.shape}"
        )
    if b is None:
        b = graft(0.5 * (ts[:, 0] + ts[:, -1]) / MIN_PER_DAY)
    b = jnp.broadcast_to(jnp.asarray(b, ts.dtype), ts.shape[:1])

    def one(ts_w, b_w):
        t0 = ts_w[0] - warmup_min
        y0 = steady_state(params, b=b_w, basal=inputs.basal_rate(t0))
        return simulate(params, inputs, ts_w, b=b_w, y0=y0, t0=t0, **simulate_kwargs)

    sims = eqx.filter_vmap(one)(ts, b)
    return sims, b
