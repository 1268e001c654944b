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


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="simulate a virtual transplant recipient on built-in data",
        description=(
            "Simulate an adult with type 1 diabetes before an islet infusion and at "
            "visits after it (graft engraftment and maturation, insulin titrated by the "
            "clinic), print a table per visit and save a figure."
        ),
    )
    p.add_argument("--out", default="isletfit-demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="one CGM day per visit")
    p.add_argument("--seed", type=int, default=0, help="seed of daily-life variation")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from ._demo import plot_demo, run_demo
    from ._io import atomic_write_text

    _enable_float64()
    console = Console()
    console.print(
        "Simulating one virtual recipient before and after an islet infusion ..."
    )
    result = run_demo(quick=args.quick, seed=args.seed)
    table = Table(title="Virtual transplant recipient, per visit")
    columns = [
        ("visit_day", "day", "{:.0f}"),
        ("graft_b", "B", "{:.2f}"),
        ("mean_glucose_mg_dl", "mean mg/dL", "{:.0f}"),
        ("tir_70_180_percent", "TIR %", "{:.0f}"),
        ("tbr_below_70_percent", "TBR<70 %", "{:.1f}"),
        ("gmi_percent", "GMI %", "{:.1f}"),
        ("insulin_u_per_day", "insulin U/day", "{:.1f}"),
    ]
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for row in result.table:
        table.add_row(*(fmt.format(row[key]) for key, _, fmt in columns))
    console.print(table)
    out = Path(args.out)
    figure = plot_demo(result, out / "demo.png")
    keys = list(result.table[0])
    lines = [",".join(keys)] + [
        ",".join(f"{row[k]:.6g}" for k in keys) for row in result.table
    ]
    atomic_write_text(out / "demo_summary.csv", "\n".join(lines) + "\n")
    console.print(
        f"Figure: {figure}  Table: {out / 'demo_summary.csv'}  ({result.seconds:.1f} s)"
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


# --- sub-commands -------------------------------------------------------------------------
# Each entry registers one sub-command; keep them in the order they appear in --help.
_SUBCOMMANDS: list = [_add_demo, _add_metrics]


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
