"""Exogenous inputs of one window: meals, insulin boluses and basal insulin rates."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float

__all__ = ["PMOL_PER_U", "Inputs", "Schedule"]

#: Insulin: 1 U = 6000 pmol (UVA/Padova convention; Dalla Man et al. 2007).
PMOL_PER_U = 6000.0
_MG_PER_G = 1000.0
_MIN_PER_H = 60.0


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_weight(w) -> None:
    """Body weight: a positive scalar [kg] (its value checked where concrete)."""
    if w.ndim != 0:
        raise ValueError(f"Inputs.weight_kg must be a scalar [kg], got {w.shape}")
    if _is_concrete(w) and not (np.isfinite(w) and float(w) > 0):
        raise ValueError(f"Inputs.weight_kg must be > 0 [kg], got {float(w)}")


def _check_shapes(name_t: str, t, name_v: str, v, unit: str) -> None:
    """An event series' times and amounts: 1-D, of the same length."""
    if t.ndim != 1:
        raise ValueError(f"Inputs.{name_t} must be 1-D [min], got shape {t.shape}")
    if v.ndim != 1:
        raise ValueError(f"Inputs.{name_v} must be 1-D [{unit}], got shape {v.shape}")
    if t.shape != v.shape:
        raise ValueError(
            f"Inputs.{name_t} and Inputs.{name_v} must have the same length, got "
            f"{t.shape[0]} and {v.shape[0]}"
        )


def _check_events(name_t: str, tn, name_v: str, vn, unit: str, *, allow_inf=True):
    """Validate one concrete event series (host arrays; see `_events`)."""
    if np.isnan(tn).any() or (np.isinf(tn) & ((tn < 0) | (vn != 0))).any():
        i = int(np.flatnonzero(np.isnan(tn) | np.isinf(tn))[0])
        raise ValueError(
            f"Inputs.{name_t}[{i}] is {tn[i]}: times must be finite [min] (+inf is "
            "allowed only as padding with a zero amount)"
        )
    if not allow_inf and np.isinf(tn).any():
        raise ValueError(f"Inputs.{name_t} must be finite [min]")
    if (np.diff(tn) < 0).any():
        i = int(np.flatnonzero(np.diff(tn) < 0)[0]) + 1
        raise ValueError(
            f"Inputs.{name_t} must be sorted ascending [min]; element {i} "
            f"({tn[i]}) comes before element {i - 1} ({tn[i - 1]})"
        )
    if not np.isfinite(vn).all() or (vn < 0).any():
        i = int(np.flatnonzero(~np.isfinite(vn) | (vn < 0))[0])
        raise ValueError(
            f"Inputs.{name_v}[{i}] is {vn[i]}: must be finite and >= 0 [{unit}]"
        )


def _events(
    name_t: str, times, name_v: str, values, unit: str, *, allow_inf: bool = True
) -> tuple[Array, Array]:
    """Validate one event series (1-D, same length, sorted, finite, non-negative)."""
    t = jnp.asarray(times if times is not None else [], dtype=float)
    v = jnp.asarray(values if values is not None else [], dtype=float)
    _check_shapes(name_t, t, name_v, v, unit)
    if _is_concrete(t) and _is_concrete(v):
        _check_events(
            name_t, np.asarray(t), name_v, np.asarray(v), unit, allow_inf=allow_inf
        )
    return t, v


def _model_units(weight_kg, carbs_g, bolus_u, basal_u_per_h):
    """Carbohydrate [mg/kg], bolus [pmol/kg] and basal [pmol/kg/min] (numpy or JAX)."""
    return (
        carbs_g * _MG_PER_G / weight_kg,
        bolus_u * PMOL_PER_U / weight_kg,
        basal_u_per_h * PMOL_PER_U / _MIN_PER_H / weight_kg,
    )


class Inputs(eqx.Module):
    """Meals, insulin boluses and basal insulin of one window, in model units.

    Construct from the units a clinic records (grams, units, units per hour) and the
    body weight; the conversion to model units happens once, here:
    carbohydrate [g] -> [mg/kg], bolus [U] -> [pmol/kg], basal [U/h] -> [pmol/kg/min]
    (1 U = 6000 pmol).

    Meals and boluses are instantaneous events: a meal puts its carbohydrate into the
    stomach and a bolus its insulin into the first subcutaneous compartment at exactly
    its time (the solver steps onto every event). The basal rate is piecewise constant:
    ``basal_u_per_h[k]`` holds from ``basal_times[k]`` until the next basal time, and the
    rate before the first basal time is zero.

    Event arrays may be padded for ``vmap`` with time ``+inf`` and amount ``0`` (see
    `Inputs.stack`).

    Args:
        weight_kg: Body weight [kg].
        meal_times: Meal times [min] (ascending).
        meal_carbs_g: Carbohydrate of each meal [g].
        bolus_times: Bolus times [min] (ascending).
        bolus_u: Bolus doses [U].
        basal_times: Start times of the basal segments [min] (ascending).
        basal_u_per_h: Basal rate of each segment [U/h].

    Raises:
        ValueError: A field is not 1-D, lengths differ, times are unsorted or NaN, or an
            amount is negative; the message names the field.

    Attributes:
        meal_t: Meal times [min].
        meal: Meal carbohydrate [mg/kg].
        bolus_t: Bolus times [min].
        bolus: Bolus insulin [pmol/kg].
        basal_t: Basal segment start times [min].
        basal: Basal rates [pmol/kg/min].
        weight_kg: Body weight used for the conversion [kg].
    """

    meal_t: Float[Array, " meals"]
    meal: Float[Array, " meals"]
    bolus_t: Float[Array, " boluses"]
    bolus: Float[Array, " boluses"]
    basal_t: Float[Array, " segments"]
    basal: Float[Array, " segments"]
    weight_kg: Float[Array, ""]

    def __init__(
        self,
        *,
        weight_kg: float | ArrayLike,
        meal_times: ArrayLike | Sequence[float] = (),
        meal_carbs_g: ArrayLike | Sequence[float] = (),
        bolus_times: ArrayLike | Sequence[float] = (),
        bolus_u: ArrayLike | Sequence[float] = (),
        basal_times: ArrayLike | Sequence[float] = (),
        basal_u_per_h: ArrayLike | Sequence[float] = (),
    ):
        w = jnp.asarray(weight_kg, dtype=float)
        _check_weight(w)
        mt, mg = _events("meal_times", meal_times, "meal_carbs_g", meal_carbs_g, "g")
        bt, bu = _events("bolus_times", bolus_times, "bolus_u", bolus_u, "U")
        st, su = _events(
            "basal_times", basal_times, "basal_u_per_h", basal_u_per_h, "U/h"
        )
        self.meal_t, self.bolus_t, self.basal_t = mt, bt, st
        self.meal, self.bolus, self.basal = _model_units(w, mg, bu, su)
        self.weight_kg = w

    # ------------------------------------------------------------------ evaluation
    def schedule(self, t_start: Float[ArrayLike, ""] = -jnp.inf) -> Schedule:
        """Precomputed look-up tables for a solve that starts at ``t_start`` [min]."""
        return Schedule(self, t_start)

    def basal_rate(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Basal insulin rate in effect at time ``t`` [pmol/kg/min] (0 before the first)."""
        return self.schedule().basal_rate(t)

    def last_meal(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Carbohydrate of the last meal at or before ``t`` [mg/kg] (0 before any)."""
        return self.schedule().last_meal(t)

    def doses_between(
        self, t_start: Float[ArrayLike, ""], t: Float[ArrayLike, ""]
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """Meal [mg/kg] and bolus [pmol/kg] given at times in ``[t_start, t]``."""
        meal, bolus = self.schedule(t_start).doses(t)
        return jnp.maximum(meal, 0.0), jnp.maximum(bolus, 0.0)

    def event_times(self) -> Float[Array, " events"]:
        """All times where the inputs jump (meals, boluses, basal changes), sorted [min]."""
        return jnp.sort(jnp.concatenate([self.meal_t, self.bolus_t, self.basal_t]))

    def total_insulin_u(
        self, t0: Float[ArrayLike, ""], t1: Float[ArrayLike, ""]
    ) -> Float[Array, ""]:
        """Exogenous insulin delivered in ``[t0, t1)`` [U] (boluses plus basal)."""
        in_window = (self.bolus_t >= t0) & (self.bolus_t < t1)
        bolus = jnp.sum(jnp.where(in_window, self.bolus, 0.0))
        ends = jnp.concatenate([self.basal_t[1:], jnp.full((1,), jnp.inf)])
        overlap = jnp.clip(jnp.minimum(ends, t1) - jnp.maximum(self.basal_t, t0), 0.0)
        overlap = jnp.where(jnp.isfinite(self.basal_t), overlap, 0.0)
        basal = jnp.sum(overlap * self.basal)
        return (bolus + basal) * self.weight_kg / PMOL_PER_U

    # ------------------------------------------------------------------ batching
    @staticmethod
    def stack(inputs: Sequence[Inputs]) -> Inputs:
        """Stack windows along a new leading axis, padding events with (+inf, 0).

        Args:
            inputs: Windows to stack (any numbers of events).

        Returns:
            One `Inputs` whose leaves have shape ``[windows, max_events]``.
        """
        if len(inputs) == 0:
            raise ValueError("Inputs.stack needs at least one Inputs")

        def pad(name, fill):
            arrays = [getattr(x, name) for x in inputs]
            n = max(a.shape[-1] for a in arrays)
            return jnp.stack(
                [jnp.pad(a, (0, n - a.shape[-1]), constant_values=fill) for a in arrays]
            )

        out = eqx.tree_at(
            lambda x: x.weight_kg, inputs[0], jnp.stack([x.weight_kg for x in inputs])
        )
        for name, fill in [
            ("meal_t", jnp.inf),
            ("meal", 0.0),
            ("bolus_t", jnp.inf),
            ("bolus", 0.0),
            ("basal_t", jnp.inf),
            ("basal", 0.0),
        ]:
            out = eqx.tree_at(
                lambda x, name=name: getattr(x, name), out, pad(name, fill)
            )
        return out


def stack_host(weight_kg: float, windows: Sequence[dict[str, np.ndarray]]) -> Inputs:
    """Stacked `Inputs` of many windows built on the host, as numpy arrays.

    The same validation, units and padding as ``Inputs.stack([Inputs(...), ...])``
    (events padded with (+inf, 0) to the most of any window), without a device
    operation per window: preparing thousands of patients for a population fit then
    costs milliseconds each, also where the default device is a GPU.

    Args:
        weight_kg: Body weight [kg] (the same for every window).
        windows: Each window's keyword arguments of `Inputs` (``meal_times``,
            ``meal_carbs_g``, ``bolus_times``, ``bolus_u``, ``basal_times``,
            ``basal_u_per_h``; missing ones empty).

    Returns:
        One `Inputs` with numpy leaves ``[windows, events]`` (``weight_kg``
        ``[windows]``).

    Raises:
        ValueError: As `Inputs` (the message names the field).
    """
    if len(windows) == 0:
        raise ValueError("stack_host needs at least one window")
    w = np.asarray(weight_kg, float)
    _check_weight(w)
    w = float(w)
    series = {
        "meal": ("meal_times", "meal_carbs_g", "g"),
        "bolus": ("bolus_times", "bolus_u", "U"),
        "basal": ("basal_times", "basal_u_per_h", "U/h"),
    }
    fields: dict[str, np.ndarray] = {}
    for kind, (name_t, name_v, unit) in series.items():
        times, amounts = [], []
        for window in windows:
            t = np.asarray(window.get(name_t, ()), float)
            v = np.asarray(window.get(name_v, ()), float)
            _check_shapes(name_t, t, name_v, v, unit)
            _check_events(name_t, t, name_v, v, unit)
            times.append(t)
            amounts.append(v)
        n = max(t.size for t in times)
        t_all = np.full((len(windows), n), np.inf)
        v_all = np.zeros((len(windows), n))
        for k, (t, v) in enumerate(zip(times, amounts, strict=True)):
            t_all[k, : t.size], v_all[k, : v.size] = t, v
        fields[f"{kind}_t"], fields[kind] = t_all, v_all
    fields["meal"], fields["bolus"], fields["basal"] = _model_units(
        w, fields["meal"], fields["bolus"], fields["basal"]
    )
    fields["weight_kg"] = np.full(len(windows), w)
    out = object.__new__(Inputs)  # fields set as they are: no device operation
    for name, value in fields.items():
        object.__setattr__(out, name, value)
    return out


def _with_zero(x: Array) -> Array:
    return jnp.concatenate([jnp.zeros((1,), x.dtype), x])


class Schedule(eqx.Module):
    """Look-up tables of one window's `Inputs`, built once per solve (the hot path).

    Cumulative doses and zero-padded rates are computed here, once, so that every
    vector-field evaluation costs three binary searches and no allocation. Has the same
    look-up methods as `Inputs`, so `vector_field` accepts either.

    Args:
        inputs: The window's inputs.
        t_start: Start of the solve [min]; `doses` counts events from here on.

    Attributes:
        meal_t: Meal times [min].
        meal_ext: 0 followed by the meal sizes [mg/kg].
        meal_cum: 0 followed by the cumulative meal sizes [mg/kg].
        bolus_t: Bolus times [min].
        bolus_cum: 0 followed by the cumulative boluses [pmol/kg].
        basal_t: Basal segment starts [min].
        basal_ext: 0 followed by the basal rates [pmol/kg/min].
        meal_base: Cumulative meal before ``t_start`` [mg/kg].
        bolus_base: Cumulative bolus before ``t_start`` [pmol/kg].
    """

    meal_t: Float[Array, " meals"]
    meal_ext: Float[Array, " meals+1"]
    meal_cum: Float[Array, " meals+1"]
    bolus_t: Float[Array, " boluses"]
    bolus_cum: Float[Array, " boluses+1"]
    basal_t: Float[Array, " segments"]
    basal_ext: Float[Array, " segments+1"]
    meal_base: Float[Array, ""]
    bolus_base: Float[Array, ""]

    def __init__(self, inputs: Inputs, t_start: Float[ArrayLike, ""] = -jnp.inf):
        self.meal_t = inputs.meal_t
        self.meal_ext = _with_zero(inputs.meal)
        self.meal_cum = _with_zero(jnp.cumsum(inputs.meal))
        self.bolus_t = inputs.bolus_t
        self.bolus_cum = _with_zero(jnp.cumsum(inputs.bolus))
        self.basal_t = inputs.basal_t
        self.basal_ext = _with_zero(inputs.basal)
        self.meal_base = self.meal_cum[
            jnp.searchsorted(self.meal_t, t_start, side="left")
        ]
        self.bolus_base = self.bolus_cum[
            jnp.searchsorted(self.bolus_t, t_start, side="left")
        ]

    def basal_rate(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Basal rate in effect at ``t`` [pmol/kg/min]."""
        return self.basal_ext[jnp.searchsorted(self.basal_t, t, side="right")]

    def last_meal(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Size of the last meal at or before ``t`` [mg/kg]."""
        return self.meal_ext[jnp.searchsorted(self.meal_t, t, side="right")]

    def doses(
        self, t: Float[ArrayLike, ""]
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """Meal [mg/kg] and bolus [pmol/kg] given from ``t_start`` up to ``t``."""
        meal = self.meal_cum[jnp.searchsorted(self.meal_t, t, side="right")]
        bolus = self.bolus_cum[jnp.searchsorted(self.bolus_t, t, side="right")]
        return meal - self.meal_base, bolus - self.bolus_base
