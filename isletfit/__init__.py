"""isletfit: estimate islet-graft function over time from CGM records.

A differentiable two-timescale model (graft function -> insulin secretion -> glucose ->
interstitial CGM signal) integrated with diffrax and fitted with JAX. Importing isletfit
changes no JAX setting: enable float64 yourself (``jax.config.update("jax_enable_x64",
True)``) before fitting.
"""

from ._errors import DataWarning as DataWarning
from ._errors import InputError as InputError
from ._errors import IsletfitError as IsletfitError

__version__ = "0.1.0"

__all__ = ["DataWarning", "InputError", "IsletfitError", "__version__"]
