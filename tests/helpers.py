"""Shared test helpers: tolerances and tree comparison."""

import jax
import jax.numpy as jnp
import numpy as np

#: Default tolerances for float64 comparisons on CPU.
RTOL = 1e-5
ATOL = 1e-8
#: Looser tolerances for results computed on a GPU (different reduction order, fused ops).
GPU_RTOL = 1e-4
GPU_ATOL = 1e-6


def tree_allclose(x, y, *, rtol=RTOL, atol=ATOL) -> bool:
    """True when two PyTrees have the same structure and all leaves are close."""
    xl, xs = jax.tree.flatten(x)
    yl, ys = jax.tree.flatten(y)
    if xs != ys:
        return False
    return all(
        np.shape(a) == np.shape(b)
        and bool(jnp.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
        for a, b in zip(xl, yl, strict=True)
    )
