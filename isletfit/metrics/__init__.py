"""CGM consensus metrics and islet-transplant endpoints.

* numpy metrics on ``[times]`` or ``[patients, times]`` arrays (mask-aware, vectorised):
  [`cgm_metrics`][], [`cgm_metrics_batch`][] and the single metrics;
* the same metrics as pure ``jax.numpy`` functions (``*_jax``) for jit/vmap in fits;
* tables per day, window or visit block: [`metrics_table`][], [`group_metrics`][];
* transplant endpoints (Igls 1.0/2.0, β-score, BETA-2, SUIT, SUITO, insulin
  independence) returning [`EndpointResult`][] objects, "not assessable" when inputs
  are missing.
"""

from ._cgm import adrr as adrr
from ._cgm import cgm_metrics as cgm_metrics
from ._cgm import cgm_metrics_batch as cgm_metrics_batch
from ._cgm import conga as conga
from ._cgm import cv_percent as cv_percent
from ._cgm import data_sufficiency as data_sufficiency
from ._cgm import eag_from_hba1c as eag_from_hba1c
from ._cgm import gmi_percent as gmi_percent
from ._cgm import gri as gri
from ._cgm import hbgi as hbgi
from ._cgm import j_index as j_index
from ._cgm import lbgi as lbgi
from ._cgm import mage as mage
from ._cgm import mean_glucose as mean_glucose
from ._cgm import modd as modd
from ._cgm import percent_time_in_range as percent_time_in_range
from ._cgm import risk_function as risk_function
from ._cgm import sd_glucose as sd_glucose
from ._cgm import time_in_ranges as time_in_ranges
from ._cgm_jax import cgm_metrics_jax as cgm_metrics_jax
from ._cgm_jax import conga_jax as conga_jax
from ._cgm_jax import cv_percent_jax as cv_percent_jax
from ._cgm_jax import data_sufficiency_jax as data_sufficiency_jax
from ._cgm_jax import gmi_percent_jax as gmi_percent_jax
from ._cgm_jax import gri_jax as gri_jax
from ._cgm_jax import hbgi_jax as hbgi_jax
from ._cgm_jax import j_index_jax as j_index_jax
from ._cgm_jax import lbgi_jax as lbgi_jax
from ._cgm_jax import mean_glucose_jax as mean_glucose_jax
from ._cgm_jax import modd_jax as modd_jax
from ._cgm_jax import sd_glucose_jax as sd_glucose_jax
from ._cgm_jax import time_in_ranges_jax as time_in_ranges_jax
from ._endpoints import EndpointResult as EndpointResult
from ._endpoints import beta2_score as beta2_score
from ._endpoints import beta_score as beta_score
from ._endpoints import endpoints_for_visit as endpoints_for_visit
from ._endpoints import flatten_endpoints as flatten_endpoints
from ._endpoints import igls_1 as igls_1
from ._endpoints import igls_2 as igls_2
from ._endpoints import igls_2_beta_cell_function as igls_2_beta_cell_function
from ._endpoints import insulin_independence as insulin_independence
from ._endpoints import suit_index as suit_index
from ._endpoints import suito_index as suito_index
from ._table import group_metrics as group_metrics
from ._table import infer_step_min as infer_step_min
from ._table import metrics_table as metrics_table

__all__ = [
    "EndpointResult",
    "adrr",
    "beta2_score",
    "beta_score",
    "cgm_metrics",
    "cgm_metrics_batch",
    "cgm_metrics_jax",
    "conga",
    "conga_jax",
    "cv_percent",
    "cv_percent_jax",
    "data_sufficiency",
    "data_sufficiency_jax",
    "eag_from_hba1c",
    "endpoints_for_visit",
    "flatten_endpoints",
    "gmi_percent",
    "gmi_percent_jax",
    "gri",
    "gri_jax",
    "group_metrics",
    "hbgi",
    "hbgi_jax",
    "igls_1",
    "igls_2",
    "igls_2_beta_cell_function",
    "infer_step_min",
    "insulin_independence",
    "j_index",
    "j_index_jax",
    "lbgi",
    "lbgi_jax",
    "mage",
    "mean_glucose",
    "mean_glucose_jax",
    "metrics_table",
    "modd",
    "modd_jax",
    "percent_time_in_range",
    "risk_function",
    "sd_glucose",
    "sd_glucose_jax",
    "suit_index",
    "suito_index",
    "time_in_ranges",
    "time_in_ranges_jax",
]
