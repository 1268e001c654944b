"""Many patients' fitting problems padded to common shapes and stacked on a leading axis.

Each patient is prepared on its own (`prepare_windows`), then every array is padded to
the largest patient's shape so that the patients stack along a leading axis and one
jit-compiled, vmapped program fits them all:

- windows: extra windows copy the patient's last one with ``valid``, ``mask`` and
  ``graft_on`` False and zero rows of ``interp`` and ``session``, so they add no
  residuals (their local unknowns sit at the prior mode, 0);
- knots: ``knot_days`` goes on by ``FitModel.knot_spacing_days`` with ``knot_valid``
  False and zero ``interp`` columns (padding knots are pinned at log B = 0 by the
  prior, as within one patient);
- sensor sessions: zero one-hot columns (their calibration scores stay at 0, the prior
  mode);
- events: more (+inf time, 0 dose) events, as `_pad_events` does.

The padded patient has the same cost as the unpadded one at the corresponding point
(`embed_global`), so the stacked fit is the same problem, patient by patient.

Stacking is host-side numpy: each patient is padded and copied into preallocated
arrays (no per-patient device dispatch, no second copy of the population), and the
reading codes ``censor`` are kept as int8. At 10,000 patients × 84 day-windows × 288
readings the stacked arrays hold about 4.6 GiB (``ts`` and ``obs`` 1.9 GiB each in
float64), so `fit_population` keeps them on the host and moves one chunk of patients
at a time to the devices.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._custom_types import Array, Bool, Float
from ..data import PatientData
from ..data._sheets import sheet_entry
from ..model import Inputs
from ._config import FitModel, Prior
from ._fit import _pad_events, _transplant_day
from ._problem import Objective, PatientWindows, WindowInfo, prepare_windows

__all__ = [
    "PopulationProblem",
    "embed_global",
    "pad_patients",
    "stack_problems",
    "stack_windows_host",
]


class PopulationProblem(eqx.Module):
    """The fitting problems of several patients, padded and stacked (patients first).

    Attributes:
        windows: Every patient's `PatientWindows`, each array with a leading patient
            axis ``[N, ...]`` (windows, knots, sessions and events padded to the largest
            patient).
        model: The model configuration shared by all patients.
        prior: The priors shared by all patients.
        real: False for dummy patients added to fill a device mesh (`pad_patients`).
    """

    windows: PatientWindows
    model: FitModel
    prior: Prior
    real: Bool[Array, " patients"]

    @property
    def n_patients(self) -> int:
        """Number of stacked patients (dummies included)."""
        return int(self.real.shape[0])

    @property
    def n_params(self) -> int:
        """Number of estimated `Params` fields."""
        return len(self.prior.estimated)

    @property
    def n_knots(self) -> int:
        """Knots per patient (padded)."""
        return int(self.windows.knot_days.shape[1])

    @property
    def n_sessions(self) -> int:
        """Sensor sessions per patient (padded)."""
        return int(self.windows.session.shape[2])

    @property
    def n_global(self) -> int:
        """Length of one patient's global vector g."""
        return self.n_params + self.n_knots + 2 * self.n_sessions

    def objective(self, i: int) -> Objective:
        """The single-patient `Objective` of stacked patient ``i`` (padded shapes)."""
        windows = jax.tree.map(lambda x: x[i], self.windows)
        return Objective(windows=windows, model=self.model, prior=self.prior)


def prepare_patient(
    patient: PatientData,
    *,
    model: FitModel,
    sheet: pd.DataFrame | None = None,
    window_bucket: int = 1,
    knot_bucket: int = 1,
    host: bool = False,
) -> tuple[PatientWindows, WindowInfo]:
    """`prepare_windows` with the weight and transplant date of the patient sheet.

    Args:
        patient: The patient's record.
        model: The model configuration.
        sheet: Patient sheet (`isletfit.data.read_patients`), or None (70 kg with a
            warning, no transplant date).
        window_bucket: Pad the windows to a multiple of this.
        knot_bucket: Pad the knots to a multiple of this.
        host: Numpy arrays instead of device arrays (`prepare_windows`).

    Returns:
        The windows (events padded as `fit_patient` pads them) and host-side facts.

    Raises:
        InputError: The record cannot be fitted (no usable CGM day, ...).
    """
    _, weight, when = sheet_entry(sheet, patient.patient_id)
    windows, info = prepare_windows(
        patient,
        model=model,
        weight_kg=weight,
        transplant_day=_transplant_day(patient, when),
        window_bucket=window_bucket,
        knot_bucket=knot_bucket,
        host=host,
    )
    windows = eqx.tree_at(lambda w: w.inputs, windows, _pad_events(windows.inputs))
    return windows, info


def _pad_axis(x, n: int, axis: int, fill):
    """Pad ``x`` to length ``n`` along ``axis``: with ``fill``, or copies of the last.

    Host-side (numpy); the dtype of ``x`` is kept.
    """
    x = np.asarray(x)
    extra = n - x.shape[axis]
    if extra <= 0:
        return x
    if fill is None:
        last = np.take(x, [x.shape[axis] - 1], axis=axis)
        tail = np.repeat(last, extra, axis=axis)
    else:
        shape = list(x.shape)
        shape[axis] = extra
        tail = np.full(shape, fill, x.dtype)
    return np.concatenate([x, tail], axis=axis)


def _pad_inputs(inputs: Inputs, n_windows: int, events: dict[str, int]) -> Inputs:
    """Pad stacked window inputs: events with (+inf, 0), windows with copies."""
    pairs = {"meal": "meal_t", "bolus": "bolus_t", "basal": "basal_t"}
    out = inputs
    for amount, times in pairs.items():
        n = events[amount]
        t = _pad_axis(getattr(inputs, times), n, 1, jnp.inf)
        v = _pad_axis(getattr(inputs, amount), n, 1, 0.0)
        out = eqx.tree_at(
            lambda x, a=amount, tt=times: (getattr(x, tt), getattr(x, a)), out, (t, v)
        )
    return jax.tree.map(lambda x: _pad_axis(x, n_windows, 0, None), out)


def pad_windows(
    windows: PatientWindows,
    *,
    n_windows: int,
    n_knots: int,
    n_sessions: int,
    events: dict[str, int],
    knot_spacing_days: float,
) -> PatientWindows:
    """Pad one patient's windows to the given shapes (see the module docstring).

    Host-side: every leaf of the result is a numpy array (``censor`` as int8).

    Args:
        windows: The patient's windows (`prepare_patient`).
        n_windows: Windows after padding.
        n_knots: Knots after padding.
        n_sessions: Sensor sessions after padding.
        events: Events per window after padding: ``{"meal": ..., "bolus": ...,
            "basal": ...}``.
        knot_spacing_days: Spacing of the extra knots [day].
    """
    w = windows
    nw = n_windows

    def copy(x):
        return _pad_axis(x, nw, 0, None)

    knot_days = np.asarray(w.knot_days)
    k_now = knot_days.shape[0]
    extra_days = knot_days[-1] + knot_spacing_days * np.arange(
        1, max(n_knots - k_now, 0) + 1, dtype=knot_days.dtype
    )
    return PatientWindows(
        ts=copy(w.ts),
        obs=copy(w.obs),
        mask=_pad_axis(w.mask, nw, 0, False),
        censor=copy(np.asarray(w.censor).astype(np.int8)),  # -1, 0, +1
        t0=copy(w.t0),
        study_day=copy(w.study_day),
        graft_on=_pad_axis(w.graft_on, nw, 0, False),
        valid=_pad_axis(w.valid, nw, 0, False),
        interp=_pad_axis(_pad_axis(w.interp, n_knots, 1, 0.0), nw, 0, 0.0),
        knot_days=np.concatenate([knot_days, extra_days]),
        knot_valid=_pad_axis(w.knot_valid, n_knots, 0, False),
        slots=copy(w.slots),
        session=_pad_axis(_pad_axis(w.session, n_sessions, 1, 0.0), nw, 0, 0.0),
        inputs=_pad_inputs(w.inputs, nw, events),
    )


def stack_windows(
    windows: Sequence[PatientWindows], *, model: FitModel, prior: Prior
) -> PopulationProblem:
    """Pad prepared patients to common shapes and stack them (patients first).

    Args:
        windows: Each patient's windows (`prepare_patient`), all prepared with the
            same ``model``.
        model: The model configuration.
        prior: The priors.

    Returns:
        The `PopulationProblem` (every patient real), its arrays on the default
        device (`stack_windows_host` keeps them on the host).
    """
    host = stack_windows_host(list(windows), model=model, prior=prior)
    return eqx.tree_at(
        lambda p: (p.windows, p.real),
        host,
        (jax.tree.map(jnp.asarray, host.windows), jnp.asarray(host.real)),
    )


#: Patients copied between two returns of freed heap memory to the system.
_TRIM_EVERY = 256


def _return_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``).

    The prepared patients' arrays are freed as they are copied into the stack, but
    glibc keeps freed blocks of this size in its heap, so the process's resident
    memory would hold both the stack and every prepared patient until the end.
    Elsewhere than glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def stack_windows_host(
    windows: list[PatientWindows | None],
    *,
    model: FitModel,
    prior: Prior,
    n_total: int | None = None,
    consume: bool = False,
) -> PopulationProblem:
    """`stack_windows` into host-side numpy arrays, with room for dummy patients.

    Each patient is padded and copied into arrays allocated once for the whole
    population. With ``consume`` each patient's own arrays are dropped once copied
    and the freed memory handed back to the system as the stack fills, so the peak is
    about the larger of the prepared patients and the stack, not both (measured:
    6.6 GiB for a 5.2 GiB stack of 10,000 patients, 11.6 GiB without the hand-back).

    Args:
        windows: Each patient's windows (`prepare_patient`).
        model: The model configuration.
        prior: The priors.
        n_total: Stacked patients; the ones after ``len(windows)`` are dummies (as
            `pad_patients` adds them). Default ``len(windows)``.
        consume: Set each entry of ``windows`` to None once it is copied (the caller's
            list; frees each patient's own arrays as the stack fills).

    Returns:
        The `PopulationProblem`, every leaf a numpy array.

    Raises:
        ValueError: No patient, or ``n_total`` below the number of patients.
    """
    n = len(windows)
    n_total = n if n_total is None else int(n_total)
    if n == 0:
        raise ValueError("stack_windows needs at least one patient")
    if n_total < n:
        raise ValueError(f"stack_windows_host: n_total {n_total} < {n} patients")
    shapes = {
        "n_windows": max(w.ts.shape[0] for w in windows),
        "n_knots": max(w.knot_days.shape[0] for w in windows),
        "n_sessions": max(w.session.shape[1] for w in windows),
        "events": {
            "meal": max(w.inputs.meal_t.shape[1] for w in windows),
            "bolus": max(w.inputs.bolus_t.shape[1] for w in windows),
            "basal": max(w.inputs.basal_t.shape[1] for w in windows),
        },
    }
    stacked, treedef = None, None
    for i in range(n):
        leaves, treedef = jax.tree.flatten(
            pad_windows(windows[i], knot_spacing_days=model.knot_spacing_days, **shapes)
        )
        if consume:
            windows[i] = None
            if i % _TRIM_EVERY == _TRIM_EVERY - 1:
                _return_freed_memory()
        if stacked is None:
            stacked = [np.empty((n_total, *x.shape), x.dtype) for x in leaves]
        for out, x in zip(stacked, leaves, strict=True):
            out[i] = x
    problem = PopulationProblem(
        windows=jax.tree.unflatten(treedef, stacked),
        model=model,
        prior=prior,
        real=np.arange(n_total) < n,
    )
    if n_total > n:
        _fill_dummies(problem.windows, n)
    return problem


def _fill_dummies(windows: PatientWindows, start: int) -> None:
    """Make stacked patients ``start:`` dummies, in place (numpy leaves).

    A dummy copies the first patient with every reading masked and every window
    invalid: it contributes nothing but its priors.
    """
    for x in jax.tree.leaves(windows):
        x[start:] = x[0]
    for x in (windows.mask, windows.valid, windows.graft_on):
        x[start:] = False


def stack_problems(
    patients: Sequence[PatientData],
    *,
    model: FitModel | None = None,
    prior: Prior = Prior(),
    sheet: pd.DataFrame | None = None,
) -> tuple[PopulationProblem, tuple[WindowInfo, ...]]:
    """Prepare several patients and stack their problems for one vmapped fit.

    Args:
        patients: The patients' records (`isletfit.data.read`).
        model: What is fitted (`FitModel`; default ``FitModel()``).
        prior: Priors (`Prior`).
        sheet: Patient sheet (`isletfit.data.read_patients`): weight and transplant
            date of each patient, or None.

    Returns:
        ``(problem, infos)``: the stacked `PopulationProblem` and each patient's
        `WindowInfo`, in the order of ``patients``.

    Raises:
        InputError: A patient's record cannot be fitted (`fit_population` instead
            reports such a patient and fits the others).
    """
    model = FitModel() if model is None else model
    prepared = [
        prepare_patient(p, model=model, sheet=sheet, host=True) for p in patients
    ]
    problem = stack_windows([w for w, _ in prepared], model=model, prior=prior)
    return problem, tuple(info for _, info in prepared)


def pad_patients(problem: PopulationProblem, multiple: int) -> PopulationProblem:
    """Add dummy patients so that the patient count is a multiple of ``multiple``.

    Host-side: the result's arrays are numpy.

    A dummy copies the first patient with every reading masked and every window
    invalid (``real`` False): it contributes nothing but its priors, and is left out of
    the population estimates.
    """
    n = problem.n_patients
    extra = -n % multiple
    if extra == 0:
        return problem
    windows = jax.tree.map(
        lambda x: np.concatenate([x, np.empty((extra, *x.shape[1:]), x.dtype)]),
        jax.tree.map(np.asarray, problem.windows),
    )
    _fill_dummies(windows, n)
    real = np.concatenate([np.asarray(problem.real), np.zeros(extra, bool)])
    return eqx.tree_at(lambda p: (p.windows, p.real), problem, (windows, real))


def embed_global(
    g: Float[Array, " ng"],
    *,
    n_params: int,
    n_knots: tuple[int, int],
    n_sessions: tuple[int, int],
) -> Float[Array, " ng_padded"]:
    """A patient's global vector in the padded layout (padding knots and scores 0).

    Args:
        g: ``[theta, log B knots, calibration scores]`` of the unpadded patient.
        n_params: Estimated parameters p.
        n_knots: Knots ``(unpadded, padded)``.
        n_sessions: Sensor sessions ``(unpadded, padded)``.
    """
    p = n_params
    k0, k1 = n_knots
    s0, s1 = n_sessions
    theta, knots, cal = g[:p], g[p : p + k0], g[p + k0 :]
    if g.shape[0] != p + k0 + 2 * s0:
        raise ValueError(
            f"embed_global: g has {g.shape[0]} entries, expected {p + k0 + 2 * s0}"
        )
    return jnp.concatenate(
        [
            theta,
            jnp.pad(knots, (0, k1 - k0)),
            jnp.pad(cal, (0, 2 * (s1 - s0))),
        ]
    )
