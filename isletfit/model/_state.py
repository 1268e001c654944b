"""The named state of the fast (minutes) subsystem."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float

__all__ = ["State"]


class State(eqx.Module):
    """State of one person's fast glucose–insulin system (14 compartments).

    Leaves are scalars for one time point, or carry leading axes (times, windows,
    patients) in simulation output.

    Attributes:
        qsto1: Solid carbohydrate in the stomach [mg/kg].
        qsto2: Liquid carbohydrate in the stomach [mg/kg].
        qgut: Carbohydrate in the gut [mg/kg].
        isc1: Subcutaneous insulin, first compartment [pmol/kg].
        isc2: Subcutaneous insulin, second compartment [pmol/kg].
        ip: Plasma insulin mass [pmol/kg].
        il: Liver insulin mass [pmol/kg].
        x: Remote (interstitial) insulin acting on glucose utilisation [pmol/L].
        i1: First delay compartment of the insulin signal on glucose production [pmol/L].
        id: Delayed insulin acting on glucose production [pmol/L].
        gp: Plasma glucose mass [mg/kg].
        gt: Tissue glucose mass [mg/kg].
        y: Second-phase graft secretion [pmol/kg/min].
        gs: Interstitial (CGM-sensed) glucose concentration [mg/dL].
    """

    qsto1: Float[Array, "..."]
    qsto2: Float[Array, "..."]
    qgut: Float[Array, "..."]
    isc1: Float[Array, "..."]
    isc2: Float[Array, "..."]
    ip: Float[Array, "..."]
    il: Float[Array, "..."]
    x: Float[Array, "..."]
    i1: Float[Array, "..."]
    id: Float[Array, "..."]
    gp: Float[Array, "..."]
    gt: Float[Array, "..."]
    y: Float[Array, "..."]
    gs: Float[Array, "..."]

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Field names in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_array(self) -> Float[Array, "... 14"]:
        """Stack the compartments along a new last axis."""
        return jnp.stack([getattr(self, n) for n in self.names()], axis=-1)

    @classmethod
    def from_array(cls, array: Float[Array, "... 14"]) -> State:
        """Inverse of `to_array`."""
        return cls(*(array[..., i] for i in range(len(cls.names()))))

    def map(self, fn) -> State:
        """Apply ``fn`` to every compartment."""
        return jax.tree.map(fn, self)
