"""The identifiability analysis that chose the estimated parameters."""

import jax.numpy as jnp
import numpy as np

from isletfit.fitting import (
    POPULATION_LOG_SD,
    Prior,
    fisher_information,
    select_parameters,
)
from isletfit.model import MechanisticGraft, Params

from fit_fixtures import REFERENCE, synthetic_patient


def test_fisher_information_supports_the_default_estimated_set(tmp_path):
    true = Params().replace(vmx=0.04, kp1=5.9)
    graft = MechanisticGraft(
        infusion_day=0.0, engrafted=0.7, onset_lag=30.0, tau_maturation=50.0
    )
    patient, _ = synthetic_patient(
        tmp_path / "p.csv", true=true, graft=graft, blocks=((-7, 2), (30, 2), (120, 2))
    )
    names = ("vmx", "kp1", "kabs", "kmax", "kmin", "kd", "p2u", "s_max")
    fim = fisher_information(
        patient, true, graft, names=names, transplant_date=REFERENCE, noise_ar1=0.9
    )
    assert fim.information.shape == (8, 8)
    assert np.allclose(fim.information, fim.information.T)
    # glucose production and insulin sensitivity are among the best-informed
    # parameters (insulin sensitivity shares the glucose level with the sensors' gain
    # and offset, which are estimated too)
    order = [names[j] for j in np.argsort(fim.alone_se)]
    assert order[0] == "kp1" and "vmx" in order[:3]
    # the graft's secretion scale is (nearly) not identifiable next to B itself
    assert fim.alone_se[names.index("s_max")] > 10 * fim.alone_se[names.index("vmx")]
    # the default set is practically identifiable (collinearity index below 5)
    default = Prior().estimated
    assert fim.collinearity(default) < 5.0
    assert fim.collinearity(["vmx", "vmx"]) > 1e6  # a duplicated parameter is collinear
    pop = {n: POPULATION_LOG_SD.get(n, 0.3) for n in names}
    chosen = select_parameters(fim, pop)
    assert {"vmx", "kp1"} <= set(chosen) and "s_max" not in chosen
    # joint SEs never beat the SEs of a parameter estimated alone
    joint = fim.joint_se(list(names[:6]))
    assert np.all(joint + 1e-12 >= fim.alone_se[:6])
    assert np.isfinite(jnp.asarray(joint)).all()
