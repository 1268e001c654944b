r"""Fasting steady state of the fast subsystem, from closed forms and one scalar root.

At a fasting steady state (no meal in the gut, constant basal rate $u$, graft capacity
$B$) every compartment is a closed-form function of plasma glucose $G$:

- gut empty; $I_{sc1} = u/(k_d + k_{a1})$, $I_{sc2} = k_d I_{sc1}/k_{a2}$ (all of $u$ is
  absorbed);
- secretion $S = Y = B s_{max} h(G)$ (the first phase vanishes when $\dot G = 0$);
- $I_p = \dfrac{u + m_1 S/(m_1 + m_3)}{m_2 + m_4 - m_1 m_2/(m_1 + m_3)}$,
  $I_l = (m_2 I_p + S)/(m_1 + m_3)$, $X = I_1 = I_d = I_p/V_I$;
- $G_t$ is the positive root of $k_2 G_t^2 + (k_2 K_{m0} + V - k_1 G_p) G_t - k_1 G_p
  K_{m0} = 0$ with $V = V_{m0} + V_{mx} X$ (tissue balance);
- $G_s = G$.

$G$ itself is the root of the plasma balance $r(G) = EGP - U_{ii} - E - U_{id} = 0$,
which decreases monotonically in $G$ (every production term falls and every utilisation
term rises with glucose), so bisection on a wide bracket finds the unique root; one
final Newton step from the converged point, with the iterate held fixed, gives exact
derivatives by the implicit-function theorem.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._custom_types import Array, ArrayLike, Float
from ._params import Params
from ._physiology import glucose_fluxes, hill
from ._state import State

__all__ = [
    "basal_for_fasting_glucose",
    "steady_state",
    "steady_state_at_glucose",
    "steady_state_glucose",
]

_BRACKET = (1.0, 3000.0)  # [mg/dL]
_BISECTIONS = 80


def _tissue_glucose(params: Params, gp, x):
    """Positive root of the tissue-glucose balance (cancellation-free form)."""
    p = params
    a = p.k1 * gp
    v = p.vm0 + p.vmx * x
    bb = p.k2 * p.km0 + v - a
    disc = jnp.sqrt(bb * bb + 4.0 * p.k2 * a * p.km0)
    safe_pos = jnp.where(bb >= 0, bb + disc, 1.0)
    safe_neg = jnp.where(bb >= 0, 1.0, 2.0 * p.k2)
    return jnp.where(bb >= 0, 2.0 * a * p.km0 / safe_pos, (disc - bb) / safe_neg)


def _state_given_glucose(params: Params, g, b, u) -> State:
    p = params
    s = b * p.s_max * hill(p, g)
    m13 = p.m1 + p.m3
    ip = (u + p.m1 * s / m13) / (p.m2 + p.m4 - p.m1 * p.m2 / m13)
    il = (p.m2 * ip + s) / m13
    insulin = ip / p.vi
    gp = g * p.vg
    gt = _tissue_glucose(p, gp, insulin)
    isc1 = u / (p.kd + p.ka1)
    zero = jnp.zeros_like(g)
    return State(
        qsto1=zero,
        qsto2=zero,
        qgut=zero,
        isc1=isc1 + zero,
        isc2=p.kd * isc1 / p.ka2 + zero,
        ip=ip,
        il=il,
        x=insulin,
        i1=insulin,
        id=insulin,
        gp=gp,
        gt=gt,
        y=s,
        gs=g,
    )


def steady_state_at_glucose(
    params: Params,
    glucose: Float[ArrayLike, ""],
    *,
    b: Float[ArrayLike, ""] = 0.0,
    basal: Float[ArrayLike, ""] = 0.0,
) -> State:
    """A consistent fasting state at a given plasma glucose (not necessarily at rest).

    Every compartment except glucose takes its steady-state value for this glucose
    (insulin from the basal rate and the graft's secretion at this glucose, tissue
    glucose in balance with plasma glucose, CGM equal to plasma glucose). At the
    steady-state glucose this is `steady_state`; elsewhere it is the natural starting
    state of a window whose first glucose is known but not at rest.

    Args:
        params: Model parameters.
        glucose: Plasma glucose [mg/dL].
        b: Graft functional capacity B [fraction of a healthy adult's].
        basal: Exogenous basal insulin rate [pmol/kg/min].
    """
    dtype = jnp.result_type(params.vg, float)
    return _state_given_glucose(
        params,
        jnp.asarray(glucose, dtype),
        jnp.asarray(b, dtype),
        jnp.asarray(basal, dtype),
    )


def _residual(params: Params, g, b, u):
    y = _state_given_glucose(params, g, b, u)
    egp, uii, uid, renal = glucose_fluxes(params, y.gp, y.gt, y.x, y.id, y.il, b)
    return egp - uii - renal - uid


def steady_state_glucose(
    params: Params,
    *,
    b: Float[ArrayLike, ""] = 0.0,
    basal: Float[ArrayLike, ""] = 0.0,
) -> Float[Array, ""]:
    """Fasting steady-state plasma glucose [mg/dL].

    Args:
        params: Model parameters.
        b: Graft functional capacity B [fraction of a healthy adult's].
        basal: Constant exogenous basal insulin rate [pmol/kg/min].

    Returns:
        The glucose at which production equals utilisation, clipped to the bracket
        1–3000 mg/dL (a state outside it is not compatible with life). Works under ``jit``, ``vmap`` and ``grad``.
    """
    dtype = jnp.result_type(params.vg, float)
    b = jnp.asarray(b, dtype)
    u = jnp.asarray(basal, dtype)

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        positive = _residual(params, mid, b, u) > 0
        return jnp.where(positive, mid, lo), jnp.where(positive, hi, mid)

    lo, hi = jax.lax.fori_loop(
        0,
        _BISECTIONS,
        body,
        (jnp.asarray(_BRACKET[0], dtype), jnp.asarray(_BRACKET[1], dtype)),
    )
    g0 = jax.lax.stop_gradient(0.5 * (lo + hi))
    r, dr = jax.jvp(lambda g: _residual(params, g, b, u), (g0,), (jnp.ones_like(g0),))
    # Without a root inside the bracket (e.g. an absurd basal rate) stay at its edge.
    return jnp.clip(g0 - r / dr, _BRACKET[0], _BRACKET[1])


def steady_state(
    params: Params,
    *,
    b: Float[ArrayLike, ""] = 0.0,
    basal: Float[ArrayLike, ""] = 0.0,
) -> State:
    """Fasting steady state of every compartment.

    Args:
        params: Model parameters.
        b: Graft functional capacity B [fraction of a healthy adult's].
        basal: Constant exogenous basal insulin rate [pmol/kg/min].

    Returns:
        The `State` with empty gut and all derivatives zero (see the module docstring for
        the closed forms).
    """
    g = steady_state_glucose(params, b=b, basal=basal)
    dtype = g.dtype
    return _state_given_glucose(
        params, g, jnp.asarray(b, dtype), jnp.asarray(basal, dtype)
    )


def basal_for_fasting_glucose(
    params: Params,
    *,
    b: Float[ArrayLike, ""] = 0.0,
    target: Float[ArrayLike, ""] = 110.0,
    max_basal: float = 20.0,
) -> Float[Array, ""]:
    """Basal insulin rate that holds fasting glucose at ``target`` [pmol/kg/min].

    The exogenous insulin a person with graft capacity ``b`` needs; 0 when the graft
    alone keeps fasting glucose at or below the target. ``1 - need(b)/need(0)`` is the
    fraction of the basal insulin need that the graft covers.

    Args:
        params: Model parameters.
        b: Graft functional capacity B [fraction of a healthy adult's].
        target: Fasting glucose to reach [mg/dL].
        max_basal: Upper end of the search [pmol/kg/min] (20 ≈ 4.8 U/kg/day).

    Returns:
        The basal rate [pmol/kg/min] (steady-state glucose decreases monotonically with
        basal insulin, so bisection finds it), to about 1e-12 relative.
    """
    dtype = jnp.result_type(params.vg, float)
    target = jnp.asarray(target, dtype)

    def above(u):
        return steady_state_glucose(params, b=b, basal=u) > target

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        up = above(mid)
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(
        0, 60, body, (jnp.zeros((), dtype), jnp.asarray(max_basal, dtype))
    )
    return jnp.where(above(jnp.zeros((), dtype)), 0.5 * (lo + hi), 0.0)
