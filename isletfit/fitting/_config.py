"""Configuration of a patient fit: the model, the priors, the noise model (strategy objects)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import numpy as np

from ..model import ExponentialRK4, FixedGrid, Params

__all__ = [
    "EXPONENTIAL_GRID",
    "POPULATION_LOG_SD",
    "FitModel",
    "GaussianNoise",
    "LatentMeals",
    "LoggedMeals",
    "Prior",
    "StudentTNoise",
]


#: Between-patient variability of `Params` fields: SD of log(value) [-], estimated as a
#: quarter of the log of the max/min ratio over the ten UVA/Padova adults as
#: distributed in simglucose 0.2.11 (see reference/domain.md §3.2), and for the
#: absorption rates from the ReplayBG priors (Cappon et al. 2023: log-normal SDs of
#: kd 0.62, ka2 0.43, kabs 1.44, kempt 0.71). Fields not listed are the same in every
#: patient of those populations (e.g. f = 0.9, Fsnc = 1, HEb = 0.6) or define B itself
#: (the secretion curve), and are fixed.
POPULATION_LOG_SD: dict[str, float] = {
    "vmx": 0.46,
    "kp1": 0.18,
    "kp2": 0.30,
    "kp3": 0.41,
    "p2u": 0.29,
    "ki": 0.43,
    "vm0": 0.37,
    "km0": 0.085,
    "vg": 0.07,
    "vi": 0.20,
    "m4": 0.20,
    "tau_sensor": 0.26,
    "kabs": 0.70,
    "kmax": 0.30,
    "kmin": 0.30,
    "kd": 0.62,
    "ka2": 0.43,
}


class GaussianNoise(eqx.Module):
    """Gaussian CGM error with one SD per patient, estimated (profiled) from the fit.

    Attributes:
        ar1: Model serial correlation of the error between consecutive readings as an
            AR(1) process (coefficient estimated like the SD). CGM error is strongly
            autocorrelated (sensor AR(2) noise, calibration drift, model misfit that
            lasts hours); treating it as independent overstates the information in the
            data and gives bands that are too narrow.
    """

    ar1: bool = True


class StudentTNoise(eqx.Module):
    """Student-t CGM error (robust to sensor artefacts), fitted by iterative reweighting.

    Attributes:
        df: Degrees of freedom (smaller = heavier tails).
        ar1: As for `GaussianNoise`.
    """

    df: float = 4.0
    ar1: bool = True


class LoggedMeals(eqx.Module):
    """Use the carbohydrate records as they are (complete meal logs)."""


class LatentMeals(eqx.Module):
    """Estimate unannounced meals as latent inputs, on top of any logged meals.

    Each window gets candidate meal slots every ``slot_min`` minutes between
    ``first_hour`` and ``last_hour`` of its day (and of the warm-up before it); each
    slot's carbohydrate is exp(θ) [g] with an exponential (sparsity) prior of mean
    ``prior_mean_g``, so most slots shrink to nothing and a few take the meals. The
    prior mean is that of a real meal (50 g): a smaller one taxes carbohydrate so much
    that the fit prefers small meals and a weak graft (B biased low on synthetic
    patients); at 50 g the bands covered the true B with the logs withheld.

    Attributes:
        slot_min: Spacing of candidate meal times [min].
        first_hour: First candidate clock hour of the day [h].
        last_hour: Last candidate clock hour of the day [h].
        prior_mean_g: Mean of the exponential prior on a slot's carbohydrate [g].
        init_g: Starting carbohydrate of every slot [g].
    """

    slot_min: float = 60.0
    first_hour: float = 5.0
    last_hour: float = 23.0
    prior_mean_g: float = 50.0
    init_g: float = 10.0


class Prior(eqx.Module):
    """Priors of a patient fit (all on log scales, around the model's values).

    Attributes:
        estimated: Names of the `Params` fields estimated per patient (the rest stay at
            the model's values). The default set comes from the identifiability
            analysis in ``docs/identifiability.md``.
        log_sd: Prior SD of log(value) for each estimated field, in the same order: the
            between-patient variability `POPULATION_LOG_SD` (a log-SD of 0.3 is about
            ±30 %).
        graft_median: Prior median of B on the first knot after infusion [-].
        graft_log_sd: Prior SD of log B on that knot [-].
        graft_rw_sigma: Random-walk scale of log B between knots [1/sqrt(day)].
        initial_glucose_log_sd: Prior SD of each window's log initial-glucose offset
            from the fasting steady state [-].
        daily_sensitivity_log_sd: Prior SD of each day-window's log factor on insulin
            sensitivity ``vmx`` (day-to-day variation of insulin sensitivity, about
            30 % in people with type 1 diabetes; Visentin et al. 2015), so that it is
            not mistaken for a change of the graft; 0 turns it off [-].
        daily_meal_absorption_log_sd: Prior SD of each day's log factor on the meal
            absorption rates ``kmax``, ``kmin``, ``kabs`` (meal composition varies);
            0 turns it off [-].
        daily_insulin_absorption_log_sd: Prior SD of each day's log factor on the
            subcutaneous absorption rates ``kd``, ``ka1``, ``ka2`` (within-person
            variability of insulin absorption, about 25 %; Heinemann 2002); 0 turns it
            off [-].
        sensor_gain_log_sd: Prior SD of each sensor session's log gain, CGM = gain ×
            interstitial glucose + offset [-]. Factory-calibrated sensors read
            systematically high or low for their whole wear (Dexcom G6: gain 0.94 ±
            0.04 and offset 6 ± 4 mg/dL per sensor; Vettoretti et al. 2019). Unmodelled,
            such a bias is read as a change of the graft: on synthetic patients the
            95 % band covered the true B on only 42 % of visit days; 0 turns it off.
        sensor_offset_sd: Prior SD of each sensor session's offset [mg/dL].
    """

    estimated: tuple[str, ...] = ("vmx", "kp1", "kabs", "kmax", "kmin", "kd")
    log_sd: tuple[float, ...] = (0.46, 0.18, 0.70, 0.30, 0.30, 0.62)
    graft_median: float = 0.3
    graft_log_sd: float = 2.0
    graft_rw_sigma: float = 0.15
    initial_glucose_log_sd: float = 0.3
    daily_sensitivity_log_sd: float = 0.3
    daily_meal_absorption_log_sd: float = 0.3
    daily_insulin_absorption_log_sd: float = 0.25
    sensor_gain_log_sd: float = 0.06
    sensor_offset_sd: float = 6.0

    def __check_init__(self):
        if len(self.estimated) != len(self.log_sd):
            raise ValueError(
                "Prior.estimated and Prior.log_sd must have the same length, got "
                f"{len(self.estimated)} and {len(self.log_sd)}"
            )
        names = {f.name for f in dataclasses.fields(Params)}
        unknown = [n for n in self.estimated if n not in names]
        if unknown:
            raise ValueError(f"Prior.estimated: unknown Params fields {unknown}")
        if any(s <= 0 for s in self.log_sd):
            raise ValueError("Prior.log_sd must be > 0")


#: One `ExponentialRK4` step per 5-min CGM interval: the fits' default grid.
EXPONENTIAL_GRID = FixedGrid(max_step=5.0, solver=ExponentialRK4())


class FitModel(eqx.Module):
    """What is fitted: the model, its time discretisation and the observation model.

    Attributes:
        params: Model parameters: fixed values, and prior medians of the estimated ones.
        knot_spacing_days: Spacing of the log-B knots of the graft trajectory [day].
        step_min: CGM grid [min] (5 for Dexcom/Libre 3, 15 for Libre 1/2 history).
        warmup_min: Minutes simulated before each day-window starts, from a consistent
            state, so that the evening before carries over [min]. The default 8 h
            (from 16:00) includes the previous dinner and its bolus; with 3 h the
            missing insulin-on-board biased glucose production and B by a few percent
            on synthetic patients.
        min_coverage: Fraction of a day's CGM slots needed to use that day [-].
        sensor_days: Longest wear of one CGM sensor [day]: a new sensor session (with
            its own calibration) starts after this many days, after a missing day, or
            on a day whose readings resume after a gap of ``sensor_change_gap_min``
            (the warm-up of a new sensor).
        sensor_change_gap_min: Gap in the readings taken as a sensor change [min].
        robust_band: Widen the Laplace covariance where the day-windows' scores scatter
            more than the noise model predicts (`robust_covariance`); False gives the
            plain Laplace approximation.
        rtol: Relative (and absolute) tolerance of the adaptive ODE solver (with
            ``grid=None``).
        grid: How each day-window is integrated: a `FixedGrid` runs fixed steps on a
            grid holding every input event in one fused loop (`simulate_grid`): the
            benchmark patient's fit 5× faster on the CPU than with the adaptive
            solver, and the only way that fills a GPU. The default, `EXPONENTIAL_GRID`, takes one `ExponentialRK4`
            step per 5-min CGM interval (the insulin exchange, gut absorption and
            sensor lag solved exactly): CGM within about 0.1 mg/dL of a tight
            adaptive solve, a patient's fit within 0.02 of the adaptive fit in every
            log parameter, stable to B ≥ 10, and a Jacobian about 1.8× cheaper than
            with ``FixedGrid()`` (Bosh3 at 1.25 min: within 0.02 mg/dL, stable to
            B ≈ 1.7, the default before 2026-11-29; benchmarks/RESULTS.md). A trial
            point whose steps are unstable fails and the optimiser rejects it. None:
            the adaptive Tsit5 solver with tolerance ``rtol`` and at most
            ``max_steps`` steps.
        jacobian_dtype: Precision of the forward-mode tangents of the ODE solves,
            which make up the Gauss–Newton matrix and the gradient's Jacobian; the
            residuals, the cost and so the optimum stay in the unknowns' precision
            (`isletfit.fitting._fit._window_jacobians`). ``np.dtype("float32")``
            keeps a relative error of about 1e-5 in the Gauss–Newton blocks (log B
            within 5e-5 of the float64 fit) but adds a full-precision forward solve
            to every Jacobian and about 3 s of compilation. It made a Jacobian of 88
            day-windows 1.4× faster on one CPU core with one tangent per unknown;
            with one per field group (2026-11-29) 1.03–1.06× for 8 patients at
            once (benchmarks/RESULTS.md). None (default): the unknowns' precision.
        max_steps: Adaptive solver steps allowed per day-window (a day takes
            500–1000); a trial point that needs more is rejected by the optimiser
            instead of stalling it.
        noise: `GaussianNoise` or `StudentTNoise`.
        meals: `LoggedMeals` or `LatentMeals`.
        low_mg_dl: Device low limit of censored 'Low' readings [mg/dL].
        high_mg_dl: Device high limit of censored 'High' readings [mg/dL].
    """

    params: Params = eqx.field(default_factory=Params)
    knot_spacing_days: float = 7.0
    step_min: float = 5.0
    warmup_min: float = 480.0
    min_coverage: float = 0.5
    sensor_days: float = 10.0
    sensor_change_gap_min: float = 100.0
    robust_band: bool = True
    rtol: float = 1e-5
    grid: FixedGrid | None = EXPONENTIAL_GRID
    jacobian_dtype: np.dtype | None = None
    max_steps: int = 4096
    noise: GaussianNoise | StudentTNoise = GaussianNoise()
    meals: LoggedMeals | LatentMeals = LoggedMeals()
    low_mg_dl: float = 40.0
    high_mg_dl: float = 400.0

    def __check_init__(self):
        if self.grid is not None and self.rtol != 1e-5:
            raise ValueError(
                f"FitModel.rtol={self.rtol} sets the adaptive solver's tolerance, but "
                "grid is a FixedGrid; pass grid=None for the adaptive solver, or set "
                "the grid's step (FixedGrid(max_step=...)) instead"
            )
