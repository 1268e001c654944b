r"""Patient covariates on the typical values of a population fit.

With covariates $x_{i1}, \dots, x_{iq}$ (e.g. body weight, the graft's cell dose) from
the patient sheet, patient i's log-parameters are drawn around its own centre,

$$\theta_{ij} = \mu_j + \sum_k \beta_{jk}\, c_{ik} + \eta_{ij}, \qquad
c_{ik} = \log(x_{ik}/\tilde x_k), \qquad \eta_{ij} \sim N(0, \omega_j^2),$$

the power model of population pharmacokinetics
($\exp\theta_{ij} = e^{\mu_j} (x_{ik}/\tilde x_k)^{\beta_{jk}}$, e.g. allometric weight
scaling), centred at the cohort median $\tilde x_k$ so that $\mu_j$ stays the typical
value of a median patient. A covariate acts on the parameters it names (all estimated
parameters by default); the other $\beta_{jk}$ are fixed at 0.

M-step. Given each patient's empirical Bayes estimate $\hat\theta_i$ and Laplace
variances $\Sigma_{i,jj}$, the expected complete-data log-likelihood of the linear
Gaussian model is maximised by ordinary least squares of $\hat\theta_{\cdot j}$ on the
design $[1, c_{\cdot k}]$ (every patient has the same $\omega_j$, so generalised least
squares reduces to it), then $\omega_j^2 = \mathrm{mean}_i[(\hat\theta_{ij} -
\hat{\text{centre}}_{ij})^2 + \Sigma_{i,jj}]$ — the covariate-free M-step when q = 0.

Standard errors. As for the typical values (`population_standard_errors`): linearised
at each EBE, patient i's data act as a measurement of $\theta_i$ with marginal
covariance $V_i = \Omega + P_i^{-1}$, so the Fisher information of the coefficients is
$\sum_i X_i^T V_i^{-1} X_i$ with $X_i = I_p \otimes [1, c_i]$ restricted to the free
coefficients — the textbook $\omega^2 (X^T X)^{-1}$ of least squares when the data
are exact.

References:
    - Mould DR, Upton RN. Basic concepts in population modeling, simulation, and
      model-based drug development — part 2: introduction to pharmacokinetic modeling
      methods. CPT Pharmacometrics Syst Pharmacol 2:e38, 2013 (power covariate models
      centred at the median).
    - Lavielle M. Mixed Effects Models for the Population Approach. Chapman &
      Hall/CRC, 2014 (ch. 9: the M-step and Fisher information with covariates).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import numpy as np
import pandas as pd

from .._errors import InputError
from ._standard_errors import _inverse_diagonal, _scaled_data_information

__all__ = [
    "Covariate",
    "coefficient_standard_errors",
    "covariate_values",
    "free_coefficients",
    "regression_m_step",
]


class Covariate(eqx.Module):
    """A numeric column of the patient sheet acting on the typical values.

    Patient i's prior centre of log(field) moves by β·log(x_i/median x) (a power model:
    the field scales as (x/median x)^β).

    Attributes:
        column: The sheet column (e.g. ``"weight_kg"``, or a cell-dose column kept
            from the sheet); every fitted patient needs a value > 0.
        parameters: The estimated fields it acts on (None: all of them).
    """

    column: str
    parameters: tuple[str, ...] | None = None

    def __check_init__(self):
        if not isinstance(self.column, str) or not self.column.strip():
            raise InputError(
                f"Covariate: column must be a sheet column name, got {self.column!r}",
                field="column",
            )
        if self.parameters is not None and (
            isinstance(self.parameters, str)
            or not all(isinstance(p, str) for p in self.parameters)
        ):
            raise InputError(
                "Covariate: parameters must be a tuple of estimated field names or "
                f"None, got {self.parameters!r}",
                field="parameters",
            )


def free_coefficients(
    covariates: Sequence[Covariate], estimated: Sequence[str]
) -> np.ndarray:
    """Which coefficients are estimated ``[p, 1 + q]``: μ, then each covariate's β.

    Raises:
        InputError: A covariate names a field that is not estimated, or a column twice.
    """
    columns = [c.column for c in covariates]
    if len(set(columns)) != len(columns):
        raise InputError(
            f"fit_population: a covariate column is given twice: {columns}",
            field="covariates",
        )
    free = np.zeros((len(estimated), 1 + len(covariates)), bool)
    free[:, 0] = True
    for k, cov in enumerate(covariates):
        names = estimated if cov.parameters is None else cov.parameters
        for name in names:
            if name not in estimated:
                raise InputError(
                    f"covariate {cov.column!r} acts on {name!r}, which is not "
                    "estimated",
                    field="covariates",
                    expected="one of " + ", ".join(estimated),
                )
            free[list(estimated).index(name), 1 + k] = True
    return free


def covariate_values(
    covariates: Sequence[Covariate],
    sheet: pd.DataFrame | None,
    patient_ids: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Each patient's centred log covariates c_ik = log(x_ik / median_k x).

    Args:
        covariates: The covariates.
        sheet: The patient sheet (`isletfit.data.read_patients`).
        patient_ids: The fitted patients, in order.

    Returns:
        ``(c [n, q], reference [q])``: the centred log values and the medians x̃.

    Raises:
        InputError: No sheet, a missing column, or a patient without a positive
            number in it (the message names the patient and the column).
    """
    q = len(covariates)
    n = len(patient_ids)
    if q == 0:
        return np.zeros((n, 0)), np.zeros(0)
    if sheet is None:
        raise InputError(
            "fit_population: covariates need the patient sheet",
            field="sheet",
            expected="sheet=read_patients(...) with the covariate columns",
        )
    rows = sheet.set_index("patient_id")
    x = np.zeros((n, q))
    for k, cov in enumerate(covariates):
        if cov.column not in rows.columns:
            raise InputError(
                f"the patient sheet has no column {cov.column!r}",
                field=cov.column,
                expected="a column of the sheet: " + ", ".join(map(str, rows.columns)),
            )
        for i, pid in enumerate(patient_ids):
            raw = rows.loc[pid, cov.column] if pid in rows.index else None
            value = pd.to_numeric(pd.Series([raw]), errors="coerce").iloc[0]
            if not (np.isfinite(value) and value > 0):
                raise InputError(
                    f"patient {pid!r} has no positive value of covariate "
                    f"{cov.column!r} (got {raw!r})",
                    field=cov.column,
                    expected="a number > 0 for every fitted patient",
                )
            x[i, k] = value
    reference = np.median(x, axis=0)
    return np.log(x / reference), reference


def regression_m_step(
    theta: np.ndarray,
    var: np.ndarray,
    design: np.ndarray,
    free: np.ndarray,
    floor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The M-step with covariates: least squares of θ̂ on the design, then ω.

    Args:
        theta: EBEs ``[n, p]``.
        var: Laplace variances diag Σ_i ``[n, p]``.
        design: ``[n, 1 + q]``: ones, then the centred log covariates.
        free: Estimated coefficients ``[p, 1 + q]`` (`free_coefficients`).
        floor: Smallest ω.

    Returns:
        ``(coef [p, 1 + q], omega [p])``; coef[:, 0] is μ, 0 where not free.
    """
    p = theta.shape[1]
    coef = np.zeros((p, design.shape[1]))
    centre = np.zeros_like(theta)
    for j in range(p):
        x = design[:, free[j]]
        b, *_ = np.linalg.lstsq(x, theta[:, j], rcond=None)
        coef[j, free[j]] = b
        centre[:, j] = x @ b
    omega = np.sqrt(np.maximum(np.mean((theta - centre) ** 2 + var, axis=0), floor**2))
    return coef, omega


def coefficient_standard_errors(
    omega: np.ndarray, cov: np.ndarray, design: np.ndarray, free: np.ndarray
) -> np.ndarray:
    """Standard errors of the coefficients (μ and β) ``[p, 1 + q]``.

    Args:
        omega: ω ``[p]`` (the prior under which ``cov`` was computed).
        cov: Each patient's Laplace posterior covariance of θ_i ``[n, p, p]``.
        design: ``[n, 1 + q]`` (ones, then the centred log covariates).
        free: Estimated coefficients ``[p, 1 + q]``.

    Returns:
        SE of each coefficient (NaN where not free; +inf where the data do not
        inform it; NaN everywhere without patients).
    """
    omega = np.asarray(omega, float)
    p, r = free.shape
    out = np.full((p, r), np.nan)
    if cov.shape[0] == 0 or not np.all(omega > 0):
        return out
    vinv = _scaled_data_information(omega, np.asarray(cov, float))
    vinv = vinv / omega[None, :, None] / omega[None, None, :]  # V_i⁻¹
    # I[(j,a),(k,b)] = Σ_i x_ia x_ib (V_i⁻¹)_jk, over the free (j, a)
    info = np.einsum("na,nb,njk->jakb", design, design, vinv).reshape(p * r, p * r)
    keep = free.reshape(-1)
    flat = out.reshape(-1)
    flat[keep] = np.sqrt(_inverse_diagonal(info[np.ix_(keep, keep)]))
    return flat.reshape(p, r)
