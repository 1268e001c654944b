"""The ``isletfit`` command: a thin layer over the Python API.

Each sub-command has an ``_add_<name>`` function that declares its arguments and a
``_run_<name>`` function that does the work. Errors of the package's own type are
printed as one line (file, line, field, what was expected) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from ._errors import IsletfitError

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isletfit",
        description="Estimate islet-graft function over time from CGM records.",
    )
    from . import __version__

    parser.add_argument(
        "--version", action="version", version=f"isletfit {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _enable_float64() -> None:
    """The command line is a script: it runs in float64 (the library never sets this)."""
    import jax

    jax.config.update("jax_enable_x64", True)


def _cores_as_devices() -> None:
    """Expose the CPU's cores as JAX devices, so that fits can use all of them.

    XLA runs one device's program on one core; `fit_patient` splits a patient's
    day-windows over the devices of a mesh (`_window_mesh`). A script's choice, made
    before JAX starts: left alone when the user chose the CPU devices
    (``JAX_NUM_CPU_DEVICES``, or ``--xla_force_host_platform_device_count`` in
    ``XLA_FLAGS``) or when JAX has already started (``main`` called from a session).
    """
    import os

    import jax

    chosen = "JAX_NUM_CPU_DEVICES" in os.environ or (
        "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    )
    if chosen:
        return
    try:
        jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    except RuntimeError:  # the backend is running: keep its devices
        pass


def _window_mesh():
    """A mesh over the CPU devices for splitting a fit's windows, or None.

    None on an accelerator (one device there is the fast choice for one patient) and
    with a single CPU device.
    """
    import jax

    if jax.default_backend() != "cpu" or jax.local_device_count() < 2:
        return None
    return jax.make_mesh((jax.local_device_count(),), ("windows",))


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job on built-in data: simulate a virtual trial, fit, report",
        description=(
            "Simulate a zimislecel-like cohort of transplant recipients (known truth), "
            "write it as clinic exports, read them back, fit every patient, write the "
            "report, and print the estimated against the true graft function per visit."
        ),
    )
    p.add_argument("--out", default="isletfit-demo", help="output folder")
    p.add_argument("--patients", type=int, default=None, help="patients (default 12)")
    p.add_argument("--quick", action="store_true", help="3 patients, 2 short visits")
    p.add_argument("--seed", type=int, default=0, help="seed of the virtual trial")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from ._demo import run_demo

    _enable_float64()
    # --quick: a few short windows, where splitting costs more to compile than it saves
    if not args.quick:
        _cores_as_devices()
    console = Console(soft_wrap=True)
    with _progress(console) as progress:
        task = progress.add_task("starting", total=None)

        def on_stage(text):
            progress.update(task, description=text)

        def on_patient(pid, index, total):
            progress.update(
                task, total=total, completed=index, description=f"fitting {pid}"
            )

        result = run_demo(
            args.out,
            n_patients=args.patients,
            quick=args.quick,
            seed=args.seed,
            on_stage=on_stage,
            on_patient=on_patient,
            mesh=_window_mesh(),
        )
    table = Table(title="Graft function B per visit: estimated (95 % band) vs true")
    for title in ["patient", "visit day", "true B", "estimate", "95 % band", "covered"]:
        table.add_column(title, justify="right")
    comp = result.comparison
    for _, r in comp.iterrows():
        table.add_row(
            r["patient_id"],
            f"{r['study_day_start']:.0f}",
            f"{r['true_b']:.2f}",
            f"{r['graft_b']:.2f}",
            f"{r['graft_b_lower']:.2f}–{r['graft_b_upper']:.2f}",
            "yes" if r["covered"] else "NO",
        )
    console.print(table)
    post = comp[comp.true_b > 0]
    if len(post):
        err = np.abs(np.log(post.graft_b / post.true_b))
        console.print(
            f"After the infusion: the band covers the true B at {post.covered.mean():.0%} "
            f"of {len(post)} visits; median error of B {np.median(err):.0%} (log scale)."
        )
    for pid, why in result.failures.items():
        console.print(f"[red]{pid}: not fitted: {why}[/red]")
    console.print(f"Report: {result.report}  ({result.seconds:.0f} s)")
    return 0 if len(comp) else 1


def _add_simulate(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a virtual transplant cohort (zimislecel-like) to CSV files",
        description=(
            "Simulate a zimislecel-like islet-transplant trial patient by patient "
            "(isletfit.cohort.zimislecel_like): baseline on basal-bolus insulin, "
            "infusion on day 0, CGM blocks at visits (days -14, 30, 90, 180, 270, "
            "365), labs and insulin titration. Writes DIR/cgm/<patient>.csv (generic "
            "CSV), DIR/patients.csv, DIR/labs.csv, DIR/truth.csv (true graft function "
            "per day and true parameters) and DIR/visits.csv."
        ),
    )
    p.add_argument("--patients", type=int, default=12, help="number of patients")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort")
    p.add_argument("--out", default="isletfit-cohort", help="output folder")
    p.add_argument(
        "--block-days",
        type=int,
        default=14,
        help="CGM days per visit (default 14)",
    )
    p.add_argument(
        "--start-date",
        default="2024-01-01",
        help="infusion date of the first patient, YYYY-MM-DD (one a week after)",
    )
    p.add_argument(
        "--chunk-size", type=int, default=128, help="patients simulated at once"
    )
    p.set_defaults(func=_run_simulate)


def _run_simulate(args) -> int:
    import datetime as dt
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from ._errors import InputError

    for name, value, low in (
        ("--patients", args.patients, 1),
        ("--block-days", args.block_days, 1),
        ("--chunk-size", args.chunk_size, 1),
    ):
        if value < low:
            raise InputError(
                f"{value} is too small", field=name, expected=f"an integer >= {low}"
            )
    try:
        dt.date.fromisoformat(args.start_date)
    except ValueError:
        raise InputError(
            f"cannot read {args.start_date!r}",
            field="--start-date",
            expected="a date as YYYY-MM-DD",
        ) from None
    _enable_float64()
    import jax

    from .cohort import VisitPlan, simulate_cohort, write_cohort, zimislecel_like

    console = Console(soft_wrap=True)
    console.print(
        f"Simulating {args.patients} virtual transplant recipients (seed {args.seed}) ..."
    )
    cohort = simulate_cohort(
        zimislecel_like(),
        args.patients,
        key=jax.random.key(args.seed),
        visits=VisitPlan(block_days=args.block_days),
        chunk_size=args.chunk_size,
        progress=lambda done, total: console.print(f"  {done}/{total} patients"),
    )
    paths = write_cohort(cohort, Path(args.out), start_date=args.start_date)
    vt = cohort.visit_table()
    vt = vt[~vt["failed"]]
    table = Table(title="Virtual cohort, mean per visit")
    columns = [
        ("b", "true B", "{:.2f}"),
        ("tir_70_180_percent", "TIR %", "{:.1f}"),
        ("tbr_below_70_percent", "TBR<70 %", "{:.1f}"),
        ("hba1c_percent", "HbA1c %", "{:.2f}"),
        ("c_peptide_stimulated_nmol_l", "stim. C-pep nmol/L", "{:.2f}"),
        ("insulin_u_per_day", "insulin U/day", "{:.1f}"),
        ("insulin_independent", "insulin-free %", "{:.0%}"),
    ]
    table.add_column("day", justify="right")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for day, group in vt.groupby("visit_day"):
        table.add_row(
            f"{day:.0f}",
            *(fmt.format(float(group[key].mean())) for key, _, fmt in columns),
        )
    console.print(table)
    if cohort.failed.any():
        console.print(
            f"[yellow]{int(cohort.failed.sum())} patient(s) failed to simulate; "
            "see truth.csv (quantity 'failed')[/yellow]"
        )
    console.print(
        f"Wrote {cohort.n} patient files to {paths['cgm']}, and {paths['patients']}, "
        f"{paths['labs']}, {paths['truth']}, {paths['visits']} "
        f"({cohort.seconds:.1f} s)"
    )
    return 0


def _add_metrics(sub) -> None:
    p = sub.add_parser(
        "metrics",
        help="CGM consensus metrics table (TIR, GMI, CV, GRI, MAGE, ...)",
        description=(
            "Compute the consensus CGM metrics (Battelino 2019 and others; see "
            "isletfit.metrics) of each patient, over the whole record, per day, or per "
            "visit block, print them as a table and optionally write all columns to "
            "CSV."
        ),
    )
    p.add_argument("data", nargs="+", metavar="DATA", help="CGM files or folders")
    p.add_argument(
        "--format",
        default="auto",
        help="input format: auto (default), generic, dexcom_clarity, libreview, "
        "nightscout or tidepool",
    )
    p.add_argument(
        "--by",
        choices=["all", "day", "visit"],
        default=None,
        help="one row per patient (all, the default), per day, or per visit block "
        "(the default when --visits is given)",
    )
    p.add_argument(
        "--visits",
        default=None,
        metavar="DAYS",
        help="visit day numbers counted from the first CGM day (day 0), "
        "comma-separated, e.g. 0,30,90",
    )
    p.add_argument(
        "--block-days",
        type=float,
        default=14.0,
        help="length of a visit block in days (default 14)",
    )
    p.add_argument(
        "--visit-anchor",
        choices=["start", "end"],
        default="start",
        help="a visit block starts on the visit day (start, default) or ends with it",
    )
    p.add_argument(
        "--step-min",
        type=float,
        default=None,
        help="CGM sampling interval in minutes (default: inferred per patient)",
    )
    p.add_argument("--tz", default=None, help="IANA time zone for naive timestamps")
    p.add_argument("--out", default=None, help="write the full table to this CSV file")
    p.set_defaults(func=_run_metrics)


def _run_metrics(args) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from ._errors import InputError
    from ._io import atomic_path
    from .data import read_many
    from .metrics import metrics_table

    visits = None
    if args.visits is not None:
        try:
            visits = [float(v) for v in args.visits.split(",") if v.strip()]
        except ValueError:
            raise InputError(
                f"cannot read {args.visits!r}",
                field="--visits",
                expected="comma-separated day numbers, e.g. 0,30,90",
            ) from None
        if not visits:
            raise InputError(
                "no visit day given",
                field="--visits",
                expected="comma-separated day numbers, e.g. 0,30,90",
            )
    by = args.by or ("visit" if visits is not None else "all")
    if visits is not None and by != "visit":
        raise InputError(
            f"--visits goes with --by visit, not --by {by}",
            field="--by",
            expected="visit",
        )
    patients = read_many(args.data, format=args.format, tz=args.tz)
    table = metrics_table(
        patients,
        by=by,
        visits=visits,
        block_days=args.block_days,
        anchor=args.visit_anchor,
        step_min=args.step_min,
    )

    shown = [
        ("patient_id", "patient", None),
        ("group", "group", None),
        ("n_readings", "n", "{:.0f}"),
        ("percent_data", "data %", "{:.0f}"),
        ("mean_mg_dl", "mean mg/dL", "{:.0f}"),
        ("cv_percent", "CV %", "{:.1f}"),
        ("gmi_percent", "GMI %", "{:.2f}"),
        ("tir_70_180_percent", "TIR 70-180 %", "{:.1f}"),
        ("tbr_below_70_percent", "<70 %", "{:.1f}"),
        ("tbr_below_54_percent", "<54 %", "{:.1f}"),
        ("tar_above_180_percent", ">180 %", "{:.1f}"),
        ("tar_above_250_percent", ">250 %", "{:.1f}"),
        ("gri", "GRI", "{:.1f}"),
        ("mage_mg_dl", "MAGE mg/dL", "{:.0f}"),
    ]
    console = Console(width=None if sys.stdout.isatty() else 160)
    view = Table(title=f"CGM metrics ({by})", header_style="bold")
    for _, header, fmt in shown:
        view.add_column(header, justify="left" if fmt is None else "right")
    for _, row in table.iterrows():
        cells = []
        for col, _, fmt in shown:
            v = row[col]
            if fmt is None:
                cells.append(str(v))
            else:
                cells.append("-" if v != v else fmt.format(v))  # nan -> "-"
        view.add_row(*cells)
    console.print(view)
    console.print(
        "Percent of readings; TIR counts 70 <= G <= 180 mg/dL, <70 and <54 count G "
        "below, >180 and >250 count G above; censored Low/High readings count at "
        "their limit."
    )

    if args.out is not None:
        out = Path(args.out)
        with atomic_path(out) as tmp:  # temp file in the same folder + os.replace
            table.to_csv(tmp, index=False)
        console.print(f"wrote {len(table)} rows x {table.shape[1]} columns to {out}")
    return 0


def _add_fit(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="fit each patient's CGM record: graft function over time with its band",
        description=(
            "Fit the model to each patient's CGM record (MAP over all days, "
            "Levenberg-Marquardt, Laplace band) and write, per patient, "
            "graft_function.csv, parameters.csv, visits.csv, fit_summary.json and "
            "fit.png, and for the run summary.csv and report.html. One patient's "
            "failure is reported and the others go on."
        ),
    )
    p.add_argument(
        "data", nargs="+", metavar="DATA", help="CGM export files or folders"
    )
    p.add_argument(
        "--patients", default=None, help="patients.csv (weight, transplant date)"
    )
    p.add_argument("--labs", default=None, help="labs.csv (HbA1c, C-peptide, ...)")
    p.add_argument("--format", default="auto", help="input format (default: detect)")
    p.add_argument("--tz", default=None, help="IANA time zone for naive timestamps")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--latent-meals",
        action="store_true",
        help="estimate unannounced meals (for records without complete meal logs)",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="integrate the day-windows with the adaptive solver instead of the fixed "
        "grid (several times slower; for B above ~10, where the grid's steps are "
        "unstable, or to check the grid)",
    )
    p.add_argument("--starts", type=int, default=2, help="starting points per patient")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting points")
    p.add_argument(
        "--population",
        action="store_true",
        help=(
            "fit all patients together (hierarchical: population typical values and "
            "between-patient SDs, each patient's estimates shrunk towards them); "
            "writes population_report.html, population_parameters.csv (with standard "
            "errors and shrinkage), population_graft.csv, population_estimates.csv "
            "and vpc.csv (visual predictive check) besides the per-patient outputs, "
            "and a checkpoint to resume an interrupted run"
        ),
    )
    p.add_argument(
        "--max-rounds", type=int, default=60, help="EM rounds of --population"
    )
    p.add_argument(
        "--em",
        choices=_EM_CHOICES,
        default="plain",
        help=(
            "how --population moves the typical values and SDs between rounds: plain "
            "EM, squarem (SQUAREM extrapolation) or linearised (the EM to its fixed "
            "point on each round's quadratic models of the patients; see the docs)"
        ),
    )
    p.add_argument(
        "--lanes",
        type=int,
        default=None,
        help=(
            "patients solved at once per device call by --population (default: 4 "
            "per CPU device, 64 per GPU); a finished patient's lane takes the next"
        ),
    )
    p.add_argument(
        "--covariate",
        action="append",
        default=[],
        metavar="COLUMN[:FIELD,...]",
        help=(
            "with --population: a numeric column of the --patients sheet (e.g. "
            "weight_kg) on the typical values, as (value / median)^beta; after ':' "
            "the estimated fields it acts on (default all); repeat for several; "
            "writes population_covariates.csv"
        ),
    )
    p.add_argument(
        "--e-step-iterations",
        type=int,
        default=None,
        help=(
            "with --population: most optimiser iterations of a patient per EM round "
            "(incomplete E-steps: an unfinished solve goes on in the next round; "
            "default 3; 0: every round solves each patient to convergence)"
        ),
    )
    p.add_argument(
        "--vpc-draws",
        type=int,
        default=30,
        help=(
            "simulated replicates of the population for the visual predictive check "
            "of --population (default 30: about 3 ms per simulated day on a CPU "
            "core; 0: no check)"
        ),
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help=(
            "with --population: one process of a multi-host run (multi-controller "
            "JAX), patients sharded over the devices of all processes; process 0 "
            "writes the outputs. The processes are found from Slurm (srun) or Open "
            "MPI (mpirun), else from ISLETFIT_COORDINATOR=host:port, "
            "ISLETFIT_NUM_PROCESSES and ISLETFIT_PROCESS_ID (see docs/cluster.md)"
        ),
    )
    p.set_defaults(func=_run_fit)


#: ``fit --em`` choices (`_em_strategy`).
_EM_CHOICES = ("linearised", "plain", "squarem")


def _covariates(specs: list[str]) -> tuple:
    """``fit --covariate COLUMN[:FIELD,...]`` as `Covariate` s."""
    from ._errors import InputError
    from .fitting import Covariate

    out = []
    for spec in specs:
        column, sep, fields = spec.partition(":")
        names = tuple(f.strip() for f in fields.split(",") if f.strip())
        if not column.strip() or (sep and not names):
            raise InputError(
                f"bad covariate {spec!r}",
                field="--covariate",
                expected="COLUMN or COLUMN:FIELD,FIELD (e.g. weight_kg:vmx,kp1)",
            )
        out.append(Covariate(column.strip(), names or None))
    return tuple(out)


def _em_strategy(name: str):
    """The `fit_population` EM strategy named by ``fit --em``."""
    from .fitting import LinearisedEM, PlainEM, SquaremEM

    return {"plain": PlainEM, "squarem": SquaremEM, "linearised": LinearisedEM}[name]()


def _progress(console):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=console,
    )


def _fit_run(patients, out, *, console, **kwargs):
    """Fit patients with a progress bar; print warnings and failures."""
    from .report import fit_and_report

    with _progress(console) as progress:
        task = progress.add_task("fitting", total=len(patients))

        def on_patient(pid, index, total):
            progress.update(task, completed=index, description=f"fitting {pid}")

        run = fit_and_report(patients, out, on_patient=on_patient, **kwargs)
        progress.update(task, completed=len(patients), description="fitted")
    for pid, notes in run.notes.items():
        for note in notes:
            console.print(f"[yellow]{pid}: {note}[/yellow]")
    for pid, why in run.failures.items():
        console.print(f"[red]{pid}: not fitted: {why}[/red]")
    console.print(
        f"{len(run.results)} of {len(patients)} patients fitted. Report: {run.report}"
    )
    return run


def _run_fit(args) -> int:
    from pathlib import Path

    from rich.console import Console

    _enable_float64()
    # one patient's windows, or a population's patients, are split over the cores;
    # a --distributed process keeps one CPU device (docs/cluster.md)
    if not (args.population and args.distributed):
        _cores_as_devices()
    main_process = True
    for flag, value, least in (
        ("--lanes", args.lanes, 1),
        ("--e-step-iterations", args.e_step_iterations, 0),
    ):
        if value is not None and value < least:
            from ._errors import InputError

            raise InputError(
                f"{value} is too small", field=flag, expected=f"an integer >= {least}"
            )
    if not args.population:
        for flag, given in (
            ("--covariate", args.covariate),
            ("--e-step-iterations", args.e_step_iterations is not None),
        ):
            if given:
                from ._errors import InputError

                raise InputError(
                    f"{flag} needs --population",
                    field=flag,
                    expected=f"isletfit fit DATA --population {flag} ...",
                )
    if args.distributed:
        from ._errors import InputError
        from .fitting._distributed import initialize_distributed

        if not args.population:
            raise InputError(
                "--distributed needs --population",
                field="--distributed",
                expected="isletfit fit DATA --population --distributed ...",
            )
        # before any other JAX work: every process reads all inputs, process 0 writes
        main_process = initialize_distributed().process_id == 0
        if not main_process:  # the same warnings as process 0's: shown once
            import warnings

            warnings.simplefilter("ignore")
    import jax

    from .data import read_labs, read_many, read_patients
    from .fitting import FitModel, LatentMeals, LoggedMeals

    console = Console(soft_wrap=True, quiet=not main_process)
    sheet = read_patients(args.patients) if args.patients else None
    labs = read_labs(args.labs, patients=sheet) if args.labs else None
    patients = read_many(args.data, format=args.format, tz=args.tz)
    model = FitModel(
        meals=LatentMeals() if args.latent_meals else LoggedMeals(),
        **({"grid": None} if args.adaptive else {}),  # else the library's default grid
    )
    if args.population:
        results = _fit_population_run(
            patients,
            Path(args.out),
            console=console,
            key=jax.random.key(args.seed),
            sheet=sheet,
            labs=labs,
            model=model,
            starts=args.starts,
            max_rounds=args.max_rounds,
            distributed=args.distributed,
            vpc_draws=args.vpc_draws,
            em=_em_strategy(args.em),
            lanes=args.lanes,
            e_step_iterations=args.e_step_iterations,
            covariates=_covariates(args.covariate),
        )
        return 0 if results else 1
    run = _fit_run(
        patients,
        Path(args.out),
        console=console,
        key=jax.random.key(args.seed),
        sheet=sheet,
        labs=labs,
        model=model,
        starts=args.starts,
        mesh=_window_mesh(),
    )
    return 0 if run.results else 1


def _fit_population_run(
    patients,
    out,
    *,
    console,
    key,
    sheet,
    labs,
    model,
    starts,
    max_rounds,
    distributed=False,
    vpc_draws=30,
    em=None,
    lanes=None,
    e_step_iterations=None,
    covariates=(),
):
    """``isletfit fit --population``: one hierarchical fit, then each patient's outputs.

    Then the population's files and ``population_report.html``, with a visual
    predictive check of ``vpc_draws`` replicates (none when 0, or when the meals are
    latent: the check replays the recorded meals).

    The state after each EM round goes to ``population_checkpoint.npz`` in the output
    folder; a rerun of the same command on the same data continues from it. With
    ``distributed`` (multi-controller JAX already initialised) the patients are
    sharded over the devices of every process, and only process 0 writes; otherwise
    over this process's devices (a CPU's cores, `_cores_as_devices`). ``em``
    (default `PlainEM`), ``lanes`` and ``covariates`` are `fit_population`'s ``em``,
    ``chunk_size`` and ``covariates``; ``e_step_iterations`` is its
    ``e_step_iterations`` (None: its default; 0: complete E-steps).
    """
    import warnings

    import jax

    from .data._sheets import sheet_entry
    from .fitting import PlainEM, fit_population, visit_summary
    from .fitting._distributed import is_main_process, patient_mesh
    from .report import build_population_report, build_report, write_population_outputs
    from .report._outputs import write_patient_outputs, write_run_summary

    mesh, main_process = None, True
    if distributed:
        mesh, main_process = patient_mesh(), is_main_process()
    elif jax.local_device_count() > 1:  # a CPU's cores as devices, or several GPUs
        mesh = patient_mesh()
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    by_id = {p.patient_id: p for p in patients}
    with _progress(console) as progress:
        task = progress.add_task("population fit: screening", total=max_rounds)

        def on_round(info):
            progress.update(
                task,
                completed=info.round,
                description=(
                    f"population fit: round {info.round}, change {info.change:.2g}"
                ),
            )

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = fit_population(
                patients,
                model=model,
                sheet=sheet,
                starts=starts,
                key=key,
                max_rounds=max_rounds,
                checkpoint=out / "population_checkpoint.npz",
                resume=True,
                mesh=mesh,
                on_round=on_round,
                chunk_size=lanes,
                em=PlainEM() if em is None else em,
                covariates=covariates,
                **(
                    {}
                    if e_step_iterations is None
                    else {"e_step_iterations": e_step_iterations or None}
                ),
            )
        progress.update(task, completed=max_rounds, description="population fitted")
    if distributed:
        # the processes are done together; process 0 writes on alone (a process
        # left waiting at exit for a long write would hit JAX's shutdown timeout)
        jax.distributed.shutdown()
        if not main_process:
            return res.results
    for w in caught:
        console.print(f"[yellow]{w.message}[/yellow]")
    failures = dict(res.failures)
    tables = []
    for pid, result in res.results.items():
        row, _, _ = sheet_entry(sheet, pid)
        try:
            table = visit_summary(result, by_id[pid], patient_row=row, labs=labs)
            write_patient_outputs(result, table, out)
            tables.append(table)
        except IsletfitError as err:
            failures[pid] = str(err)
    vpc = _population_vpc(res, patients, console=console, key=key, draws=vpc_draws)
    write_population_outputs(res, out, vpc=vpc)
    write_run_summary(tables, failures, out)
    report = build_report(out)
    population_report = build_population_report(out)
    for pid, why in failures.items():
        console.print(f"[red]{pid}: not fitted: {why}[/red]")
    state = "converged" if res.converged else "stopped before converging"
    console.print(
        f"population fit {state} after {res.rounds} rounds; "
        f"{len(tables)} of {len(patients)} patients fitted. "
        f"Population report: {population_report}. Report: {report}"
    )
    return res.results


def _population_vpc(res, patients, *, console, key, draws):
    """The visual predictive check of a population fit, or None (with a note)."""
    import warnings

    import jax

    from .fitting import visual_predictive_check

    if draws <= 0 or not res.results:
        return None
    console.print(f"visual predictive check: {draws} simulated replicates ...")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vpc = visual_predictive_check(
                res, patients, n_draws=draws, key=jax.random.fold_in(key, 1)
            )
    except IsletfitError as err:
        console.print(f"[yellow]no visual predictive check: {err}[/yellow]")
        return None
    for w in caught:
        console.print(f"[yellow]{w.message}[/yellow]")
    flagged = vpc[~vpc["inside"]]
    if len(flagged):
        console.print(
            f"[yellow]visual predictive check: {len(flagged)} of {len(vpc)} observed "
            "percentiles outside their prediction intervals (see "
            "population_report.html)[/yellow]"
        )
    return vpc


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild report.html (and population_report.html) of a fit output folder",
    )
    p.add_argument("dir", metavar="DIR", help="a folder written by 'isletfit fit'")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from pathlib import Path

    from .report import build_population_report, build_report

    print(f"Report: {build_report(args.dir)}")
    if (Path(args.dir) / "population_parameters.csv").exists():  # a population run
        print(f"Population report: {build_population_report(args.dir)}")
    return 0


# --- sub-commands -------------------------------------------------------------------------
# Each entry registers one sub-command; keep them in the order they appear in --help.
_SUBCOMMANDS: list = [_add_demo, _add_simulate, _add_fit, _add_metrics, _add_report]


def main(argv: list[str] | None = None) -> int:
    """Run the ``isletfit`` command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except IsletfitError as err:
        print(f"isletfit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
