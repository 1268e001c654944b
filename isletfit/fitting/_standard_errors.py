r"""Standard errors of the population parameters (μ, ω) of a Laplace-EM fit.

The E-step gives each patient's empirical Bayes estimate θ̂_i and its Laplace posterior
covariance C_i under the population prior N(μ, Ω), Ω = diag ω². Linearising the model
around θ̂_i (the first-order conditional view of FOCE), the data of patient i carry the
precision P_i = C_i⁻¹ − Ω⁻¹ about θ_i (clipped to be positive semi-definite), i.e. they
act like a direct, noisy measurement of θ_i with covariance P_i⁻¹. Its marginal
distribution over patients is then the normal-normal model

$$\tilde\theta_i \sim N(\mu,\; V_i), \qquad V_i = \Omega + P_i^{-1},$$

whose Fisher information gives the standard errors:

- typical values: $\operatorname{cov}(\hat\mu) = (\sum_i V_i^{-1})^{-1}$;
- between-patient SDs (diagonal Ω): $I(\omega^2)_{kl} = \tfrac12 \sum_i
  (V_i^{-1})_{kl}^2$, and by the delta method $I(\omega)_{kl} = 4\,\omega_k\omega_l\,
  I(\omega^2)_{kl}$, $\operatorname{cov}(\hat\omega) = I(\omega)^{-1}$ (μ and Ω are
  orthogonal in the normal model, so the two blocks are inverted apart).

$V_i^{-1}$ is formed without inverting $P_i$ (which is singular for a parameter the
data do not inform): with $D = \operatorname{diag}\omega$ and the scaled posterior
covariance $\tilde C_i = D^{-1} C_i D^{-1} = U \Lambda U^T$, $V_i^{-1} = D^{-1} U
\max(1 - \Lambda, 0) U^T D^{-1}$ (clipping $P_i$ to PSD is clipping Λ at 1; a patient
whose data say nothing adds nothing). With equal $C_i$ from data of precision $1/s^2$
this is the textbook $\operatorname{SE}(\hat\mu) = \sqrt{(\omega^2 + s^2)/n}$, and with
exact data ($s = 0$) $\operatorname{SE}(\hat\omega) = \omega/\sqrt{2n}$.

The approximation ignores the uncertainty of the fixed (non-population) unknowns
beyond their Schur complement in C_i, and the curvature of the model between θ̂_i and
μ; like FOCE standard errors it is a large-sample, first-order result.

References:
    - Lavielle M. Mixed Effects Models for the Population Approach: Models, Tasks,
      Methods and Tools. Chapman & Hall/CRC, 2014 (ch. 9, Fisher information of the
      linearised model).
    - Wang Y. Derivation of various NONMEM estimation methods. J Pharmacokinet
      Pharmacodyn 34:575–593, 2007 (first-order conditional linearisation).
"""

from __future__ import annotations

import numpy as np

__all__ = ["population_standard_errors"]


def _scaled_data_information(omega: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Ṽ_i⁻¹ = D V_i⁻¹ D for each patient ``[n, p, p]`` (see the module docstring)."""
    scaled = cov / omega[None, :, None] / omega[None, None, :]
    scaled = 0.5 * (scaled + np.swapaxes(scaled, 1, 2))
    lam, u = np.linalg.eigh(scaled)
    keep = np.clip(1.0 - lam, 0.0, 1.0)
    return np.einsum("nij,nj,nkj->nik", u, keep, u)


def _inverse_diagonal(info: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """diag(info⁻¹) of a PSD matrix; +inf for parameters in its null space."""
    info = 0.5 * (info + info.T)
    lam, u = np.linalg.eigh(info)
    scale = max(float(np.max(np.abs(lam))), np.finfo(float).tiny)
    ok = lam > rtol * scale
    var = (u[:, ok] ** 2) @ (1.0 / lam[ok])
    unidentified = np.any(np.abs(u[:, ~ok]) > 1e-8, axis=1)
    return np.where(unidentified, np.inf, var)


def population_standard_errors(
    omega: np.ndarray, cov: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    r"""Standard errors of μ and ω from the patients' Laplace posterior covariances.

    Args:
        omega: Between-patient SDs ω of log(field) ``[p]`` [-] (the prior under which
            ``cov`` was computed).
        cov: Each patient's Laplace posterior covariance C_i of θ_i (log scale) under
            N(μ, diag ω²) ``[n, p, p]``, patients whose fit could be evaluated only.

    Returns:
        ``(mu_se, omega_se)``, each ``[p]`` (log units): SE(μ̂) from
        $(\sum_i V_i^{-1})^{-1}$ and SE(ω̂) from the Fisher information of the
        normal-normal model (see the module docstring); +inf for a parameter no patient's
        data inform, NaN without patients.
    """
    omega = np.asarray(omega, float)
    cov = np.asarray(cov, float)
    p = omega.size
    if cov.ndim != 3 or cov.shape[1:] != (p, p):
        raise ValueError(
            f"population_standard_errors: cov must be [n, {p}, {p}], got {cov.shape}"
        )
    if cov.shape[0] == 0 or not np.all(omega > 0):
        return np.full(p, np.nan), np.full(p, np.nan)
    vinv = _scaled_data_information(omega, cov)  # Ṽ_i⁻¹ = D V_i⁻¹ D
    # cov(μ) = D (Σ Ṽ_i⁻¹)⁻¹ D
    mu_se = omega * np.sqrt(_inverse_diagonal(vinv.sum(axis=0)))
    # I(ω) = D⁻¹ [2 Σ (Ṽ_i⁻¹)∘²] D⁻¹  ->  cov(ω) = D [2 Σ (Ṽ_i⁻¹)∘²]⁻¹ D
    omega_se = omega * np.sqrt(_inverse_diagonal(2.0 * np.sum(vinv**2, axis=0)))
    return mu_se, omega_se
