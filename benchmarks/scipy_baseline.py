"""The baseline of benchmarks/fit.py: the same model and objective without JAX.

What a careful user without JAX would write: the isletfit vector field in numpy, each
day-window integrated with ``scipy.integrate.solve_ivp`` (LSODA) piece by piece between
input events (meals and boluses added to the state at their times), and the MAP fit by
``scipy.optimize.least_squares`` with a finite-difference Jacobian — given the Jacobian's
sparsity pattern (each window depends on the physiology, two graft knots and its own
local unknowns), so that finite differences group columns. Same unknowns, priors and
residuals as `isletfit.fitting` (Gaussian AR(1) error with the SD and coefficient fixed).

The equations are deliberately a second, independent implementation (numpy), so this file
doubles as a cross-check of the JAX model (benchmarks/fit.py reports the difference of
the two at the same parameters).
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.integrate
import scipy.optimize

#: LSODA tolerance: tight enough that finite differences of step DIFF_STEP are clean
#: (solver noise ~1e-7 relative against a 1e-4 relative step).
RTOL = 1e-7
DIFF_STEP = 1e-4


def physical(problem: dict, theta: np.ndarray) -> dict[str, float]:
    """Values of the estimated parameters from their logs θ, softly bounded.

    The same map as isletfit's objective (`Objective.params_from`): θ' = ℓ + s(h −
    s(h − θ) − ℓ) with s(x) = log(1 + e^{kx})/k, ℓ and h the logs of the field's
    physiological bounds, k the sharpness (``problem["theta_lo"]``, ``["theta_hi"]``,
    ``["bound_sharpness"]``).
    """
    k = problem["bound_sharpness"]
    lo, hi = problem["theta_lo"], problem["theta_hi"]
    soft = lambda x: np.logaddexp(0.0, k * x) / k  # noqa: E731
    value = np.exp(lo + soft(hi - soft(hi - np.asarray(theta)) - lo))
    return {n: float(v) for n, v in zip(problem["names"], value, strict=True)}


def predictions(problem: dict, x: np.ndarray) -> list[np.ndarray]:
    """Model CGM of every window [mg/dL] at the unknowns ``x`` (layout as `fit`)."""
    n_theta, n_knots = len(problem["names"]), problem["n_knots"]
    knots = x[n_theta : n_theta + n_knots]
    local = x[n_theta + n_knots :].reshape(len(problem["windows"]), 2)
    values = physical(problem, x[:n_theta])
    out = []
    for w, win in enumerate(problem["windows"]):
        p = dict(problem["base"], **values)
        p["vmx"] *= float(np.exp(local[w, 1]))
        b = float(np.exp(win["interp"] @ knots)) if win["graft_on"] else 0.0
        out.append(simulate_window(p, b, win, float(np.exp(local[w, 0]))))
    return out


def _softplus(x, w):
    return w * np.logaddexp(0.0, x / w)


def _ramp(x, w):
    xp = max(x, 0.0)
    return xp * xp / (xp + w)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def rhs(p: dict, y: np.ndarray, b: float, basal: float, last_meal: float) -> np.ndarray:
    """The fast-model vector field (same equations as isletfit.model.vector_field)."""
    qsto1, qsto2, qgut, isc1, isc2, ip, il, x, i1, id_, gp, gt, yy, gs = y
    g = gp / p["vg"]
    insulin = ip / p["vi"]
    d = max(last_meal, 1e-3)
    qsto = qsto1 + qsto2
    a = 5.0 / (2.0 * d * (1.0 - p["b_empt"]))
    c = 5.0 / (2.0 * d * p["c_empt"])
    kempt = p["kmin"] + 0.5 * (p["kmax"] - p["kmin"]) * (
        np.tanh(a * (qsto - p["b_empt"] * d))
        - np.tanh(c * (qsto - p["c_empt"] * d))
        + 2.0
    )
    ra = p["f"] * p["kabs"] * qgut
    egp = _softplus(p["kp1"] - p["kp2"] * gp - p["kp3"] * id_ - p["kp4"] * il, 0.05)
    egp += b * p["cr_max"] * _sigmoid((p["g_cr"] - g) / p["w_cr"])
    uii = p["fsnc"] * (1.0 - np.exp(-max(g, 0.0) / p["g_ii"]))
    uid = (p["vm0"] + p["vmx"] * x) * gt / (p["km0"] + gt)
    renal = p["ke1"] * _softplus(gp - p["ke2"], 1.0)
    d_gp = egp + ra - uii - renal - p["k1"] * gp + p["k2"] * gt
    hill = 1.0 / (1.0 + (p["g_half"] / max(g, 1e-6)) ** p["n_hill"])
    secretion = yy + b * p["k_first"] * _ramp(d_gp / p["vg"], 0.05)
    m3 = p["hepatic_extraction"] * p["m1"] / (1.0 - p["hepatic_extraction"])
    return np.array(
        [
            -p["kmax"] * qsto1,
            p["kmax"] * qsto1 - kempt * qsto2,
            kempt * qsto2 - p["kabs"] * qgut,
            basal - (p["kd"] + p["ka1"]) * isc1,
            p["kd"] * isc1 - p["ka2"] * isc2,
            -(p["m2"] + p["m4"]) * ip
            + p["m1"] * il
            + p["ka1"] * isc1
            + p["ka2"] * isc2,
            -(p["m1"] + m3) * il + p["m2"] * ip + secretion,
            p["p2u"] * (insulin - x),
            p["ki"] * (insulin - i1),
            p["ki"] * (i1 - id_),
            d_gp,
            -uid + p["k1"] * gp - p["k2"] * gt,
            p["alpha_y"] * (b * p["s_max"] * hill - yy),
            (g - gs) / p["tau_sensor"],
        ]
    )


def start_state(p: dict, g: float, b: float, basal: float) -> np.ndarray:
    """Consistent fasting state at plasma glucose ``g`` (closed forms)."""
    s = b * p["s_max"] / (1.0 + (p["g_half"] / g) ** p["n_hill"])
    m3 = p["hepatic_extraction"] * p["m1"] / (1.0 - p["hepatic_extraction"])
    m13 = p["m1"] + m3
    ip = (basal + p["m1"] * s / m13) / (p["m2"] + p["m4"] - p["m1"] * p["m2"] / m13)
    il = (p["m2"] * ip + s) / m13
    insulin = ip / p["vi"]
    gp = g * p["vg"]
    v = p["vm0"] + p["vmx"] * insulin
    a = p["k1"] * gp
    bb = p["k2"] * p["km0"] + v - a
    gt = (-bb + np.sqrt(bb * bb + 4 * p["k2"] * a * p["km0"])) / (2 * p["k2"])
    isc1 = basal / (p["kd"] + p["ka1"])
    return np.array(
        [
            0,
            0,
            0,
            isc1,
            p["kd"] * isc1 / p["ka2"],
            ip,
            il,
            insulin,
            insulin,
            insulin,
            gp,
            gt,
            s,
            g,
        ],
        dtype=float,
    )


def fasting_glucose(p: dict, b: float, basal: float) -> float:
    """Steady-state glucose by a scalar root find (brentq)."""

    def balance(g):
        y = start_state(p, g, b, basal)
        dy = rhs(p, y, b, basal, 0.0)
        return dy[10] + dy[11]  # plasma + tissue balance = EGP - Uii - E - Uid

    return scipy.optimize.brentq(balance, 1.0, 3000.0, xtol=1e-10)


def simulate_window(p: dict, b: float, window: dict, g_factor: float) -> np.ndarray:
    """CGM at ``window['ts']``: LSODA piece by piece between input events."""
    t0, ts = window["t0"], window["ts"]
    t_end = ts[-1]
    basal0 = window["basal_rate"](t0)
    y = start_state(p, fasting_glucose(p, b, basal0) * g_factor, b, basal0)
    inner = [e[0] for e in window["events"]] + list(window["basal_t"])
    breaks = np.unique([t0, t_end, *[t for t in inner if t0 < t < t_end]])
    out = np.full(ts.size, np.nan)
    last_meal = 0.0
    for a, c in itertools.pairwise(breaks):
        for et, meal, bolus in window["events"]:
            if et == a:
                y[0] += meal
                y[3] += bolus
                last_meal = meal if meal > 0 else last_meal
        basal = window["basal_rate"](a)
        sel = (ts >= a) & (ts < c)
        sol = scipy.integrate.solve_ivp(
            lambda _, yy, basal=basal, lm=last_meal: rhs(p, yy, b, basal, lm),
            (a, c),
            y,
            method="LSODA",
            t_eval=np.append(ts[sel], c),
            rtol=RTOL,
            atol=RTOL,
        )
        out[sel] = sol.y[13, :-1]
        y = sol.y[:, -1].copy()
    out[ts == t_end] = y[13]
    return out


def fit(problem: dict, x0: np.ndarray, *, max_nfev: int | None = None):
    """MAP fit by least_squares (trf, finite differences with the sparsity pattern).

    Args:
        problem: Output of ``benchmarks/fit.py:scipy_problem`` (windows, priors, layout).
        x0: Starting unknowns ``[theta, knots, (glucose, sensitivity) per window]``.
        max_nfev: Cap on function evaluations.
    """
    n_theta, n_knots = len(problem["names"]), problem["n_knots"]
    windows = problem["windows"]
    sigma, phi = problem["sigma"], problem["phi"]

    def residuals(x):
        theta, knots = x[:n_theta], x[n_theta : n_theta + n_knots]
        local = x[n_theta + n_knots :].reshape(len(windows), 2)
        out = []
        for win, pred in zip(windows, predictions(problem, x), strict=True):
            e = np.where(win["mask"], pred - win["obs"], 0.0)
            prev = np.concatenate([[False], win["mask"][:-1]])
            e_prev = np.concatenate([[0.0], e[:-1]])
            r = np.where(prev, (e - phi * e_prev) / np.sqrt(1 - phi**2), e) / sigma
            out.append(np.where(win["mask"], r, 0.0))
        out.append((theta - problem["theta_prior"]) / problem["theta_sd"])
        out.append([(knots[0] - problem["knot_level"]) / problem["knot_level_sd"]])
        out.append(np.diff(knots) / problem["rw_sd"])
        out.append(local[:, 0] / problem["glucose_sd"])
        out.append(local[:, 1] / problem["sensitivity_sd"])
        return np.concatenate([np.ravel(o) for o in out])

    return scipy.optimize.least_squares(
        residuals,
        x0,
        jac_sparsity=problem["sparsity"],
        method="trf",
        x_scale="jac",
        diff_step=DIFF_STEP,
        max_nfev=max_nfev,
        xtol=1e-8,
        ftol=1e-8,
    ), residuals
