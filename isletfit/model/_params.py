"""Physiological parameters of the fast (minutes) subsystem, with units, bounds and sources."""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float

__all__ = ["Params", "param_info", "stack_params"]

# Short names of the sources cited in field metadata (full references in the docstring).
_DM07 = "Dalla Man, Rizza & Cobelli 2007 (normal subject)"
_SIMG = "UVA/Padova T1D adults (simglucose 0.2.11 adult means)"
_T1DMS = "UVA/Padova T1DMS sensor, Td = 10 min"
_TOPP = "Topp et al. 2000"
_DEG = "De Gaetano et al. 2008"
_HOV = "Hovorka et al. 2004 (F01c)"
_CAL = "isletfit calibration (see Params docstring)"


def _param(
    default: float,
    unit: str,
    bounds: tuple[float, float],
    source: str,
    description: str,
) -> Any:
    return eqx.field(
        default=default,
        converter=jnp.asarray,
        metadata={
            "unit": unit,
            "bounds": bounds,
            "source": source,
            "description": description,
        },
    )


class Params(eqx.Module):
    r"""Parameters of one person's glucose–insulin system and of a healthy graft's secretion.

    Every field is a scalar array, so stacking `Params` along a leading axis
    (``jax.tree.map(lambda *x: jnp.stack(x), *params_list)``) gives a population for
    ``jax.vmap``. Units are canonical: time in minutes, glucose masses in mg/kg and
    concentrations in mg/dL, insulin masses in pmol/kg and concentrations in pmol/L
    (1 U = 6000 pmol), carbohydrate in mg/kg. The unit, plausible bounds and source of each
    field are in its metadata (`param_info`).

    The defaults describe a typical adult: glucose and insulin kinetics of the Dalla Man
    (2007) normal subject, subcutaneous insulin absorption and liver glucose
    effectiveness of the UVA/Padova adults, the De Gaetano (2008) secretion curve, and a
    graft whose secretion at ``B = 1`` is a healthy adult's. Insulin action is absolute
    (no basal reference), so ``vm0`` is the Dalla Man value minus ``vmx`` times the
    normal basal insulin (2.50 - 0.047 × 25 pmol/L = 1.325 mg/kg/min).

    Some values are isletfit calibrations, chosen within physiological ranges so that
    one parameter set behaves both as a healthy adult (``B = 1``) and as an adult with
    type 1 diabetes (``B = 0``):

    - ``s_max`` = 26 pmol/kg/min: fasting secretion ≈ 1.6 pmol/kg/min at ≈ 83 mg/dL (the
      Dalla Man normal basal secretion is 1.55), peak ≈ 10 pmol/kg/min after a meal;
    - ``kp4`` = 0.6 mg/kg/min per pmol/kg (EGP suppression by liver insulin) and
      ``kp1`` = 5.64 mg/kg/min: portal (graft) insulin suppresses glucose production
      about twice as strongly as the same peripheral insulin, fasting EGP is 1.9
      mg/kg/min in health, and untreated type 1 diabetes drives glucose above 300 mg/dL;
    - ``cr_max`` = 2 mg/kg/min, ``w_cr`` = 5 mg/dL: a full graft's counter-regulation
      about doubles fasting EGP once glucose falls well below ``g_cr``, a switch a few
      mg/dL wide (no counter-regulation without a graft: these recipients had
      impaired awareness and severe hypoglycaemia before transplant).

    With these defaults (`tests/test_model_behaviour.py`):

    - healthy adult (``B = 1``, no exogenous insulin): fasting glucose ≈ 83 mg/dL; after
      75 g of carbohydrate the peak is ≈ 148 mg/dL and glucose is below 140 mg/dL at
      2 h;
    - adult with type 1 diabetes (``B = 0``) on basal–bolus insulin of 0.5–0.6 U/kg/day
      (half basal, 500-rule carbohydrate ratio): glucose within 70–250 mg/dL over 3
      days of ordinary meals; without insulin glucose rises above 300 mg/dL within a
      day.

    Attributes:
        vg: Glucose distribution volume [dL/kg].
        k1: Rate plasma -> tissue glucose [1/min].
        k2: Rate tissue -> plasma glucose [1/min].
        kp1: Endogenous glucose production (EGP) extrapolated to zero glucose and insulin
            [mg/kg/min].
        kp2: Liver glucose effectiveness [1/min].
        kp3: EGP suppression by delayed plasma insulin [mg/kg/min per pmol/L].
        kp4: EGP suppression by liver (portal) insulin [mg/kg/min per pmol/kg].
        ki: Rate of the two-compartment delay of the insulin signal on EGP [1/min].
        fsnc: Insulin-independent utilisation at normal glucose [mg/kg/min].
        g_ii: Glucose scale below which insulin-independent utilisation falls [mg/dL].
        vm0: Insulin-dependent utilisation capacity at zero insulin [mg/kg/min].
        vmx: Insulin-dependent utilisation capacity per unit remote insulin
            [mg/kg/min per pmol/L].
        km0: Michaelis constant of insulin-dependent utilisation [mg/kg].
        p2u: Rate of remote insulin action [1/min].
        ke1: Renal glucose excretion rate [1/min].
        ke2: Renal threshold [mg/kg] (339 mg/kg ≈ 180 mg/dL).
        vi: Insulin distribution volume [L/kg].
        m1: Rate liver -> plasma insulin [1/min].
        m2: Rate plasma -> liver insulin [1/min].
        m4: Peripheral insulin degradation [1/min].
        hepatic_extraction: Fraction of insulin reaching the liver that it extracts (sets
            m3 = he·m1/(1 − he)) [-].
        kd: Subcutaneous insulin transfer, compartment 1 -> 2 [1/min].
        ka1: Absorption from subcutaneous compartment 1 [1/min].
        ka2: Absorption from subcutaneous compartment 2 [1/min].
        kmax: Grinding rate and maximal gastric emptying rate [1/min].
        kmin: Minimal gastric emptying rate [1/min].
        b_empt: Fraction of the meal left in the stomach at which emptying has slowed
            halfway to ``kmin`` [-].
        c_empt: Fraction of the meal left in the stomach at which emptying has
            recovered halfway to ``kmax`` [-].
        kabs: Intestinal absorption rate [1/min].
        f: Fraction of ingested carbohydrate that appears in plasma [-].
        tau_sensor: Blood -> interstitium (CGM) lag time constant [min].
        s_max: Maximal (glucose-saturated) secretion of a healthy graft, B = 1
            [pmol/kg/min].
        g_half: Glucose of half-maximal secretion [mg/dL].
        n_hill: Hill coefficient of glucose-stimulated secretion [-].
        alpha_y: Rate of the second-phase secretion delay [1/min].
        k_first: First-phase (glucose-derivative) secretion gain at B = 1
            [pmol/kg per mg/dL].
        cr_max: Maximal hypoglycaemia counter-regulation (extra EGP) at B = 1
            [mg/kg/min].
        g_cr: Glucose of half-maximal counter-regulation [mg/dL].
        w_cr: Width of the counter-regulation switch [mg/dL].

    References:
        - Dalla Man C, Rizza RA, Cobelli C. Meal simulation model of the glucose-insulin
          system. IEEE Trans Biomed Eng 54:1740-1749, 2007. doi:10.1109/TBME.2007.893506
        - Dalla Man C, Raimondo DM, Rizza RA, Cobelli C. GIM, simulation software of meal
          glucose-insulin model. J Diabetes Sci Technol 1:323-330, 2007.
        - Kovatchev BP et al. In silico preclinical trials (UVA/Padova simulator). J
          Diabetes Sci Technol 3:44-55, 2009; adult values as distributed in simglucose.
        - Dalla Man C, Camilleri M, Cobelli C. A system model of oral glucose absorption:
          validation on gold standard data. IEEE Trans Biomed Eng 53:2472-2478, 2006
          (nonlinear gastric emptying).
        - Topp B, Promislow K, de Vries G, Miura RM, Finegood DT. A model of beta-cell mass,
          insulin, and glucose kinetics. J Theor Biol 206:605-619, 2000.
          doi:10.1006/jtbi.2000.2150 (half-maximal secretion at sqrt(alpha) ≈ 141 mg/dL).
        - De Gaetano A, Hardy T, Beck B, et al. Mathematical models of diabetes
          progression. Am J Physiol Endocrinol Metab 295:E1462-E1479, 2008 (Hill
          coefficient 4).
        - Hovorka R et al. Nonlinear model predictive control of glucose concentration in
          subjects with type 1 diabetes. Physiol Meas 25:905-920, 2004 (insulin-independent
          uptake falls below 4.5 mmol/L).
        - Cryer PE. Hypoglycemia, functional brain failure, and brain death. J Clin Invest
          117:868-870, 2007 (glucagon response begins at about 65-70 mg/dL).
    """

    # --- glucose kinetics ---
    vg: Float[Array, ""] = _param(1.88, "dL/kg", (1.0, 2.5), _DM07, "glucose volume")
    k1: Float[Array, ""] = _param(0.065, "1/min", (0.02, 0.2), _DM07, "plasma->tissue")
    k2: Float[Array, ""] = _param(0.079, "1/min", (0.02, 0.3), _DM07, "tissue->plasma")
    kp1: Float[Array, ""] = _param(
        5.64, "mg/kg/min", (2.0, 9.0), _CAL, "EGP at zero glucose and insulin"
    )
    kp2: Float[Array, ""] = _param(
        0.0042, "1/min", (0.001, 0.01), _SIMG, "liver glucose effectiveness"
    )
    kp3: Float[Array, ""] = _param(
        0.009, "mg/kg/min per pmol/L", (0.002, 0.03), _DM07, "EGP suppression, plasma"
    )
    kp4: Float[Array, ""] = _param(
        0.6, "mg/kg/min per pmol/kg", (0.0, 2.0), _CAL, "EGP suppression, liver insulin"
    )
    ki: Float[Array, ""] = _param(0.0079, "1/min", (0.002, 0.03), _DM07, "EGP delay")
    fsnc: Float[Array, ""] = _param(
        1.0, "mg/kg/min", (0.5, 1.5), _DM07, "insulin-independent utilisation"
    )
    g_ii: Float[Array, ""] = _param(
        15.0, "mg/dL", (5.0, 40.0), _HOV, "fall-off of insulin-independent utilisation"
    )
    vm0: Float[Array, ""] = _param(
        1.325,
        "mg/kg/min",
        (0.2, 4.0),
        _DM07 + ", Vm0 - Vmx·Ib",
        "utilisation capacity at zero insulin",
    )
    vmx: Float[Array, ""] = _param(
        0.047, "mg/kg/min per pmol/L", (0.01, 0.15), _DM07, "insulin sensitivity"
    )
    km0: Float[Array, ""] = _param(225.59, "mg/kg", (100.0, 500.0), _DM07, "Km uptake")
    p2u: Float[Array, ""] = _param(
        0.0331, "1/min", (0.005, 0.1), _DM07, "remote insulin action rate"
    )
    ke1: Float[Array, ""] = _param(0.0005, "1/min", (0.0, 0.002), _DM07, "renal rate")
    ke2: Float[Array, ""] = _param(
        339.0, "mg/kg", (250.0, 450.0), _DM07, "renal threshold"
    )
    # --- insulin kinetics ---
    vi: Float[Array, ""] = _param(0.05, "L/kg", (0.03, 0.1), _DM07, "insulin volume")
    m1: Float[Array, ""] = _param(0.190, "1/min", (0.05, 0.5), _DM07, "liver->plasma")
    m2: Float[Array, ""] = _param(0.484, "1/min", (0.1, 1.0), _DM07, "plasma->liver")
    m4: Float[Array, ""] = _param(
        0.194, "1/min", (0.05, 0.5), _DM07, "peripheral clearance"
    )
    hepatic_extraction: Float[Array, ""] = _param(
        0.6, "-", (0.3, 0.8), _DM07, "hepatic insulin extraction"
    )
    kd: Float[Array, ""] = _param(0.0159, "1/min", (0.005, 0.05), _SIMG, "s.c. 1->2")
    ka1: Float[Array, ""] = _param(
        0.0034, "1/min", (0.0, 0.02), _SIMG, "s.c. 1 absorption"
    )
    ka2: Float[Array, ""] = _param(
        0.0159, "1/min", (0.005, 0.05), _SIMG, "s.c. 2 absorption"
    )
    # --- meal ---
    kmax: Float[Array, ""] = _param(
        0.0558, "1/min", (0.01, 0.2), _DM07, "grinding and maximal emptying rate"
    )
    kmin: Float[Array, ""] = _param(
        0.008, "1/min", (0.001, 0.05), _DM07, "minimal gastric emptying rate"
    )
    b_empt: Float[Array, ""] = _param(
        0.82, "-", (0.5, 0.95), _DM07, "stomach fraction where emptying starts to slow"
    )
    c_empt: Float[Array, ""] = _param(
        0.01, "-", (0.005, 0.5), _DM07, "stomach fraction where emptying recovers"
    )
    kabs: Float[Array, ""] = _param(
        0.057, "1/min", (0.005, 0.3), _DM07, "gut absorption"
    )
    f: Float[Array, ""] = _param(
        0.9, "-", (0.6, 1.0), _DM07, "carbohydrate bioavailability"
    )
    # --- sensor ---
    tau_sensor: Float[Array, ""] = _param(10.0, "min", (3.0, 20.0), _T1DMS, "CGM lag")
    # --- graft secretion (B = 1: a healthy adult's beta-cell function) ---
    s_max: Float[Array, ""] = _param(
        26.0, "pmol/kg/min", (5.0, 60.0), _CAL, "maximal secretion at B = 1"
    )
    g_half: Float[Array, ""] = _param(
        162.0, "mg/dL", (100.0, 250.0), _DEG, "half-maximal secretion glucose"
    )
    n_hill: Float[Array, ""] = _param(
        4.0, "-", (1.0, 8.0), _DEG, "secretion Hill exponent"
    )
    alpha_y: Float[Array, ""] = _param(
        0.05, "1/min", (0.005, 0.5), _DM07, "second-phase delay rate"
    )
    k_first: Float[Array, ""] = _param(
        2.30, "pmol/kg per mg/dL", (0.0, 10.0), _DM07, "first-phase gain"
    )
    # --- counter-regulation (graft alpha cells) ---
    cr_max: Float[Array, ""] = _param(
        2.0, "mg/kg/min", (0.0, 6.0), _CAL, "maximal counter-regulatory EGP at B = 1"
    )
    g_cr: Float[Array, ""] = _param(
        65.0, "mg/dL", (50.0, 80.0), "Cryer 2007", "counter-regulation threshold"
    )
    w_cr: Float[Array, ""] = _param(5.0, "mg/dL", (1.0, 15.0), _CAL, "switch width")

    def __check_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if jnp.ndim(value) != 0:
                raise ValueError(
                    f"Params.{field.name} must be a scalar, got shape {jnp.shape(value)}; "
                    "stack Params with jax.tree.map for a population"
                )
            if not isinstance(value, jax.core.Tracer):
                v = np.asarray(value)
                if not np.isfinite(v) or v < 0:
                    unit = field.metadata["unit"]
                    raise ValueError(
                        f"Params.{field.name} must be finite and >= 0 [{unit}], got {v}"
                    )

    @property
    def m3(self) -> Float[Array, ""]:
        """Hepatic insulin degradation rate m3 = he·m1/(1 − he) [1/min]."""
        he = self.hepatic_extraction
        return he * self.m1 / (1.0 - he)

    def replace(self, **changes) -> Params:
        """A copy with the named fields changed, e.g. ``p.replace(vmx=0.03)``."""
        return dataclasses.replace(self, **changes)


def param_info() -> list[dict[str, Any]]:
    """Name, default, unit, bounds, source and description of every `Params` field.

    Returns:
        One dict per field, in declaration order (used by reports and the README table).
    """
    rows = []
    for field in dataclasses.fields(Params):
        meta = field.metadata
        rows.append(
            {
                "name": field.name,
                "default": float(field.default),
                "unit": meta["unit"],
                "lower": meta["bounds"][0],
                "upper": meta["bounds"][1],
                "source": meta["source"],
                "description": meta["description"],
            }
        )
    return rows


def stack_params(params: list[Params]) -> Params:
    """Stack several patients' `Params` along a new leading axis (for ``jax.vmap``)."""
    return jax.tree.map(lambda *x: jnp.stack(x), *params)
