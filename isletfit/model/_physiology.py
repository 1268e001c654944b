r"""The fast (minutes) subsystem: fluxes and the pure vector field.

Equations (time in minutes; see `Params` for units and sources). With plasma glucose
$G = G_p/V_G$ [mg/dL] and plasma insulin $I = I_p/V_I$ [pmol/L]:

Meal (Dalla Man 2006/2007 three compartments, nonlinear gastric emptying):
$\dot Q_{sto1} = -k_{max} Q_{sto1}$, $\dot Q_{sto2} = k_{max} Q_{sto1} - k_{empt} Q_{sto2}$,
$\dot Q_{gut} = k_{empt} Q_{sto2} - k_{abs} Q_{gut}$, $R_a = f k_{abs} Q_{gut}$;
meals enter $Q_{sto1}$ as instantaneous doses.

Subcutaneous insulin (Dalla Man 2007 GIM): $\dot I_{sc1} = u - (k_d + k_{a1}) I_{sc1}$,
$\dot I_{sc2} = k_d I_{sc1} - k_{a2} I_{sc2}$; boluses enter $I_{sc1}$ as doses.

Insulin kinetics with graft secretion $S$ into the portal vein/liver (Dalla Man 2007):
$\dot I_p = -(m_2 + m_4) I_p + m_1 I_l + k_{a1} I_{sc1} + k_{a2} I_{sc2}$,
$\dot I_l = -(m_1 + m_3) I_l + m_2 I_p + S$, $m_3 = HE\,m_1/(1-HE)$.

Insulin action, absolute formulation (no reference to a basal insulin level):
$\dot X = p_{2U}(I - X)$, $\dot I_1 = k_i (I - I_1)$, $\dot I_d = k_i (I_1 - I_d)$.

Glucose (UVA/Padova two compartments):
$\dot G_p = EGP + R_a - U_{ii} - E - k_1 G_p + k_2 G_t$,
$\dot G_t = -U_{id} + k_1 G_p - k_2 G_t$, with
$EGP = \mathrm{softplus}(k_{p1} - k_{p2} G_p - k_{p3} I_d - k_{p4} I_l) + B\,c_{max}\,
\sigma((g_{cr} - G)/w_{cr})$ (counter-regulation by the graft's alpha cells),
$U_{ii} = F_{snc}(1 - e^{-G/g_{ii}})$, $U_{id} = (V_{m0} + V_{mx} X) G_t/(K_{m0} + G_t)$,
$E = k_{e1}\,\mathrm{softplus}(G_p - k_{e2})$.

Graft secretion (second phase a delayed Hill function, first phase on the rise of
glucose; Topp 2000, De Gaetano 2008, Dalla Man 2007):
$\dot Y = \alpha_Y (B s_{max} h(G) - Y)$, $h(G) = G^n/(g_{1/2}^n + G^n)$,
$S = Y + B k_{first}\,\mathrm{ramp}(\dot G)$.

CGM (interstitial) glucose: $\dot G_s = (G - G_s)/\tau$.

The clips of the original models (EGP >= 0, renal excretion above threshold, first
phase only while glucose rises) are replaced by smooth functions of a small fixed
width (`EGP_SMOOTH`, `RENAL_SMOOTH`, `FIRST_PHASE_SMOOTH`) so that gradients exist
everywhere; away from the switch they equal the clipped forms to machine precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._custom_types import Array, Float
from ._inputs import Inputs
from ._params import Params
from ._state import State

__all__ = ["EGP_SMOOTH", "FIRST_PHASE_SMOOTH", "RENAL_SMOOTH", "fluxes", "vector_field"]

#: Width of the smooth positivity clip of endogenous glucose production [mg/kg/min].
EGP_SMOOTH = 0.05
#: Width of the smooth renal threshold [mg/kg].
RENAL_SMOOTH = 1.0
#: Width of the smooth first-phase ramp [mg/dL/min].
FIRST_PHASE_SMOOTH = 0.05


def _softplus(x, width):
    return width * jax.nn.softplus(x / width)


def _ramp(x, width):
    """C1 ramp: 0 for x <= 0, x**2/(x + width) for x > 0 (-> x - width for large x)."""
    xp = jnp.maximum(x, 0.0)
    return xp * xp / (xp + width)


def hill(params: Params, g: Float[Array, "..."]) -> Float[Array, "..."]:
    """Normalised glucose-stimulated secretion h(G) = G^n/(g_half^n + G^n) [-]."""
    ratio = params.g_half / jnp.maximum(g, 1e-6)
    return 1.0 / (1.0 + ratio**params.n_hill)


def gastric_emptying(params: Params, qsto, dose) -> Float[Array, "..."]:
    r"""Gastric emptying rate k_empt(Q_sto) [1/min] (Dalla Man et al. 2006).

    $k_{empt} = k_{min} + \tfrac{k_{max} - k_{min}}{2}\{\tanh[a(Q_{sto} - bD)] -
    \tanh[c'(Q_{sto} - cD)] + 2\}$ with $a = 5/(2D(1-b))$, $c' = 5/(2cD)$: fast
    while the stomach is full, slow from a fraction ``b_empt`` of the meal ``D`` left
    down to ``c_empt``, fast again when nearly empty. ``D`` is the last meal [mg/kg].
    """
    p = params
    d = jnp.maximum(dose, 1e-3)
    a = 5.0 / (2.0 * d * (1.0 - p.b_empt))
    c = 5.0 / (2.0 * d * p.c_empt)
    switch = jnp.tanh(a * (qsto - p.b_empt * d)) - jnp.tanh(c * (qsto - p.c_empt * d))
    return p.kmin + 0.5 * (p.kmax - p.kmin) * (switch + 2.0)


def glucose_fluxes(
    params: Params,
    gp,
    gt,
    x,
    id_,
    il,
    b,
):
    """Glucose production and utilisation fluxes [mg/kg/min] (shared with steady state)."""
    p = params
    g = gp / p.vg
    egp_insulin = _softplus(p.kp1 - p.kp2 * gp - p.kp3 * id_ - p.kp4 * il, EGP_SMOOTH)
    counter = b * p.cr_max * jax.nn.sigmoid((p.g_cr - g) / p.w_cr)
    uii = p.fsnc * (1.0 - jnp.exp(-jnp.maximum(g, 0.0) / p.g_ii))
    uid = (p.vm0 + p.vmx * x) * gt / (p.km0 + gt)
    renal = p.ke1 * _softplus(gp - p.ke2, RENAL_SMOOTH)
    return egp_insulin + counter, uii, uid, renal


def fluxes(
    t, y: State, args: tuple[Params, Inputs, Float[Array, ""]]
) -> dict[str, Array]:
    """Named fluxes at time ``t`` (for plots and checks).

    Args:
        t: Time [min].
        y: State at ``t``.
        args: ``(params, inputs, b)`` as for `vector_field`.

    Returns:
        ``egp``, ``uii``, ``uid``, ``renal``, ``ra`` [mg/kg/min]; ``secretion``,
        ``insulin_absorption``, ``basal`` [pmol/kg/min].
    """
    params, inputs, b = args
    egp, uii, uid, renal = glucose_fluxes(params, y.gp, y.gt, y.x, y.id, y.il, b)
    dy = vector_field(t, y, args)
    secretion = dy.il + (params.m1 + params.m3) * y.il - params.m2 * y.ip
    return {
        "egp": egp,
        "uii": uii,
        "uid": uid,
        "renal": renal,
        "ra": params.f * params.kabs * y.qgut,
        "secretion": secretion,
        "insulin_absorption": params.ka1 * y.isc1 + params.ka2 * y.isc2,
        "basal": inputs.basal_rate(t),
    }


def vector_field(
    t: Float[Array, ""], y: State, args: tuple[Params, Inputs, Float[Array, ""]]
) -> State:
    """Time derivative of the fast subsystem between input events.

    Pure: no side effects, no unit conversion. Meals and boluses are instantaneous doses
    handled by `simulate` (they do not appear here); the basal insulin rate is read from
    ``inputs`` at ``t``.

    Args:
        t: Time [min].
        y: State (scalar leaves).
        args: ``(params, inputs, b)``: `Params`, `Inputs` of the window (or its
            precomputed `Schedule`), and the graft's functional capacity B [fraction of
            a healthy adult's].

    Returns:
        dy/dt as a `State` (units of each compartment per minute).
    """
    params, inputs, b = args
    p = params
    g = y.gp / p.vg
    insulin = y.ip / p.vi
    # meal
    ra = p.f * p.kabs * y.qgut
    kempt = gastric_emptying(p, y.qsto1 + y.qsto2, inputs.last_meal(t))
    d_qsto1 = -p.kmax * y.qsto1
    d_qsto2 = p.kmax * y.qsto1 - kempt * y.qsto2
    d_qgut = kempt * y.qsto2 - p.kabs * y.qgut
    # subcutaneous insulin
    u = inputs.basal_rate(t)
    d_isc1 = u - (p.kd + p.ka1) * y.isc1
    d_isc2 = p.kd * y.isc1 - p.ka2 * y.isc2
    absorption = p.ka1 * y.isc1 + p.ka2 * y.isc2
    # glucose
    egp, uii, uid, renal = glucose_fluxes(p, y.gp, y.gt, y.x, y.id, y.il, b)
    d_gp = egp + ra - uii - renal - p.k1 * y.gp + p.k2 * y.gt
    d_gt = -uid + p.k1 * y.gp - p.k2 * y.gt
    # graft secretion
    d_g = d_gp / p.vg
    d_y = p.alpha_y * (b * p.s_max * hill(p, g) - y.y)
    secretion = y.y + b * p.k_first * _ramp(d_g, FIRST_PHASE_SMOOTH)
    # insulin kinetics and action
    d_ip = -(p.m2 + p.m4) * y.ip + p.m1 * y.il + absorption
    d_il = -(p.m1 + p.m3) * y.il + p.m2 * y.ip + secretion
    d_x = p.p2u * (insulin - y.x)
    d_i1 = p.ki * (insulin - y.i1)
    d_id = p.ki * (y.i1 - y.id)
    # sensor
    d_gs = (g - y.gs) / p.tau_sensor
    return State(
        qsto1=d_qsto1,
        qsto2=d_qsto2,
        qgut=d_qgut,
        isc1=d_isc1,
        isc2=d_isc2,
        ip=d_ip,
        il=d_il,
        x=d_x,
        i1=d_i1,
        id=d_id,
        gp=d_gp,
        gt=d_gt,
        y=d_y,
        gs=d_gs,
    )
