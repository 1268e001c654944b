r"""Practical identifiability: which parameters a CGM record can tell apart.

At a known truth (a synthetic patient), the Fisher information of the CGM readings for
the log of candidate parameters, with the graft trajectory's knots and each window's
local unknowns (initial glucose, daily sensitivity) estimated too and marginalised out
(the Schur complement of the same Gauss–Newton blocks the fit uses). From it:

- the standard error each log-parameter would have if it alone were estimated with the
  graft, and if estimated jointly with a set of others;
- the collinearity index of a set (Brun, Reichert & Künsch 2001): with the information
  matrix scaled to unit diagonal, $\gamma = 1/\sqrt{\lambda_{min}}$. γ near 1 means the
  parameters act independently on the CGM; γ > 10–15 means some combination of them is
  practically not identifiable (a change of one can be compensated by the others to
  within 1/γ of its own effect).

`select_parameters` adds candidates greedily, most informative first, while the set's
collinearity index stays below a threshold.

Reference:
    Brun R, Reichert P, Künsch HR. Practical identifiability analysis of large
    environmental simulation models. Water Resour Res 37:1015-1030, 2001.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..data import PatientData
from ..model import AbstractGraft, Params
from ._config import FitModel, Prior
from ._fit import _linearise, _pad_events, _transplant_day
from ._lm import schur_covariance
from ._problem import Objective, prepare_windows

__all__ = ["FisherInformation", "fisher_information", "select_parameters"]


@dataclasses.dataclass(frozen=True)
class FisherInformation:
    """Fisher information of log-parameters, graft knots and window effects marginalised.

    Attributes:
        names: Candidate parameter names (log scale).
        information: Their information matrix ``[p, p]`` with the graft knots and local
            unknowns marginalised (estimated jointly, not fixed).
        alone_se: SE of each log-parameter estimated alone with the graft [-].
    """

    names: tuple[str, ...]
    information: np.ndarray
    alone_se: np.ndarray

    def _index(self, subset) -> np.ndarray:
        return np.array([self.names.index(n) for n in subset])

    def collinearity(self, subset) -> float:
        """Collinearity index γ of a set of parameters (the others fixed)."""
        idx = self._index(subset)
        sub = self.information[np.ix_(idx, idx)]
        d = 1.0 / np.sqrt(np.diag(sub))
        eig = np.linalg.eigvalsh(sub * d[:, None] * d[None, :])
        return float(1.0 / np.sqrt(max(eig.min(), 1e-300)))

    def joint_se(self, subset) -> np.ndarray:
        """SE of each log-parameter when the set is estimated jointly [-]."""
        idx = self._index(subset)
        cov = np.linalg.pinv(self.information[np.ix_(idx, idx)], hermitian=True)
        return np.sqrt(np.maximum(np.diag(cov), 0.0))


def fisher_information(
    patient: PatientData,
    params: Params,
    graft: AbstractGraft,
    *,
    names: tuple[str, ...],
    noise_sd: float = 8.0,
    noise_ar1: float = 0.0,
    weight_kg: float = 70.0,
    transplant_date=None,
    model: FitModel | None = None,
    prior: Prior = Prior(),
) -> FisherInformation:
    """Fisher information of ``names`` at the truth of a synthetic patient.

    Args:
        patient: The synthetic patient's record.
        params: Its true parameters.
        graft: Its true graft trajectory (B at the knots is taken from it).
        names: Candidate `Params` fields.
        noise_sd: CGM error SD [mg/dL].
        noise_ar1: AR(1) coefficient of the error between consecutive readings (real
            CGM error and model misfit are strongly autocorrelated: 0.8–0.95 at 5 min).
        weight_kg: Body weight [kg].
        transplant_date: As for `fit_patient`.
        model: Model configuration (default ``FitModel()``).
        prior: Priors of the graft and window effects (those of ``names`` are made
            uninformative).

    Returns:
        The `FisherInformation`.
    """
    model = FitModel() if model is None else model
    prior = dataclasses.replace(
        prior, estimated=tuple(names), log_sd=(1e6,) * len(names)
    )
    model = dataclasses.replace(model, params=params)
    windows, _ = prepare_windows(
        patient,
        model=model,
        weight_kg=weight_kg,
        transplant_day=_transplant_day(patient, transplant_date),
    )
    windows = eqx.tree_at(lambda w: w.inputs, windows, _pad_events(windows.inputs))
    obj = Objective(windows=windows, model=model, prior=prior)
    b_knots = np.asarray(graft(windows.knot_days))
    knots = jnp.where(windows.knot_valid, jnp.log(jnp.maximum(b_knots, 1e-6)), 0.0)
    g = jnp.concatenate([obj.prior_centre(), knots, jnp.zeros(2 * obj.n_sessions)])
    loc = jnp.zeros((windows.ts.shape[0], obj.n_local))
    noise = (jnp.asarray(noise_sd), jnp.asarray(noise_ar1))
    blocks, _ = eqx.filter_jit(_linearise)(
        obj, g, loc, noise, jnp.ones(windows.obs.shape)
    )
    cov = np.asarray(schur_covariance(blocks))
    p = len(names)
    # information of the parameters with knots and locals marginalised
    information = np.linalg.pinv(cov[:p, :p], hermitian=True)
    # "alone with the graft": invert the (parameter j + knots) block only
    hgg = np.asarray(blocks.hgg)
    k = np.arange(p, hgg.shape[0])
    alone = []
    for j in range(p):
        idx = np.concatenate([[j], k])
        alone.append(
            np.sqrt(np.linalg.pinv(hgg[np.ix_(idx, idx)], hermitian=True)[0, 0])
        )
    return FisherInformation(tuple(names), information, np.asarray(alone))


def select_parameters(
    fim: FisherInformation,
    population_log_sd: dict[str, float],
    *,
    max_ratio: float = 0.5,
    max_collinearity: float = 5.0,
) -> list[str]:
    """Greedy choice of the parameters worth estimating per patient.

    A parameter is worth estimating when it varies between patients and the CGM record
    tells its value: candidates are taken in order of SE-alone / population SD and one
    is added when, estimated jointly with those already chosen (and the graft), every
    chosen parameter keeps SE ≤ ``max_ratio`` × its population SD and the set's
    collinearity index stays ≤ ``max_collinearity``.

    Args:
        fim: The Fisher information.
        population_log_sd: Between-patient SD of log(value) of each candidate.
        max_ratio: Largest posterior-to-population SD ratio accepted (0.5: the data at
            least halve the uncertainty about this patient's value).
        max_collinearity: Largest collinearity index accepted.

    Returns:
        The selected names, in the order they were added.
    """
    pop = np.array([population_log_sd[n] for n in fim.names])
    chosen: list[str] = []
    for j in np.argsort(fim.alone_se / pop):
        trial = [*chosen, fim.names[j]]
        ratio = fim.joint_se(trial) / pop[fim._index(trial)]
        if np.all(ratio <= max_ratio) and fim.collinearity(trial) <= max_collinearity:
            chosen = trial
    return chosen
