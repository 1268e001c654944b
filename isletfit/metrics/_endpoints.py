"""Islet-transplant endpoints: Igls 1.0/2.0, β-score, BETA-2, SUIT(O), independence.

Every function returns an [`EndpointResult`][isletfit.metrics.EndpointResult]. When an
input that the answer depends on is missing, the result is **"not assessable"** and
names the missing inputs; nothing is imputed. Classifications use three-valued logic: a
criterion is true, false, or unknown (an input is missing); a category is decided only
when every criterion of it (and a definite "no" for every better category) is known, so
a patient with C-peptide at baseline is an Igls failure even when the HbA1c is missing.

Units inside: glucose mg/dL (converted to mmol/L with 18.016 where a formula needs it),
C-peptide nmol/L (1 ng/mL = 0.331 nmol/L), HbA1c % (DCCT), insulin U/day (per kg where a
criterion says so), severe hypoglycaemia events/year.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._errors import InputError

__all__ = [
    "EndpointResult",
    "beta2_score",
    "beta_score",
    "endpoints_for_visit",
    "flatten_endpoints",
    "igls_1",
    "igls_2",
    "igls_2_beta_cell_function",
    "insulin_independence",
    "suit_index",
    "suito_index",
]

#: The category of a result whose inputs are incomplete.
NOT_ASSESSABLE = "not assessable"

MG_DL_PER_MMOL_L = 18.016
NMOL_L_PER_NG_ML = 0.331
#: C-peptide that counts as graft function in Igls 1.0: > 0.5 ng/mL [nmol/L].
_IGLS_C_PEPTIDE_NMOL_L = 0.17


@dataclasses.dataclass(frozen=True)
class EndpointResult:
    """The outcome of one endpoint, with the inputs it used and why.

    Attributes:
        name: The endpoint (``"igls_1"``, ``"beta_score"``, ...).
        value: The numeric score or index (β-score 0-8, BETA-2, SUITO, longest
            insulin-free run [d], ...), ``None`` for pure classifications or when not
            assessable.
        category: The class (``"optimal"``, ``"good"``, ``"marginal"``, ``"failure"``,
            ``"insulin independent"``, ...), ``"not assessable"``, or ``None`` for an
            index without published categories.
        assessable: ``False`` when inputs were missing or outside the formula's domain.
        inputs: The inputs used, keyed by name with unit (``None`` = missing);
            read-only.
        missing: Names of the missing inputs that made the result not assessable.
        reason: One or two sentences: which criteria decided, or what is missing.
        details: Extra facts (component points, which glycaemia measure was used);
            read-only.
        NOT_ASSESSABLE: The class constant ``"not assessable"``.
    """

    NOT_ASSESSABLE: ClassVar[str] = NOT_ASSESSABLE

    name: str
    value: float | None
    category: str | None
    assessable: bool
    inputs: Mapping[str, Any]
    missing: tuple[str, ...] = ()
    reason: str = ""
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", types.MappingProxyType(dict(self.inputs)))
        object.__setattr__(self, "details", types.MappingProxyType(dict(self.details)))
        object.__setattr__(self, "missing", tuple(self.missing))


# --- small helpers --------------------------------------------------------------------


def _num(x) -> float | None:
    """A finite float, or None for None/nan/pd.NA."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _not_assessable(name, inputs, missing, reason, **details) -> EndpointResult:
    return EndpointResult(
        name=name,
        value=None,
        category=NOT_ASSESSABLE,
        assessable=False,
        inputs=inputs,
        missing=tuple(missing),
        reason=reason,
        details=details,
    )


def _missing(inputs: Mapping[str, Any], names) -> list[str]:
    return [n for n in names if inputs.get(n) is None]


class _Crit(NamedTuple):
    ok: bool | None  # None = unknown (an input is missing)
    needs: tuple[str, ...]
    text: str


def _crit(ok, needs, text) -> _Crit:
    return _Crit(ok, tuple(needs), text)


def _cmp(x, op: str, y) -> bool | None:
    if x is None or y is None:
        return None
    return {
        "<": x < y,
        "<=": x <= y,
        ">": x > y,
        ">=": x >= y,
        "==": x == y,
    }[op]


def _and3(*vals) -> bool | None:
    if any(v is False for v in vals):
        return False
    if any(v is None for v in vals):
        return None
    return True


def _any3(vals) -> bool | None:
    vals = list(vals)
    if any(v is True for v in vals):
        return True
    if not vals or any(v is None for v in vals):
        return None
    return False


def _reduced(x, baseline) -> bool | None:
    """``x < baseline``, or both zero (nothing left to reduce)."""
    if x is None or baseline is None:
        return None
    return x < baseline or (x == 0 and baseline == 0)


def _classify(name, levels, inputs, fallback="failure", **details) -> EndpointResult:
    """Best category whose criteria all hold; unknown -> not assessable."""
    failed = []
    for category, crits in levels:
        bad = [c for c in crits if c.ok is False]
        if bad:
            failed.append(f"not {category}: {bad[0].text} does not hold")
            continue
        unknown = [c for c in crits if c.ok is None]
        if unknown:
            needs = [n for c in unknown for n in c.needs]
            miss = list(dict.fromkeys(_missing(inputs, needs))) or list(
                dict.fromkeys(needs)
            )
            return _not_assessable(
                name,
                inputs,
                miss,
                f"cannot tell whether {category}: "
                + "; ".join(c.text for c in unknown)
                + f" unknown (missing {', '.join(miss)})",
                **details,
            )
        return EndpointResult(
            name=name,
            value=None,
            category=category,
            assessable=True,
            inputs=inputs,
            reason=f"{category}: " + "; ".join(c.text for c in crits),
            details=details,
        )
    return EndpointResult(
        name=name,
        value=None,
        category=fallback,
        assessable=True,
        inputs=inputs,
        reason="; ".join(failed),
        details=details,
    )


def _glycaemia(hba1c, gmi) -> tuple[float | None, str | None]:
    if hba1c is not None:
        return hba1c, "HbA1c"
    if gmi is not None:
        return gmi, "GMI"
    return None, None


def _per_kg(dose_u_per_day, weight_kg) -> float | None:
    if dose_u_per_day is not None and dose_u_per_day == 0:
        return 0.0
    if dose_u_per_day is None or weight_kg is None or weight_kg <= 0:
        return None
    return dose_u_per_day / weight_kg


# --- Igls 1.0 and 2.0 -----------------------------------------------------------------


def igls_1(
    *,
    hba1c_percent: float | None = None,
    gmi_percent: float | None = None,
    severe_hypo_per_year: float | None = None,
    insulin_u_per_day: float | None = None,
    weight_kg: float | None = None,
    c_peptide_fasting_nmol_l: float | None = None,
    c_peptide_stimulated_nmol_l: float | None = None,
    baseline_insulin_u_per_day: float | None = None,
    baseline_severe_hypo_per_year: float | None = None,
    baseline_c_peptide_fasting_nmol_l: float | None = None,
    baseline_c_peptide_stimulated_nmol_l: float | None = None,
    tbr_below_54_percent: float | None = None,
) -> EndpointResult:
    r"""Igls 1.0 β-cell replacement status: optimal, good, marginal or failure.

    Criteria (the first category whose criteria all hold; else failure):

    | status | glycaemia | severe hypos | insulin | C-peptide |
    |---|---|---|---|---|
    | optimal | HbA1c ≤ 6.5 % | 0 /yr | 0 U/day | > baseline |
    | good | HbA1c < 7.0 % | 0 /yr | < 50 % of baseline, < 0.5 U/kg/day | > baseline |
    | marginal | (any) | < baseline | (any) | > baseline |
    | failure | otherwise | | | |

    "C-peptide above baseline" = for at least one measured kind (fasting or stimulated),
    C-peptide > its pre-transplant baseline **and** > 0.17 nmol/L (0.5 ng/mL). A kind
    whose current value is ≤ 0.17 nmol/L is "not above" even without a baseline.
    "< baseline" for severe hypoglycaemia also holds when both are 0 (nothing to reduce;
    an interpretation). HbA1c is used when given, else GMI (the Igls report allows mean
    glucose/GMI where HbA1c is unreliable, e.g. anaemia);
    ``details["glycaemia_source"]`` says which. Time < 54 mg/dL is recorded but not a
    criterion of Igls 1.0 (the report recommends it to assess recurrent hypoglycaemia).

    Args:
        hba1c_percent: HbA1c [%].
        gmi_percent: GMI from CGM [%], used when HbA1c is missing.
        severe_hypo_per_year: Severe hypoglycaemic events [events/year].
        insulin_u_per_day: Exogenous insulin [U/day].
        weight_kg: Body weight [kg] (for U/kg/day).
        c_peptide_fasting_nmol_l: Fasting C-peptide [nmol/L].
        c_peptide_stimulated_nmol_l: Stimulated (MMTT) C-peptide [nmol/L].
        baseline_insulin_u_per_day: Pre-transplant insulin [U/day].
        baseline_severe_hypo_per_year: Pre-transplant severe hypos [events/year].
        baseline_c_peptide_fasting_nmol_l: Pre-transplant fasting C-peptide [nmol/L].
        baseline_c_peptide_stimulated_nmol_l: Pre-transplant stimulated C-peptide
            [nmol/L].
        tbr_below_54_percent: CGM time < 54 mg/dL [%] (reported only).

    Returns:
        An [`EndpointResult`][isletfit.metrics.EndpointResult] with ``category``.

    References:
        Rickels MR, et al. Defining outcomes for β-cell replacement therapy in the
        treatment of diabetes: a consensus report on the Igls criteria from the
        IPITA/EPITA opinion leaders workshop. Transplantation 2018;102:1479-1486 (and
        Transpl Int 2018;31:343-352). doi:10.1097/TP.0000000000002158
    """
    a = {k: _num(v) for k, v in locals().items()}
    glyc, source = _glycaemia(a["hba1c_percent"], a["gmi_percent"])
    ins_kg = _per_kg(a["insulin_u_per_day"], a["weight_kg"])
    glyc_needs = ("hba1c_percent", "gmi_percent")
    cpep = _c_peptide_above_baseline(a)
    she = a["severe_hypo_per_year"]
    ins = a["insulin_u_per_day"]
    base_ins = a["baseline_insulin_u_per_day"]
    half_baseline = None if base_ins is None else 0.5 * base_ins
    levels = [
        (
            "optimal",
            [
                _crit(_cmp(glyc, "<=", 6.5), glyc_needs, "HbA1c ≤ 6.5 %"),
                _crit(
                    _cmp(she, "==", 0.0), ["severe_hypo_per_year"], "no severe hypos"
                ),
                _crit(_cmp(ins, "==", 0.0), ["insulin_u_per_day"], "no insulin"),
                cpep,
            ],
        ),
        (
            "good",
            [
                _crit(_cmp(glyc, "<", 7.0), glyc_needs, "HbA1c < 7.0 %"),
                _crit(
                    _cmp(she, "==", 0.0), ["severe_hypo_per_year"], "no severe hypos"
                ),
                _crit(
                    _cmp(ins, "<", half_baseline),
                    ["insulin_u_per_day", "baseline_insulin_u_per_day"],
                    "insulin < 50 % of baseline",
                ),
                _crit(
                    _cmp(ins_kg, "<", 0.5),
                    ["insulin_u_per_day", "weight_kg"],
                    "insulin < 0.5 U/kg/day",
                ),
                cpep,
            ],
        ),
        (
            "marginal",
            [
                _crit(
                    _reduced(she, a["baseline_severe_hypo_per_year"]),
                    ["severe_hypo_per_year", "baseline_severe_hypo_per_year"],
                    "fewer severe hypos than at baseline",
                ),
                cpep,
            ],
        ),
    ]
    return _classify("igls_1", levels, a, glycaemia_source=source)


def _c_peptide_above_baseline(a) -> _Crit:
    kinds = []
    needs = []
    for kind in ("fasting", "stimulated"):
        cur = a[f"c_peptide_{kind}_nmol_l"]
        base = a[f"baseline_c_peptide_{kind}_nmol_l"]
        if cur is None:
            continue
        kinds.append(_and3(_cmp(cur, ">", base), cur > _IGLS_C_PEPTIDE_NMOL_L))
        needs.append(f"baseline_c_peptide_{kind}_nmol_l")
    if not kinds:
        needs = ["c_peptide_fasting_nmol_l", "c_peptide_stimulated_nmol_l"]
    return _crit(_any3(kinds), needs, "C-peptide above baseline and > 0.17 nmol/L")


def igls_2(
    *,
    hba1c_percent: float | None = None,
    gmi_percent: float | None = None,
    tir_70_180_percent: float | None = None,
    severe_hypo_per_year: float | None = None,
    tbr_below_54_percent: float | None = None,
    baseline_hba1c_percent: float | None = None,
    baseline_gmi_percent: float | None = None,
    baseline_tir_70_180_percent: float | None = None,
    baseline_severe_hypo_per_year: float | None = None,
    baseline_tbr_below_54_percent: float | None = None,
) -> EndpointResult:
    r"""Proposed Igls 2.0 glycaemic outcome: optimal, good, marginal or failure.

    | outcome | HbA1c | TIR 70-180 | severe hypos | time < 54 |
    |---|---|---|---|---|
    | optimal | ≤ 6.5 % | ≥ 80 % | 0 /yr | 0 % |
    | good | < 7.0 % | ≥ 70 % | 0 /yr | < 1 % |
    | marginal | ≤ baseline | > baseline | < baseline | < baseline |
    | failure | otherwise | | | |

    HbA1c is used when given, else GMI (likewise at baseline); ``details
    ["glycaemia_source"]`` says which. For marginal, "< baseline" also holds when both
    values are 0 (an interpretation: nothing left to reduce). The β-cell graft function
    part of Igls 2.0 is [`igls_2_beta_cell_function`][].

    Args:
        hba1c_percent: HbA1c [%].
        gmi_percent: GMI [%], used when HbA1c is missing.
        tir_70_180_percent: CGM time 70-180 mg/dL [%].
        severe_hypo_per_year: Severe hypoglycaemic events [events/year].
        tbr_below_54_percent: CGM time < 54 mg/dL [%].
        baseline_hba1c_percent: Pre-transplant HbA1c [%].
        baseline_gmi_percent: Pre-transplant GMI [%] (used when baseline HbA1c is
            missing).
        baseline_tir_70_180_percent: Pre-transplant TIR [%].
        baseline_severe_hypo_per_year: Pre-transplant severe hypos [events/year].
        baseline_tbr_below_54_percent: Pre-transplant time < 54 mg/dL [%].

    Returns:
        An [`EndpointResult`][isletfit.metrics.EndpointResult] with ``category``.

    References:
        Landstra CP, et al. Proposal for mixed meal tolerance test and CGM based
        outcome measures ("Igls 2.0") ... J Clin Endocrinol Metab 2021;106:3049-3059.
        doi:10.1210/clinem/dgab386 (categories as summarised in the reference notes;
        check against the paper).
    """
    a = {k: _num(v) for k, v in locals().items()}
    glyc, source = _glycaemia(a["hba1c_percent"], a["gmi_percent"])
    base_glyc, base_source = _glycaemia(
        a["baseline_hba1c_percent"], a["baseline_gmi_percent"]
    )
    g_need = ("hba1c_percent", "gmi_percent")
    bg_need = ("baseline_hba1c_percent", "baseline_gmi_percent")
    tir, she, tbr = (
        a["tir_70_180_percent"],
        a["severe_hypo_per_year"],
        a["tbr_below_54_percent"],
    )
    levels = [
        (
            "optimal",
            [
                _crit(_cmp(glyc, "<=", 6.5), g_need, "HbA1c ≤ 6.5 %"),
                _crit(_cmp(tir, ">=", 80.0), ["tir_70_180_percent"], "TIR ≥ 80 %"),
                _crit(
                    _cmp(she, "==", 0.0), ["severe_hypo_per_year"], "no severe hypos"
                ),
                _crit(
                    _cmp(tbr, "==", 0.0), ["tbr_below_54_percent"], "time < 54 = 0 %"
                ),
            ],
        ),
        (
            "good",
            [
                _crit(_cmp(glyc, "<", 7.0), g_need, "HbA1c < 7.0 %"),
                _crit(_cmp(tir, ">=", 70.0), ["tir_70_180_percent"], "TIR ≥ 70 %"),
                _crit(
                    _cmp(she, "==", 0.0), ["severe_hypo_per_year"], "no severe hypos"
                ),
                _crit(_cmp(tbr, "<", 1.0), ["tbr_below_54_percent"], "time < 54 < 1 %"),
            ],
        ),
        (
            "marginal",
            [
                _crit(
                    _cmp(glyc, "<=", base_glyc), g_need + bg_need, "HbA1c ≤ baseline"
                ),
                _crit(
                    _cmp(tir, ">", a["baseline_tir_70_180_percent"]),
                    ["tir_70_180_percent", "baseline_tir_70_180_percent"],
                    "TIR > baseline",
                ),
                _crit(
                    _reduced(she, a["baseline_severe_hypo_per_year"]),
                    ["severe_hypo_per_year", "baseline_severe_hypo_per_year"],
                    "fewer severe hypos than at baseline",
                ),
                _crit(
                    _reduced(tbr, a["baseline_tbr_below_54_percent"]),
                    ["tbr_below_54_percent", "baseline_tbr_below_54_percent"],
                    "less time < 54 than at baseline",
                ),
            ],
        ),
    ]
    return _classify(
        "igls_2",
        levels,
        a,
        glycaemia_source=source,
        baseline_glycaemia_source=base_source,
    )


def igls_2_beta_cell_function(
    *,
    insulin_u_per_day: float | None = None,
    c_peptide_fasting_nmol_l: float | None = None,
    c_peptide_stimulated_nmol_l: float | None = None,
    other_therapy: bool = False,
) -> EndpointResult:
    r"""Proposed Igls 2.0 β-cell graft function: optimal, good, marginal or failure.

    * optimal: no insulin and no other glucose-lowering therapy (any C-peptide);
    * good: stimulated C-peptide > 0.17 nmol/L (0.5 ng/mL) or fasting ≥ 0.07 nmol/L
      (0.2 ng/mL);
    * marginal: stimulated 0.10-0.17 nmol/L (0.3-0.5 ng/mL) or fasting 0.04-< 0.07
      nmol/L (0.1-< 0.2 ng/mL);
    * failure: stimulated < 0.10 nmol/L or fasting < 0.04 nmol/L.

    The C-peptide rules use whichever kinds were measured (either is enough); when both
    were, the better category wins. Needs the insulin dose (to rule optimal in or out)
    and, unless optimal, at least one C-peptide value.

    Args:
        insulin_u_per_day: Exogenous insulin [U/day].
        c_peptide_fasting_nmol_l: Fasting C-peptide [nmol/L].
        c_peptide_stimulated_nmol_l: Stimulated (MMTT) C-peptide [nmol/L].
        other_therapy: Whether other glucose-lowering drugs are taken.

    Returns:
        An [`EndpointResult`][isletfit.metrics.EndpointResult] with ``category``.

    References:
        Landstra CP, et al. J Clin Endocrinol Metab 2021;106:3049.
        doi:10.1210/clinem/dgab386
    """
    inputs = {
        "insulin_u_per_day": _num(insulin_u_per_day),
        "c_peptide_fasting_nmol_l": _num(c_peptide_fasting_nmol_l),
        "c_peptide_stimulated_nmol_l": _num(c_peptide_stimulated_nmol_l),
        "other_therapy": bool(other_therapy),
    }
    fast = inputs["c_peptide_fasting_nmol_l"]
    stim = inputs["c_peptide_stimulated_nmol_l"]
    cp_need = ["c_peptide_fasting_nmol_l", "c_peptide_stimulated_nmol_l"]

    def either(stim_ok, fast_ok):
        vals = []
        if stim is not None:
            vals.append(stim_ok(stim))
        if fast is not None:
            vals.append(fast_ok(fast))
        return _any3(vals)

    levels = [
        (
            "optimal",
            [
                _crit(
                    _cmp(inputs["insulin_u_per_day"], "==", 0.0),
                    ["insulin_u_per_day"],
                    "no insulin",
                ),
                _crit(not other_therapy, [], "no other therapy"),
            ],
        ),
        (
            "good",
            [
                _crit(
                    either(lambda s: s > 0.17, lambda f: f >= 0.07),
                    cp_need,
                    "stimulated C-peptide > 0.17 or fasting ≥ 0.07 nmol/L",
                )
            ],
        ),
        (
            "marginal",
            [
                _crit(
                    either(lambda s: s >= 0.10, lambda f: f >= 0.04),
                    cp_need,
                    "stimulated C-peptide ≥ 0.10 or fasting ≥ 0.04 nmol/L",
                )
            ],
        ),
    ]
    return _classify("igls_2_beta_cell_function", levels, inputs)


# --- beta-score, BETA-2, SUIT, SUITO --------------------------------------------------


def beta_score(
    *,
    fasting_glucose_mg_dl: float | None = None,
    hba1c_percent: float | None = None,
    insulin_u_per_day: float | None = None,
    weight_kg: float | None = None,
    c_peptide_stimulated_nmol_l: float | None = None,
    c_peptide_fasting_nmol_l: float | None = None,
    oral_agents: bool = False,
) -> EndpointResult:
    r"""β-score (Ryan 2005), 0-8: four components of 0, 1 or 2 points.

    | component | 2 | 1 | 0 |
    |---|---|---|---|
    | fasting glucose [mmol/L] | ≤ 5.5 | 5.5 < FG < 7.0 | ≥ 7.0 |
    | HbA1c [%] | ≤ 6.1 | 6.1 < A1c < 7.0 | ≥ 7.0 |
    | insulin [U/kg/day] | none | > 0 and < 0.25, or oral agents | ≥ 0.25 |
    | stimulated C-peptide [nmol/L] | ≥ 0.3 | 0.1 ≤ CP < 0.3 | < 0.1 |

    (The paper's bands 5.6-6.9 and 6.2-6.9 are read as the open intervals between the
    neighbours, so every value has a score.) Fasting glucose is given in mg/dL and
    divided by 18.016. Rules: if fasting C-peptide ≥ 0.3 nmol/L the C-peptide component
    is 2 (stimulated assumed ≥ 0.3, so no stimulated test is needed); if a measured
    stimulated C-peptide is < 0.1 nmol/L the whole score is 0, whatever the rest.

    Args:
        fasting_glucose_mg_dl: Fasting plasma glucose [mg/dL].
        hba1c_percent: HbA1c [%].
        insulin_u_per_day: Exogenous insulin [U/day] (0 = none).
        weight_kg: Body weight [kg] (not needed when insulin is 0).
        c_peptide_stimulated_nmol_l: Stimulated (MMTT) C-peptide [nmol/L].
        c_peptide_fasting_nmol_l: Fasting C-peptide [nmol/L].
        oral_agents: Whether oral hypoglycaemic agents are taken.

    Returns:
        An [`EndpointResult`][isletfit.metrics.EndpointResult] with ``value`` = the
        score; ``details`` hold the component points.

    References:
        Ryan EA, et al. β-score: an assessment of β-cell function after islet
        transplantation. Diabetes Care 2005;28:343-347. doi:10.2337/diacare.28.2.343
    """
    inputs = {
        "fasting_glucose_mg_dl": _num(fasting_glucose_mg_dl),
        "hba1c_percent": _num(hba1c_percent),
        "insulin_u_per_day": _num(insulin_u_per_day),
        "weight_kg": _num(weight_kg),
        "c_peptide_stimulated_nmol_l": _num(c_peptide_stimulated_nmol_l),
        "c_peptide_fasting_nmol_l": _num(c_peptide_fasting_nmol_l),
        "oral_agents": bool(oral_agents),
    }
    stim = inputs["c_peptide_stimulated_nmol_l"]
    fast = inputs["c_peptide_fasting_nmol_l"]
    if stim is not None and stim < 0.1:
        return EndpointResult(
            name="beta_score",
            value=0.0,
            category=None,
            assessable=True,
            inputs=inputs,
            reason="stimulated C-peptide < 0.1 nmol/L: β-score is 0 by definition",
        )
    points: dict[str, int | None] = {}
    fg = inputs["fasting_glucose_mg_dl"]
    if fg is not None:
        fg_mmol = fg / MG_DL_PER_MMOL_L
        points["fasting_glucose"] = 2 if fg_mmol <= 5.5 else 1 if fg_mmol < 7.0 else 0
    a1c = inputs["hba1c_percent"]
    if a1c is not None:
        points["hba1c"] = 2 if a1c <= 6.1 else 1 if a1c < 7.0 else 0
    ins_kg = _per_kg(inputs["insulin_u_per_day"], inputs["weight_kg"])
    if ins_kg is not None:
        if ins_kg >= 0.25:
            points["insulin"] = 0
        elif ins_kg > 0 or oral_agents:
            points["insulin"] = 1
        else:
            points["insulin"] = 2
    if fast is not None and fast >= 0.3:
        points["c_peptide"] = 2
    elif stim is not None:
        points["c_peptide"] = 2 if stim >= 0.3 else 1
    missing = []
    if "fasting_glucose" not in points:
        missing.append("fasting_glucose_mg_dl")
    if "hba1c" not in points:
        missing.append("hba1c_percent")
    if "insulin" not in points:
        missing += _missing(inputs, ["insulin_u_per_day", "weight_kg"])
    if "c_peptide" not in points:
        missing.append("c_peptide_stimulated_nmol_l (or fasting ≥ 0.3)")
    if missing:
        return _not_assessable(
            "beta_score",
            inputs,
            missing,
            f"missing {', '.join(missing)}",
            points=points,
        )
    score = float(sum(points.values()))  # type: ignore[arg-type]
    return EndpointResult(
        name="beta_score",
        value=score,
        category=None,
        assessable=True,
        inputs=inputs,
        reason=", ".join(f"{k} {v}" for k, v in points.items()) + f": {score:g}/8",
        details={"points": points},
    )


def beta2_score(
    *,
    fasting_c_peptide_nmol_l: float | None = None,
    fasting_glucose_mg_dl: float | None = None,
    hba1c_percent: float | None = None,
    insulin_u_per_day: float | None = None,
    weight_kg: float | None = None,
) -> EndpointResult:
    r"""BETA-2 score from a single fasting sample.

    $$\mathrm{BETA\text{-}2} = \frac{\sqrt{\mathrm{CP}\,(1 - \mathrm{ins})}}
    {\mathrm{FG} \cdot \mathrm{HbA1c}} \times 1000$$

    with fasting C-peptide CP [nmol/L], insulin dose ins [U/kg/day], fasting glucose FG
    [mmol/L] (mg/dL / 18.016) and HbA1c [%]. Not assessable when ins ≥ 1 U/kg/day (the
    square root's argument is not positive) or FG·HbA1c ≤ 0. The formula and the
    commonly quoted cut-offs (≈ < 20: glucose intolerance; ≥ 15: compatible with
    insulin independence) are **recalled, not verified against the paper**; the cut-offs
    are given in ``reason`` only.

    Args:
        fasting_c_peptide_nmol_l: Fasting C-peptide [nmol/L].
        fasting_glucose_mg_dl: Fasting glucose [mg/dL].
        hba1c_percent: HbA1c [%].
        insulin_u_per_day: Exogenous insulin [U/day].
        weight_kg: Body weight [kg] (not needed when insulin is 0).

    Returns:
        An [`EndpointResult`][isletfit.metrics.EndpointResult] with ``value`` = BETA-2.

    References:
        Forbes S, et al. Validation of the BETA-2 score: an improved tool to estimate
        beta cell function after clinical islet transplantation using a single fasting
        blood sample. Am J Transplant 2016;16:2704-2713. doi:10.1111/ajt.13807
    """
    inputs = {
        "fasting_c_peptide_nmol_l": _num(fasting_c_peptide_nmol_l),
        "fasting_glucose_mg_dl": _num(fasting_glucose_mg_dl),
        "hba1c_percent": _num(hba1c_percent),
        "insulin_u_per_day": _num(insulin_u_per_day),
        "weight_kg": _num(weight_kg),
    }
    ins_kg = _per_kg(inputs["insulin_u_per_day"], inputs["weight_kg"])
    missing = _missing(
        inputs, ["fasting_c_peptide_nmol_l", "fasting_glucose_mg_dl", "hba1c_percent"]
    )
    if ins_kg is None:
        missing += _missing(inputs, ["insulin_u_per_day", "weight_kg"])
    if missing:
        return _not_assessable(
            "beta_2", inputs, missing, f"missing {', '.join(missing)}"
        )
    cp = inputs["fasting_c_peptide_nmol_l"]
    fg = inputs["fasting_glucose_mg_dl"] / MG_DL_PER_MMOL_L  # type: ignore[operator]
    a1c = inputs["hba1c_percent"]
    if ins_kg >= 1.0 or fg * a1c <= 0 or cp < 0:  # type: ignore[operator]
        return _not_assessable(
            "beta_2",
            inputs,
            [],
            f"outside the formula's domain (insulin {ins_kg:.2f} U/kg/day must be < 1, "
            "glucose, HbA1c and C-peptide positive)",
        )
    value = math.sqrt(cp * (1.0 - ins_kg)) / (fg * a1c) * 1000.0  # type: ignore[operator]
    reading = (
        "≥ 15: compatible with insulin independence"
        if value >= 15
        else "< 15: insulin independence unlikely"
    )
    return EndpointResult(
        name="beta_2",
        value=value,
        category=None,
        assessable=True,
        inputs=inputs,
        reason=f"BETA-2 {value:.1f} ({reading}; recalled cut-off, unverified)",
        details={"insulin_u_per_kg_day": ins_kg, "fasting_glucose_mmol_l": fg},
    )


def suit_index(
    *,
    fasting_c_peptide_nmol_l: float | None = None,
    fasting_glucose_mg_dl: float | None = None,
) -> EndpointResult:
    r"""SUIT index: $250 \cdot \mathrm{CP} / (\mathrm{FG} - 3.43)$.

    Fasting C-peptide CP [nmol/L], fasting glucose FG [mmol/L] (mg/dL / 18.016); 100 ≈
    normal subjects under 40. Not assessable when FG ≤ 3.43 mmol/L.

    Args:
        fasting_c_peptide_nmol_l: Fasting C-peptide [nmol/L].
        fasting_glucose_mg_dl: Fasting glucose [mg/dL].

    Returns:
        An [`EndpointResult`][isletfit.metrics.EndpointResult] with ``value`` = SUIT.

    References:
        Yamada Y, et al. Secretory unit of islet in transplantation (SUIT) and
        engrafted islet rate (EIR) indexes are useful for evaluating single islet
        transplantation. Transplant Proc / Diabetes Res Clin Pract 2006 (as cited in the
        reference notes).
    """
    inputs = {
        "fasting_c_peptide_nmol_l": _num(fasting_c_peptide_nmol_l),
        "fasting_glucose_mg_dl": _num(fasting_glucose_mg_dl),
    }
    missing = _missing(inputs, list(inputs))
    if missing:
        return _not_assessable("suit", inputs, missing, f"missing {', '.join(missing)}")
    fg = inputs["fasting_glucose_mg_dl"] / MG_DL_PER_MMOL_L  # type: ignore[operator]
    if fg <= 3.43:
        return _not_assessable(
            "suit", inputs, [], f"fasting glucose {fg:.2f} mmol/L must exceed 3.43"
        )
    value = 250.0 * inputs["fasting_c_peptide_nmol_l"] / (fg - 3.43)  # type: ignore[operator]
    return EndpointResult(
        name="suit",
        value=value,
        category=None,
        assessable=True,
        inputs=inputs,
        reason=f"SUIT {value:.1f} (100 ≈ normal; > 28 went with insulin independence)",
        details={"fasting_glucose_mmol_l": fg},
    )


def suito_index(
    *,
    fasting_c_peptide_nmol_l: float | None = None,
    fasting_glucose_mg_dl: float | None = None,
) -> EndpointResult:
    r"""SUITO index: $1500 \cdot \mathrm{CP_{ng/mL}} / (\mathrm{FG_{mg/dL}} - 63)$.

    C-peptide is given in nmol/L and divided by 0.331 to get ng/mL. A mean SUITO > 26
    over days 3-30 predicted insulin independence (≈ 26 % of normal β-cell function);
    < 10 went with rising insulin needs. Not assessable when FG ≤ 63 mg/dL.

    Args:
        fasting_c_peptide_nmol_l: Fasting C-peptide [nmol/L].
        fasting_glucose_mg_dl: Fasting glucose [mg/dL].

    Returns:
        An [`EndpointResult`][isletfit.metrics.EndpointResult] with ``value`` = SUITO.

    References:
        Matsumoto S, et al. Cell Transplant 2009; Takita M, Matsumoto S, et al.
        Cell Transplant 2012 (SUITO, the Matsumoto group's variant of SUIT).
    """
    inputs = {
        "fasting_c_peptide_nmol_l": _num(fasting_c_peptide_nmol_l),
        "fasting_glucose_mg_dl": _num(fasting_glucose_mg_dl),
    }
    missing = _missing(inputs, list(inputs))
    if missing:
        return _not_assessable(
            "suito", inputs, missing, f"missing {', '.join(missing)}"
        )
    fg = inputs["fasting_glucose_mg_dl"]
    if fg <= 63.0:  # type: ignore[operator]
        return _not_assessable(
            "suito", inputs, [], f"fasting glucose {fg:g} mg/dL must exceed 63"
        )
    cp_ng = inputs["fasting_c_peptide_nmol_l"] / NMOL_L_PER_NG_ML  # type: ignore[operator]
    value = 1500.0 * cp_ng / (fg - 63.0)  # type: ignore[operator]
    reading = (
        "> 26: insulin independence expected"
        if value > 26
        else "< 10: insulin needs likely to rise"
        if value < 10
        else "10-26: partial function"
    )
    return EndpointResult(
        name="suito",
        value=value,
        category=None,
        assessable=True,
        inputs=inputs,
        reason=f"SUITO {value:.1f} ({reading})",
        details={"fasting_c_peptide_ng_ml": cp_ng},
    )


# --- insulin independence -------------------------------------------------------------


def _runs(values: np.ndarray) -> np.ndarray:
    """Length of the run of True ending at each position."""
    v = np.asarray(values, dtype=bool)
    idx = np.arange(v.size)
    last_false = np.maximum.accumulate(np.where(~v, idx, -1))
    return np.where(v, idx - last_false, 0)


def insulin_independence(
    daily_insulin_u_per_day,
    *,
    min_days: int = 14,
    at_end: bool = False,
) -> EndpointResult:
    """Insulin independence: no exogenous insulin on ≥ ``min_days`` consecutive days.

    The input is one value per day: a `pandas.Series` indexed by date (missing dates are
    filled in as unknown) or a 1-D array of consecutive days; ``nan`` = unknown. A day
    is insulin-free when its dose is exactly 0.

    * ``at_end=False`` (ever, within the series): "insulin independent" if there is a
      run of ≥ ``min_days`` recorded insulin-free days; "insulin dependent" if no such
      run is possible even if every unknown day were insulin-free; otherwise not
      assessable.
    * ``at_end=True`` (currently, e.g. at a visit): the last ``min_days`` days decide:
      independent if all are recorded insulin-free, dependent if any has insulin,
      otherwise not assessable.

    A series shorter than ``min_days`` days is not assessable.

    Args:
        daily_insulin_u_per_day: Daily exogenous insulin [U/day].
        min_days: Required run length [d] (14 in the transplant literature).
        at_end: Judge the last ``min_days`` days instead of the whole series.

    Returns:
        An [`EndpointResult`][isletfit.metrics.EndpointResult]: ``value`` = the longest
        run of recorded insulin-free days [d]; ``details["first_day"]`` = the first day
        (date or index) on which a qualifying run was complete.

    References:
        Shapiro AMJ, et al. International trial of the Edmonton protocol for islet
        transplantation. N Engl J Med 2006;355:1318-1330 (insulin independence as no
        exogenous insulin for ≥ 14 consecutive days); Rickels et al. 2018 (Igls).
    """
    import pandas as pd

    if isinstance(daily_insulin_u_per_day, pd.Series):
        s = daily_insulin_u_per_day.astype(float)
        s.index = pd.DatetimeIndex(s.index).normalize()
        s = s.groupby(level=0).max()
        if len(s):
            s = s.reindex(pd.date_range(s.index.min(), s.index.max(), freq="D"))
        labels = [d.date().isoformat() for d in s.index]
        x = s.to_numpy(dtype=float)
    else:
        x = np.asarray(daily_insulin_u_per_day, dtype=float)
        if x.ndim != 1:
            raise InputError(
                f"expected one value per day, got shape {x.shape}",
                field="daily_insulin_u_per_day",
                expected="a 1-D array or a date-indexed pandas Series [U/day]",
            )
        labels = list(range(x.size))
    if int(min_days) < 1:
        raise InputError(
            f"min_days must be >= 1, got {min_days!r}",
            field="min_days",
            expected="a number of days, e.g. 14",
        )
    min_days = int(min_days)
    known = np.isfinite(x)
    if np.any(known & (x < 0)):
        raise InputError(
            "negative insulin dose",
            field="daily_insulin_u_per_day",
            expected="doses >= 0 U/day",
        )
    free = known & (x == 0)
    runs = _runs(free)
    longest = float(runs.max(initial=0))
    inputs = {"days": int(x.size), "unknown_days": int((~known).sum())}
    name = "insulin_independence"
    if x.size < min_days:
        return _not_assessable(
            name,
            inputs,
            [f"daily insulin for at least {min_days} days"],
            f"the series covers {x.size} days, fewer than {min_days}",
        )
    if at_end:
        tail = x[-min_days:]
        if np.all(np.isfinite(tail) & (tail == 0)):
            category, reason = (
                "insulin independent",
                f"no insulin on the last {min_days} days",
            )
        elif np.any(np.isfinite(tail) & (tail > 0)):
            category, reason = (
                "insulin dependent",
                f"insulin within the last {min_days} days",
            )
        else:
            unknown = [labels[i] for i in np.flatnonzero(~np.isfinite(x))[-min_days:]]
            unknown = [u for u in unknown if u in labels[-min_days:]]
            return _not_assessable(
                name,
                inputs,
                [f"insulin on day {u}" for u in unknown],
                f"{len(unknown)} of the last {min_days} days have no insulin record",
            )
    else:
        if longest >= min_days:
            category = "insulin independent"
            reason = f"{longest:g} consecutive insulin-free days (≥ {min_days})"
        elif _runs(free | ~known).max(initial=0) < min_days:
            category = "insulin dependent"
            reason = f"longest insulin-free run {longest:g} days (< {min_days})"
        else:
            unknown = [labels[i] for i in np.flatnonzero(~known)]
            return _not_assessable(
                name,
                inputs,
                [f"insulin on day {u}" for u in unknown[:10]]
                + ([f"... {len(unknown) - 10} more days"] if len(unknown) > 10 else []),
                f"longest recorded insulin-free run {longest:g} days; unknown days "
                f"could complete a {min_days}-day run",
            )
    done = np.flatnonzero(runs >= min_days)
    first = labels[int(done[0])] if done.size else None
    return EndpointResult(
        name=name,
        value=longest,
        category=category,
        assessable=True,
        inputs=inputs,
        reason=reason,
        details={"first_day": first},
    )


# --- one visit ------------------------------------------------------------------------

_UNITS: dict[str, dict[str, Any]] = {
    "hba1c": {"%": 1.0, "percent": 1.0, "mmol/mol": "ifcc"},
    "c_peptide_fasting": {"nmol/l": 1.0, "pmol/l": 1e-3, "ng/ml": NMOL_L_PER_NG_ML},
    "c_peptide_stimulated": {"nmol/l": 1.0, "pmol/l": 1e-3, "ng/ml": NMOL_L_PER_NG_ML},
    "fasting_glucose": {"mg/dl": 1.0, "mmol/l": MG_DL_PER_MMOL_L},
    "insulin_dose": {"u/day": 1.0, "u/d": 1.0, "iu/day": 1.0, "u": 1.0},
    "severe_hypo": {
        "events/year": 1.0,
        "/year": 1.0,
        "events/yr": 1.0,
        "per year": 1.0,
    },
}
_CANONICAL = {
    "hba1c": "%",
    "c_peptide_fasting": "nmol/L",
    "c_peptide_stimulated": "nmol/L",
    "fasting_glucose": "mg/dL",
    "insulin_dose": "U/day",
    "severe_hypo": "events/year",
}


def _canonical_labs(labs, patient_id):
    """The known kinds of a labs table in canonical units, with datetime dates."""
    import pandas as pd

    cols = {"date", "kind", "value"}
    if labs is None:
        return pd.DataFrame({"date": pd.to_datetime([]), "kind": [], "value": []})
    missing = cols - set(labs.columns)
    if missing:
        raise InputError(
            f"labs table lacks column(s) {sorted(missing)}",
            field="labs",
            expected="columns patient_id, date, kind, value, unit",
        )
    df = labs
    if "patient_id" in df.columns and patient_id is not None:
        df = df[df["patient_id"].astype(str) == str(patient_id)]
    df = df[df["kind"].isin(list(_UNITS))].copy()
    df["date"] = pd.to_datetime(df["date"]).dt.tz_localize(None).dt.normalize()
    values = np.array(pd.to_numeric(df["value"], errors="coerce"), dtype=float)
    if "unit" in df.columns:
        for i, (kind, unit) in enumerate(zip(df["kind"], df["unit"], strict=True)):
            if unit is None or (isinstance(unit, float) and math.isnan(unit)):
                continue
            key = str(unit).strip().lower().replace(" ", "")
            table = {k.replace(" ", ""): v for k, v in _UNITS[kind].items()}
            if key not in table:
                raise InputError(
                    f"unknown unit {unit!r} for {kind}",
                    field="unit",
                    expected=f"{_CANONICAL[kind]} (or one of {sorted(_UNITS[kind])})",
                )
            factor = table[key]
            if factor == "ifcc":
                values[i] = values[i] / 10.929 + 2.15
            else:
                values[i] = values[i] * factor
    df["value"] = values
    return df[np.isfinite(values)][["date", "kind", "value"]]


def _nearest(df, kind, visit, window_days, not_before):
    sel = df[df["kind"] == kind]
    if not_before is not None:
        sel = sel[sel["date"] >= not_before]
    if sel.empty:
        return None, None
    delta = (sel["date"] - visit).dt.days.to_numpy()
    ok = np.abs(delta) <= window_days
    if not ok.any():
        return None, None
    sel, delta = sel[ok], delta[ok]
    # nearest; on a tie the earlier (on or before the visit) wins
    order = np.lexsort((delta, np.abs(delta)))
    row = sel.iloc[int(order[0])]
    return float(row["value"]), row["date"]


def _last_before(df, kind, date):
    sel = df[(df["kind"] == kind) & (df["date"] < date)]
    if sel.empty:
        return None
    return float(sel.sort_values("date", kind="stable")["value"].iloc[-1])


def endpoints_for_visit(
    patient_row,
    labs_for_patient,
    *,
    visit_date,
    cgm_metrics: Mapping[str, float] | None = None,
    baseline: str | Mapping[str, float] = "pre_transplant",
    baseline_cgm_metrics: Mapping[str, float] | None = None,
    daily_insulin=None,
    lab_window_days: float = 30.0,
    oral_agents: bool = False,
    other_therapy: bool = False,
) -> dict[str, EndpointResult]:
    r"""All transplant endpoints of one patient at one visit.

    **Visit values.** For each lab kind (``hba1c`` [%], ``c_peptide_fasting`` /
    ``c_peptide_stimulated`` [nmol/L], ``fasting_glucose`` [mg/dL], ``insulin_dose``
    [U/day], ``severe_hypo`` [events/year]) the value dated nearest to ``visit_date``
    within ± ``lab_window_days`` days (ties: the earlier one), ignoring values from
    before the transplant when the visit is on or after it. Non-canonical units that are
    unambiguous are converted (HbA1c mmol/mol, C-peptide pmol/L or ng/mL, glucose
    mmol/L); an unknown unit raises `InputError`.

    **Baseline** (``baseline="pre_transplant"``): for each kind the last value dated
    before ``transplant_date`` (no look-back limit); the insulin baseline is the patient
    sheet's ``baseline_tdd_u`` [U/day] when present, else the last pre-transplant
    ``insulin_dose``. A mapping ``{kind: value}`` (canonical units) gives the baseline
    directly. CGM baselines (TIR, time < 54, GMI) come from ``baseline_cgm_metrics``.

    **CGM** values (GMI when HbA1c is missing, TIR, time < 54) come from
    ``cgm_metrics``, a dict as returned by [`cgm_metrics`][] for the visit's CGM block.

    Args:
        patient_row: The patient's row of ``patients.csv`` (a `pandas.Series` or
            mapping with ``patient_id``, ``weight_kg`` [kg], ``transplant_date`` and
            optionally ``baseline_tdd_u`` [U/day]).
        labs_for_patient: Labs table (``date, kind, value, unit``; a ``patient_id``
            column is filtered to this patient), or ``None``.
        visit_date: The visit's date.
        cgm_metrics: CGM metrics of the visit block (keys of [`cgm_metrics`][]).
        baseline: ``"pre_transplant"`` or a mapping kind → baseline value.
        baseline_cgm_metrics: CGM metrics of the pre-transplant block.
        daily_insulin: Optional date-indexed `pandas.Series` of daily insulin [U/day]
            for insulin independence (the 14 days ending on the visit date).
        lab_window_days: Half-width of the window for visit labs [d].
        oral_agents: Whether oral glucose-lowering agents are taken (β-score).
        other_therapy: Whether other glucose-lowering therapy is taken (Igls 2.0).

    Returns:
        ``{"igls_1", "igls_2", "igls_2_beta_cell_function", "beta_score", "beta_2",
        "suit", "suito", "insulin_independence"}`` → `EndpointResult`.

    Raises:
        InputError: A labs table without the needed columns, or an unknown unit.

    References:
        See [`igls_1`][], [`igls_2`][], [`beta_score`][], [`beta2_score`][],
        [`suit_index`][], [`suito_index`][], [`insulin_independence`][].
    """
    import pandas as pd

    row = dict(patient_row) if patient_row is not None else {}
    visit = pd.Timestamp(visit_date).tz_localize(None).normalize()
    tx = row.get("transplant_date")
    tx = None if tx is None or pd.isna(tx) else pd.Timestamp(tx).tz_localize(None)
    tx = None if tx is None else tx.normalize()
    weight = _num(row.get("weight_kg"))
    labs = _canonical_labs(labs_for_patient, row.get("patient_id"))
    not_before = tx if tx is not None and visit >= tx else None

    now: dict[str, float | None] = {}
    when: dict[str, Any] = {}
    for kind in _UNITS:
        now[kind], when[kind] = _nearest(labs, kind, visit, lab_window_days, not_before)

    if isinstance(baseline, Mapping):
        base = {kind: _num(baseline.get(kind)) for kind in _UNITS}
    elif baseline == "pre_transplant":
        base = {
            kind: None if tx is None else _last_before(labs, kind, tx)
            for kind in _UNITS
        }
        sheet_tdd = _num(row.get("baseline_tdd_u"))
        if sheet_tdd is not None:
            base["insulin_dose"] = sheet_tdd
    else:
        raise InputError(
            f"unknown baseline {baseline!r}",
            field="baseline",
            expected="'pre_transplant' or a mapping kind -> value",
        )
    cgm = dict(cgm_metrics or {})
    bcgm = dict(baseline_cgm_metrics or {})

    results = {
        "igls_1": igls_1(
            hba1c_percent=now["hba1c"],
            gmi_percent=cgm.get("gmi_percent"),
            severe_hypo_per_year=now["severe_hypo"],
            insulin_u_per_day=now["insulin_dose"],
            weight_kg=weight,
            c_peptide_fasting_nmol_l=now["c_peptide_fasting"],
            c_peptide_stimulated_nmol_l=now["c_peptide_stimulated"],
            baseline_insulin_u_per_day=base["insulin_dose"],
            baseline_severe_hypo_per_year=base["severe_hypo"],
            baseline_c_peptide_fasting_nmol_l=base["c_peptide_fasting"],
            baseline_c_peptide_stimulated_nmol_l=base["c_peptide_stimulated"],
            tbr_below_54_percent=cgm.get("tbr_below_54_percent"),
        ),
        "igls_2": igls_2(
            hba1c_percent=now["hba1c"],
            gmi_percent=cgm.get("gmi_percent"),
            tir_70_180_percent=cgm.get("tir_70_180_percent"),
            severe_hypo_per_year=now["severe_hypo"],
            tbr_below_54_percent=cgm.get("tbr_below_54_percent"),
            baseline_hba1c_percent=base["hba1c"],
            baseline_gmi_percent=bcgm.get("gmi_percent"),
            baseline_tir_70_180_percent=bcgm.get("tir_70_180_percent"),
            baseline_severe_hypo_per_year=base["severe_hypo"],
            baseline_tbr_below_54_percent=bcgm.get("tbr_below_54_percent"),
        ),
        "igls_2_beta_cell_function": igls_2_beta_cell_function(
            insulin_u_per_day=now["insulin_dose"],
            c_peptide_fasting_nmol_l=now["c_peptide_fasting"],
            c_peptide_stimulated_nmol_l=now["c_peptide_stimulated"],
            other_therapy=other_therapy,
        ),
        "beta_score": beta_score(
            fasting_glucose_mg_dl=now["fasting_glucose"],
            hba1c_percent=now["hba1c"],
            insulin_u_per_day=now["insulin_dose"],
            weight_kg=weight,
            c_peptide_stimulated_nmol_l=now["c_peptide_stimulated"],
            c_peptide_fasting_nmol_l=now["c_peptide_fasting"],
            oral_agents=oral_agents,
        ),
        "beta_2": beta2_score(
            fasting_c_peptide_nmol_l=now["c_peptide_fasting"],
            fasting_glucose_mg_dl=now["fasting_glucose"],
            hba1c_percent=now["hba1c"],
            insulin_u_per_day=now["insulin_dose"],
            weight_kg=weight,
        ),
        "suit": suit_index(
            fasting_c_peptide_nmol_l=now["c_peptide_fasting"],
            fasting_glucose_mg_dl=now["fasting_glucose"],
        ),
        "suito": suito_index(
            fasting_c_peptide_nmol_l=now["c_peptide_fasting"],
            fasting_glucose_mg_dl=now["fasting_glucose"],
        ),
    }
    if daily_insulin is None:
        results["insulin_independence"] = _not_assessable(
            "insulin_independence",
            {},
            ["daily insulin series"],
            "no daily insulin series given",
        )
    else:
        s = pd.Series(daily_insulin, dtype=float)
        s.index = pd.DatetimeIndex(s.index).tz_localize(None).normalize()
        days = pd.date_range(visit - pd.Timedelta(days=13), visit, freq="D")
        s = s.groupby(level=0).max().reindex(days)
        results["insulin_independence"] = insulin_independence(s, at_end=True)
    lab_dates = {
        k: (None if v is None else v.date().isoformat()) for k, v in when.items()
    }
    return {
        k: dataclasses.replace(r, details=dict(r.details) | {"lab_dates": lab_dates})
        for k, r in results.items()
    }


def flatten_endpoints(results: Mapping[str, EndpointResult]) -> dict[str, Any]:
    """One flat row from [`endpoints_for_visit`][]: value, category and reason columns.

    Args:
        results: Endpoint name → result.

    Returns:
        ``{"<name>_value": ..., "<name>_category": ..., "<name>_reason": ...}``.
    """
    row: dict[str, Any] = {}
    for name, r in results.items():
        row[f"{name}_value"] = r.value
        row[f"{name}_category"] = r.category
        row[f"{name}_reason"] = r.reason
    return row
