"""Small distribution objects for the virtual population (sampled with explicit keys)."""

from __future__ import annotations

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, PRNGKeyArray

__all__ = ["AbstractDistribution", "LogNormal", "Normal", "Uniform"]


class AbstractDistribution(abc.ABC):
    """A scalar distribution that draws arrays of samples from a PRNG key."""

    @abc.abstractmethod
    def sample(
        self, key: PRNGKeyArray, shape: tuple[int, ...] = (), dtype=float
    ) -> Float[Array, "..."]:
        """Draw samples of the given shape."""


def _truncated_standard_normal(key, lo: float, hi: float, shape, dtype):
    if math.isinf(lo) and math.isinf(hi):
        return jax.random.normal(key, shape, dtype)
    return jax.random.truncated_normal(key, lo, hi, shape, dtype)


@dataclasses.dataclass(frozen=True)
class LogNormal(AbstractDistribution):
    r"""Log-normal with a median and a log-scale SD, truncated to ``[lower, upper]``.

    $X = \text{median}\cdot e^{\sigma Z}$ with $Z$ a standard normal truncated so that
    ``lower <= X <= upper`` (truncation, not clipping: no mass piles up at the bounds).

    Attributes:
        median: Median (before truncation) [unit of the quantity].
        sigma: SD of log X [-] (≈ the coefficient of variation when small).
        lower: Lower truncation bound (0 = none).
        upper: Upper truncation bound.
    """

    median: float
    sigma: float
    lower: float = 0.0
    upper: float = math.inf

    def sample(self, key, shape=(), dtype=float):
        """Draw samples of the given shape."""
        if self.sigma == 0.0:
            return jnp.full(shape, self.median, dtype)
        lo = (
            (math.log(self.lower) - math.log(self.median)) / self.sigma
            if self.lower > 0
            else -math.inf
        )
        hi = (
            (math.log(self.upper) - math.log(self.median)) / self.sigma
            if math.isfinite(self.upper)
            else math.inf
        )
        z = _truncated_standard_normal(key, lo, hi, shape, dtype)
        return self.median * jnp.exp(self.sigma * z)


@dataclasses.dataclass(frozen=True)
class Normal(AbstractDistribution):
    """Normal with a mean and SD, truncated to ``[lower, upper]``.

    Attributes:
        mean: Mean (before truncation).
        sd: Standard deviation.
        lower: Lower truncation bound.
        upper: Upper truncation bound.
    """

    mean: float
    sd: float
    lower: float = -math.inf
    upper: float = math.inf

    def sample(self, key, shape=(), dtype=float):
        """Draw samples of the given shape."""
        if self.sd == 0.0:
            return jnp.full(shape, self.mean, dtype)
        lo = (self.lower - self.mean) / self.sd
        hi = (self.upper - self.mean) / self.sd
        z = _truncated_standard_normal(key, lo, hi, shape, dtype)
        return self.mean + self.sd * z


@dataclasses.dataclass(frozen=True)
class Uniform(AbstractDistribution):
    """Uniform on ``[low, high]``.

    Attributes:
        low: Lower end.
        high: Upper end.
    """

    low: float
    high: float

    def sample(self, key, shape=(), dtype=float):
        """Draw samples of the given shape."""
        return jax.random.uniform(key, shape, dtype, self.low, self.high)
