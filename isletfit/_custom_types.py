"""Array type aliases used on public signatures (jaxtyping; checked at runtime in tests only)."""

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Int",
    "PRNGKeyArray",
    "Scalar",
    "ScalarLike",
]

Scalar = Float[Array, ""]
ScalarLike = float | Float[ArrayLike, ""]
